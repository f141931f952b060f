"""Checkpoint files as data: what format a file is (from its first bytes), `torch.load` limited
to weights, and a state dict loaded into a model with every mismatch named by the file's own keys.

Nothing here can execute code from a file: torch files are read with `weights_only=True`.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path

import torch

from targetclip_core.errors import CheckpointError, UnsafePickleError

TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch's pre-zip format starts with this pickled number


def sniff_format(file: Path) -> str:
    """'safetensors', 'torch-zip', 'torch-legacy', 'pickle' or 'unknown', from the first bytes."""
    try:
        with open(file, "rb") as f:
            head = f.read(64)
    except OSError as e:
        raise CheckpointError(f"{file}: cannot read ({e.strerror or e})") from None
    if head[:4] == b"PK\x03\x04":
        return "torch-zip"
    if len(head) >= 9 and head[8:9] == b"{":
        header_len = struct.unpack("<Q", head[:8])[0]
        if 0 < header_len < os.path.getsize(file):
            return "safetensors"
    if head[:1] == b"\x80":  # pickle protocol >= 2
        # torch's legacy format starts with a pickled magic number (a LONG1 opcode)
        if head[2:3] == b"\x8a" and int.from_bytes(head[4 : 4 + head[3]], "little") == TORCH_LEGACY_MAGIC:
            return "torch-legacy"
        return "pickle"
    return "unknown"


def torch_load_safely(file: Path):
    """torch.load with weights_only=True (plus argparse.Namespace, which training scripts save)."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        m = re.search(r"(?:Unsupported global|GLOBAL)[: ]+(?:GLOBAL )?([\w.]+)", msg)
        if m or "weights_only" in msg:
            what = m.group(1) if m else "a non-tensor object"
            raise UnsafePickleError(
                f"{file}: the checkpoint asks to import {what}, which is not on the allow-list "
                "of a weights file; nothing from it was executed. If you trust this file, "
                "re-save its state dict with torch.save(model.state_dict())."
            ) from None
        raise CheckpointError(f"{file}: corrupt or truncated PyTorch checkpoint ({msg.splitlines()[0]})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"{file}: corrupt or truncated PyTorch checkpoint ({str(e).splitlines()[0]})") from None


class TranslatedState(OrderedDict):
    """A state dict in our names that remembers each entry's key in the checkpoint file."""

    def __init__(self):
        super().__init__()
        self.origin: dict[str, str] = {}


def load_state_checked(model: torch.nn.Module, state: dict, source) -> None:
    """Load `state` into `model`, naming every mismatch clearly (by the file's own key names)."""
    origin = getattr(state, "origin", {})

    def name(k):
        return f"{origin[k]} (our {k})" if k in origin and origin[k] != k else k

    expected = model.state_dict()
    missing = [name(k) for k in expected if k not in state]
    unexpected = [name(k) for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {few_keys(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {few_keys(unexpected)}")
        raise CheckpointError(f"{source}: checkpoint does not match the architecture ({'; '.join(parts)})")
    for k, ref in expected.items():
        t = state[k]
        if not torch.is_tensor(t):
            raise CheckpointError(f"{source}: {name(k)} is a {type(t).__name__}, expected a tensor")
        if tuple(t.shape) != tuple(ref.shape):
            raise CheckpointError(f"{source}: shape mismatch for {name(k)}: file has {list(t.shape)}, model expects {list(ref.shape)}")
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise CheckpointError(f"{source}: {name(k)} contains NaN or infinite values")
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)


def require_keys(sd, keys, file, what):
    """Raise a CheckpointError naming the missing `keys` unless `sd` has them all."""
    missing = [k for k in keys if k not in sd]
    if missing:
        present = few_keys(list(sd))
        raise CheckpointError(f"{file}: not a {what} checkpoint: missing {few_keys(missing)} (it has {present})")


def few_keys(keys, n=5) -> str:
    """The first `n` keys, comma-separated, and how many more: for error messages."""
    keys = list(keys)
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")
