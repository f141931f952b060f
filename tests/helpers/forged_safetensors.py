"""Hand-forged safetensors files for the hostile-input tests: any header (an object, raw bytes, a length that lies)
in front of any data bytes, which safetensors' own writer would refuse to produce."""

from __future__ import annotations

import json
import struct
from pathlib import Path


def forged_safetensors(path: Path, header, data: bytes = b"", declared_length: int | None = None) -> Path:
    """Write `header` (a dict dumped as JSON, or raw bytes) after its u64 length (or `declared_length`), then `data`."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode("utf-8")
    length = len(raw) if declared_length is None else declared_length
    Path(path).write_bytes(struct.pack("<Q", length) + raw + data)
    return Path(path)


def float32_entry(shape: list[int], begin: int = 0) -> dict:
    """A header entry of a float32 tensor of `shape` whose bytes start at `begin` of the data section."""
    n = 4
    for s in shape:
        n *= s
    return {"dtype": "F32", "shape": shape, "data_offsets": [begin, begin + n]}
