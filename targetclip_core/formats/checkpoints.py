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
from collections import OrderedDict
from pathlib import Path
from typing import Callable, TypeVar

import torch

from targetclip_core.errors import CheckpointError, TargetCLIPError, UnsafePickleError
from targetclip_core.formats.limits import short_repr
from targetclip_core.formats.torch_files import TORCH_LEGACY_MAGIC, check_loaded_checkpoint, check_torch_container

M = TypeVar("M", bound=torch.nn.Module)


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


# first bytes of files people pick by mistake instead of a checkpoint -> what they are
_NOT_CHECKPOINTS = (
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"BM", "a BMP image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"\x1f\x8b", "a gzip archive (unpack it first)"),
    (b"version https://git-lfs", "a Git LFS pointer, not the file it points to (git lfs pull, or download the file)"),
)


def non_checkpoint_kind(head: bytes) -> str | None:
    """What a file whose first bytes are `head` is when it is plainly no checkpoint (an image, an archive, an HTML
    page a failed download saved, a Git LFS pointer), or None."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "a WebP image"
    for magic, kind in _NOT_CHECKPOINTS:
        if head.startswith(magic):
            return kind
    text = head.lstrip()[:15].lower()
    if text.startswith((b"<!doctype html", b"<html")):
        return "an HTML page (a download that saved a web page instead of the file?)"
    return None


def torch_load_safely(file: Path):
    """torch.load with weights_only=True (plus argparse.Namespace, which training scripts save).

    The container is checked first (``formats.torch_files.check_torch_container``: declared sizes
    against the file, CRCs, a dry run of the pickle) and what torch returns after
    (``check_loaded_checkpoint``); every failure is a CheckpointError naming the file.
    """
    try:
        with open(file, "rb") as f:
            kind = non_checkpoint_kind(f.read(64))
            if kind:
                raise CheckpointError(f"not a checkpoint: this is {kind}")
            f.seek(0)
            check_torch_container(f, os.fstat(f.fileno()).st_size)
        with torch.serialization.safe_globals([argparse.Namespace]):
            loaded = torch.load(file, map_location="cpu", weights_only=True)
        check_loaded_checkpoint(loaded)
        return loaded
    except TargetCLIPError as e:
        raise type(e)(f"{file}: {e}") from None
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
        raise CheckpointError(f"{file}: corrupt or truncated PyTorch checkpoint ({first_line(e)})") from None
    except OSError as e:
        raise CheckpointError(f"{file}: cannot read ({e.strerror or first_line(e)})") from None
    except Exception as e:  # anything else torch raises on untrusted bytes means a broken file
        raise CheckpointError(f"{file}: corrupt or truncated PyTorch checkpoint ({first_line(e)})") from None


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first non-empty line of an exception's message (its type name when it has none), for messages."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:limit]


class TranslatedState(OrderedDict):
    """A state dict in our names that remembers each entry's key in the checkpoint file.

    `file_key(our_key)`, when given, names in the file's terms what `origin` cannot: keys the
    network expects and the file lacks.
    """

    def __init__(self, file_key: Callable[[str], str] | None = None):
        super().__init__()
        self.origin: dict[str, str] = {}
        self.file_key = file_key

    def file_name_of(self, key: str) -> str:
        if key in self.origin:
            return self.origin[key]
        return self.file_key(key) if self.file_key is not None else key


def load_state_checked(model: torch.nn.Module, state: dict, source) -> None:
    """Load `state` into `model`, naming every mismatch clearly (by the file's own key names)."""
    check_state_matches(model.state_dict(), state, source)
    _load_checked_state(model, state)


def build_checked(make: Callable[[], M], state: dict, source) -> M:
    """`make()` with `state` loaded, the network's declared sizes checked against the file first.

    The network is built once on the meta device, which allocates nothing, and its parameter
    shapes are compared with the file's tensors; only a network the file really holds is then
    built for real.  So a small file whose config or inferred shapes declare a huge network
    is refused before any memory is spent on it.
    """
    with torch.device("meta"):
        skeleton = make()
    check_state_matches(skeleton.state_dict(), state, source)
    model = make()
    _load_checked_state(model, state)
    return model


def _load_checked_state(model: torch.nn.Module, state: dict) -> None:
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=True)


def check_state_matches(expected: dict, state: dict, source) -> None:
    """Raise a CheckpointError naming the file's keys unless `state` has exactly `expected`'s keys,
    shapes and kinds of values (tensors, floating point where the model's are, all finite).

    `expected` may come from a model on the meta device: then nothing is allocated for the
    network before its declared sizes are known to match the file.
    """
    def name(k):
        theirs = state.file_name_of(k) if isinstance(state, TranslatedState) else k
        return f"{theirs} (our {k})" if theirs != k else k

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
        if ref.is_floating_point() and not t.is_floating_point():
            raise CheckpointError(f"{source}: {name(k)} holds {t.dtype} values, the model expects floating point")
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise CheckpointError(f"{source}: {name(k)} contains NaN or infinite values")


def _a(what: str) -> str:
    """`what` with its indefinite article: 'an ArcFace IR-SE', 'an e4e/pSp encoder', 'a rosinality StyleGAN2'."""
    return f"{'an' if what[:1].lower() in 'aeio8' else 'a'} {what}"


def require_keys(sd, keys, file, what):
    """Raise a CheckpointError naming the missing `keys` unless `sd` is a dict that has them all,
    each holding a tensor (callers read their shapes next)."""
    if not isinstance(sd, dict):
        raise CheckpointError(f"{file}: not {_a(what)} checkpoint: expected a state dict, found {type(sd).__name__}")
    missing = [k for k in keys if k not in sd]
    if missing:
        present = few_keys(list(sd))
        raise CheckpointError(f"{file}: not {_a(what)} checkpoint: missing {few_keys(missing)} (it has {present})")
    not_tensors = [k for k in keys if not torch.is_tensor(sd[k])]
    if not_tensors:
        k = not_tensors[0]
        raise CheckpointError(f"{file}: not {_a(what)} checkpoint: {k} is a {type(sd[k]).__name__}, expected a tensor")


def few_keys(keys, n=5) -> str:
    """The first `n` keys, comma-separated, and how many more: for error messages (any key type)."""
    keys = list(keys)
    shown = [k if isinstance(k, str) else short_repr(k) for k in keys[:n]]
    return ", ".join(shown) + (f" and {len(keys) - n} more" if len(keys) > n else "")
