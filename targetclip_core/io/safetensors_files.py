"""Our safetensors files (essences, latents, SAT3D matrices and statistics): written byte for byte the same by
identical runs, read with the header checked and the metadata typed.

Writing (save_safetensors): safetensors writes its JSON header's `__metadata__` in the order of a Rust
HashMap, which differs per process, so two identical runs gave different files.  After safetensors has
written the file, its header is rewritten in one fixed order (`__metadata__` first with its keys sorted,
then the tensors by name, each entry as dtype, shape, data_offsets), padded with spaces to a multiple of
8 bytes as the format asks; the data bytes are safetensors' own.  The file is written atomically
(io.files.atomic_path).

Reading (read_safetensors): the header's declared length is checked against the file's size and a bound
before it is read, the header must be a JSON object whose `__metadata__` maps strings to strings and
whose tensors lie inside the file with as many bytes as their shape and dtype need; only then are the
tensors read, and (by default) every float tensor must be finite.  The metadata's entries are then read
with meta_str / meta_int / meta_float / meta_json, which name the file and the key of a missing or
mistyped entry, and the tensors with require_tensor.  Every failure is the caller's error type (a
TargetCLIPError subclass such as LatentError), naming the file.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

import torch

from targetclip_core.errors import TargetCLIPError
from targetclip_core.io.files import atomic_path
from targetclip_core.io.text import decode_utf8, parse_json, type_name

METADATA_KEY = "__metadata__"
MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit
DTYPE_SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
               "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
_MISSING = object()


# --------------------------------------------------------------------------- writing


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """Write `tensors` (CPU, contiguous) with string `metadata` to `path` atomically, the same bytes in every process."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
        canonicalize_header(tmp)
    return Path(path)


def canonicalize_header(file: str | os.PathLike) -> None:
    """Rewrite the header of the safetensors file `file` in canonical_header's order; the data bytes stay as they are.

    Reordering keys of compact JSON keeps its length, so the header is overwritten in place (no copy of the data);
    should the length differ, the file is rewritten whole."""
    with open(file, "r+b") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        fixed = canonical_header(json.loads(f.read(length)))
        if len(fixed) == 8 + length:
            f.seek(0)
            f.write(fixed)
            return
        data = f.read()
        f.seek(0)
        f.write(fixed)
        f.write(data)
        f.truncate()


def canonical_header(header: dict) -> bytes:
    """The length prefix and JSON header of a safetensors file in a fixed key order, padded to 8 bytes."""
    ordered = {}
    if METADATA_KEY in header:
        ordered[METADATA_KEY] = dict(sorted(header[METADATA_KEY].items()))
    for name in sorted(k for k in header if k != METADATA_KEY):
        entry = header[name]
        ordered[name] = {"dtype": entry["dtype"], "shape": entry["shape"], "data_offsets": entry["data_offsets"]}
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


# --------------------------------------------------------------------------- reading


def read_safetensors_header(path: str | os.PathLike, what: str, error: type[TargetCLIPError] = TargetCLIPError
                            ) -> tuple[dict[str, dict], dict[str, str]]:
    """({tensor name: {dtype, shape, data_offsets}}, metadata) of a safetensors file, checked against its size.

    Nothing larger than the file is read or allocated: the declared header length is compared with the file
    size (and MAX_HEADER_BYTES) first, and every tensor must lie in the file with the bytes its shape needs."""
    p = Path(path)
    try:
        size = os.path.getsize(p)
        with open(p, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise error(f"{p}: unreadable {what} ({size} bytes, shorter than a safetensors header length)")
            (length,) = struct.unpack("<Q", prefix)
            if length > min(size - 8, MAX_HEADER_BYTES):
                raise error(f"{p}: unreadable {what} (its safetensors header claims {length:,} bytes but the file "
                            f"has {size:,}: truncated, or not a safetensors file)")
            raw = f.read(length)
    except OSError as e:
        raise error(f"{p}: cannot read the {what} ({e.strerror or e})") from None
    header = parse_json(decode_utf8(raw.rstrip(b" "), p, f"{what}'s safetensors header", error), p,
                        f"{what}'s safetensors header", error)
    if not isinstance(header, dict):
        raise error(f"{p}: unreadable {what} (its safetensors header is {type_name(header)}, not an object)")
    metadata = header.pop(METADATA_KEY, None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise error(f"{p}: unreadable {what} (its safetensors metadata must map names to strings)")
    data_size = size - 8 - length
    for name, entry in header.items():
        check_tensor_entry(p, name, entry, data_size, what, error)
    return header, metadata


def check_tensor_entry(path, name: str, entry, data_size: int, what: str, error: type[TargetCLIPError]) -> None:
    """Refuse a header entry that is not {dtype, shape, data_offsets} of a known dtype lying in the data section."""
    bad = f"{path}: unreadable {what}: tensor {name!r}"
    if not isinstance(entry, dict):
        raise error(f"{bad} is described by {type_name(entry)}, not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_SIZES:
        raise error(f"{bad} has an unknown dtype {dtype!r} (known: {', '.join(DTYPE_SIZES)})")
    if not isinstance(shape, list) or not all(_whole(n) for n in shape):
        raise error(f"{bad} has shape {shape!r}, not a list of sizes >= 0")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_whole(n) for n in offsets):
        raise error(f"{bad} has data_offsets {offsets!r}, not [begin, end]")
    begin, end = offsets
    if not begin <= end <= data_size:
        raise error(f"{bad} lies at bytes {begin}..{end} of a data section of {data_size} (truncated file?)")
    if end - begin != math.prod(shape) * DTYPE_SIZES[dtype]:
        raise error(f"{bad} of shape {shape} {dtype} needs {math.prod(shape) * DTYPE_SIZES[dtype]:,} bytes, "
                    f"the file gives it {end - begin:,}")


def _whole(n) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n >= 0


def read_safetensors(path: str | os.PathLike, what: str, error: type[TargetCLIPError] = TargetCLIPError,
                     finite: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors on the CPU, metadata) of a safetensors file (a `what`, as messages name it), its header checked first
    (read_safetensors_header); with `finite`, a float tensor holding NaN or an infinity is refused by name."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    _, metadata = read_safetensors_header(p, what, error)
    try:
        tensors = load_file(str(p), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise error(f"{p}: unreadable {what} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if finite:
        for name, t in tensors.items():
            check_finite(t, p, name, what, error)
    return tensors, metadata


def check_finite(t: torch.Tensor, path, name: str, what: str, error: type[TargetCLIPError] = TargetCLIPError) -> None:
    """Refuse a float tensor `name` of `path` holding NaN or an infinity (other dtypes pass)."""
    if t.is_floating_point() and not bool(torch.isfinite(t.float() if t.element_size() == 1 else t).all()):
        raise error(f"{path}: tensor {name!r} of the {what} contains NaN or infinite values: the file is damaged "
                    "(or was written from a diverged run)")


def require_tensor(tensors: dict, name: str, path, what: str, *, floating: bool | None = None,
                   dtype: torch.dtype | None = None, ndim: int | None = None, optional: bool = False,
                   error: type[TargetCLIPError] = TargetCLIPError) -> torch.Tensor | None:
    """tensors[name], checked: floating (True: a float tensor), an exact dtype, a number of dimensions; a missing one
    is None when `optional`, else refused naming the file and the tensors it has."""
    if name not in tensors:
        if optional:
            return None
        raise error(f"{path}: the {what} has no tensor {name!r} (it has: {', '.join(sorted(tensors)) or 'none'})")
    t = tensors[name]
    if floating and not t.is_floating_point():
        raise error(f"{path}: tensor {name!r} of the {what} is {t.dtype}, not a floating-point tensor")
    if dtype is not None and t.dtype != dtype:
        raise error(f"{path}: tensor {name!r} of the {what} is {t.dtype}, not {dtype}")
    if ndim is not None and t.dim() != ndim:
        raise error(f"{path}: tensor {name!r} of the {what} has shape {list(t.shape)}, not {ndim} dimensions")
    return t


# --------------------------------------------------------------------------- typed metadata


def meta_str(meta: dict, key: str, path, what: str, default=_MISSING, error: type[TargetCLIPError] = TargetCLIPError):
    """The string metadata[key]; `default` when absent (without one a missing key is refused, naming file and key)."""
    if key not in meta:
        if default is _MISSING:
            raise error(f"{path}: the {what} has no {key!r} metadata entry (incomplete or not written by TargetCLIP)")
        return default
    value = meta[key]
    if not isinstance(value, str):
        raise error(f"{path}: metadata entry {key!r} of the {what} is {type_name(value)}, not a string")
    return value


def meta_int(meta: dict, key: str, path, what: str, default=_MISSING, minimum: int | None = None,
             error: type[TargetCLIPError] = TargetCLIPError):
    """metadata[key] as a whole number written in decimal (>= `minimum` when given); `default` when absent."""
    text = meta_str(meta, key, path, what, _MISSING if default is _MISSING else None, error)
    if text is None:
        return default
    try:
        value = int(text.strip())
    except ValueError:
        raise error(f"{path}: metadata entry {key!r} of the {what} is {text[:40]!r}, not a whole number") from None
    if minimum is not None and value < minimum:
        raise error(f"{path}: metadata entry {key!r} of the {what} is {value}, less than {minimum}")
    return value


def meta_float(meta: dict, key: str, path, what: str, default=_MISSING, error: type[TargetCLIPError] = TargetCLIPError):
    """metadata[key] as a finite number; `default` when absent."""
    text = meta_str(meta, key, path, what, _MISSING if default is _MISSING else None, error)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise error(f"{path}: metadata entry {key!r} of the {what} is {text[:40]!r}, not a finite number")
    return value


def meta_json(meta: dict, key: str, expected_type, path, what: str, default=_MISSING,
              error: type[TargetCLIPError] = TargetCLIPError):
    """metadata[key] parsed as JSON and of `expected_type` (a type or tuple of types, e.g. dict or (dict, type(None)));
    `default` when absent.  true/false is not taken for a number."""
    text = meta_str(meta, key, path, what, _MISSING if default is _MISSING else None, error)
    if text is None:
        return default
    value = parse_json(text, path, f"{what}'s metadata entry {key!r}", error)
    types = expected_type if isinstance(expected_type, tuple) else (expected_type,)
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        wanted = " or ".join(type_name(t()) for t in types)  # t() is the type's empty value (None for NoneType)
        raise error(f"{path}: metadata entry {key!r} of the {what} is {type_name(value)}, not {wanted}")
    return value


def meta_number_lists(meta: dict, key: str, path, what: str, default=_MISSING,
                      error: type[TargetCLIPError] = TargetCLIPError):
    """metadata[key] as a JSON object of lists of numbers (a loss history: term -> per-step values); `default` when
    absent."""
    value = meta_json(meta, key, dict, path, what, default, error)
    for name, values in value.items():
        if not isinstance(values, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in values):
            raise error(f"{path}: metadata entry {key!r} of the {what} holds {type_name(values)} for {name!r}, "
                        "not a list of numbers")
    return value
