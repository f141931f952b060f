"""The stand-ins through which a network pickle rebuilds torch and numpy values.

The allow-list of ``formats.network_pickle`` maps the globals torch and numpy
pickle their values with (``torch._utils._rebuild_tensor_v2``,
``torch.storage._load_from_bytes``, ``numpy.core.multiarray._reconstruct``, ...)
to the functions here.  Each checks what the file gives it (storage bytes go
through ``torch.load(weights_only=True)``, numeric dtypes only, shapes and views
bounded by the data) and builds a plain CPU tensor, numpy array or scalar.
A numpy array or dtype arrives in two steps, REDUCE then BUILD: in between it
is a ``BuildStub`` that the unpickler swaps for the finished value.
"""

from __future__ import annotations

import math
import pickle
import re
import warnings
from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch

from targetclip_core.errors import CheckpointError, UnsafePickleError
from targetclip_core.formats.limits import short_repr
from targetclip_core.formats.torch_files import storage_bytes_checked
from targetclip_core.formats.unpickler import (
    NOTHING_RAN,
    StandIn,
    empty_table,
    int_tuple,
    is_int,
    view_geometry,
    view_last_index,
)

__all__ = [
    "BuildStub",
    "load_storage",
    "rebuild_tensor",
    "torch_device",
    "TORCH_DTYPES",
    "np_dtype",
    "np_reconstruct",
    "np_frombuffer",
    "np_scalar",
    "NDARRAY",
]


class BuildStub(ABC):
    """A value that is only complete after BUILD; the unpickler swaps in the result."""

    @abstractmethod
    def _pickle_build(self, state: Any) -> Any:
        """Turn the BUILD state into the finished value."""


# ---- torch


def load_storage(data: Any) -> torch.storage.TypedStorage:
    """A storage pickled by torch: the bytes of a torch.save (legacy or zip).

    The bytes are checked like a torch file on disk (``torch_files.storage_bytes_checked``: the
    element count they declare against the bytes they hold) before torch allocates anything.
    """
    if not isinstance(data, (bytes, bytearray)):
        raise CheckpointError("tensor storage is not given as bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TypedStorage deprecation chatter
            storage = torch.load(storage_bytes_checked(bytes(data)), weights_only=True, map_location="cpu")
    except CheckpointError as exc:  # UnsafePickleError included
        raise type(exc)(f"tensor storage inside the pickle: {exc}") from None
    except pickle.UnpicklingError as exc:
        refused = [line.strip() for line in str(exc).splitlines() if "GLOBAL" in line.upper()]
        if refused:
            raise UnsafePickleError(
                "a tensor storage inside the pickle was refused by torch's weights-only loader "
                f"({refused[0][:200]}); {NOTHING_RAN}") from None
        raise CheckpointError(f"unreadable tensor storage: {str(exc)[:200]}") from None
    except Exception as exc:  # anything else torch raises on untrusted bytes means a broken storage
        raise CheckpointError(f"unreadable tensor storage: {type(exc).__name__}: {str(exc)[:200]}") from None
    if not isinstance(storage, torch.storage.TypedStorage):
        raise CheckpointError(f"tensor storage bytes hold a {type(storage).__name__}, not a storage")
    return storage


def rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                   backward_hooks: Any = None, metadata: Any = None) -> torch.Tensor:
    """torch._utils._rebuild_tensor_v2: a view of a storage; always a plain CPU tensor."""
    if not isinstance(storage, torch.storage.TypedStorage):
        raise CheckpointError(f"tensor built on a {type(storage).__name__}, not a storage")
    size_t, stride_t = view_geometry(offset, size, stride)
    if not empty_table(backward_hooks) or not empty_table(metadata):
        # Hooks would be callables and metadata sets conj/neg bits: real network files have neither.
        raise CheckpointError("tensor carries backward hooks or metadata")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        numel, dtype, untyped = storage.size(), storage.dtype, storage._untyped_storage
    last = view_last_index(offset, size_t, stride_t)
    if last is not None and last >= numel:
        raise CheckpointError("tensor extends past the end of its storage")
    return torch.empty((0,), dtype=dtype).set_(untyped, offset, size_t, stride_t)


def torch_device(kind: Any, index: Any = None) -> torch.device:
    """torch.device(kind[, index]) for a well-formed device name; nothing touches the device."""
    if not isinstance(kind, str) or not re.fullmatch(r"[a-z]+(:\d+)?", kind):
        raise CheckpointError(f"bad torch.device {short_repr(kind)}")
    if index is not None and not is_int(index):
        raise CheckpointError(f"bad torch.device index {short_repr(index)}")
    return torch.device(kind) if index is None else torch.device(kind, index)


# torch.dtype objects pickle as globals named after themselves, e.g. torch.float32.
TORCH_DTYPES = {str(dtype).removeprefix("torch."): dtype for dtype in (
    torch.float16, torch.float32, torch.float64, torch.bfloat16, torch.complex64, torch.complex128,
    torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.bool)}


# ---- numpy

# Numeric dtypes only: object arrays would carry pickled objects, structured ones fields.
_NUMPY_DTYPE_SPEC = r"[?bBhHiIlLqQefdgFDG]|[biufc]\d{1,2}"


def np_dtype(spec: Any, align: Any = False, copy: Any = True) -> "_DTypeStub":
    """numpy.dtype(spec) for a numeric spec: a stub that BUILD completes with the byte order."""
    if not isinstance(spec, str) or not re.fullmatch(_NUMPY_DTYPE_SPEC, spec):
        raise CheckpointError(f"unsupported numpy dtype {short_repr(spec)} (numeric dtypes only)")
    return _DTypeStub(np.dtype(spec))


class _DTypeStub(BuildStub):
    """numpy.dtype(spec): the byte order arrives in the BUILD state."""

    def __init__(self, dtype: np.dtype) -> None:
        self.dtype = dtype

    def _pickle_build(self, state: Any) -> np.dtype:
        # state: (version, byteorder, subarray, names, fields, elsize, alignment, flags)
        if not isinstance(state, tuple) or len(state) < 5 or any(x is not None for x in state[2:5]):
            raise CheckpointError("unsupported numpy dtype state (subarray or fields)")
        order = state[1]
        if order not in ("<", ">", "|", "="):
            raise CheckpointError(f"bad numpy byte order {short_repr(order)}")
        return self.dtype.newbyteorder(order) if order in "<>" else self.dtype


def _require_dtype(dtype: Any) -> np.dtype:
    if not isinstance(dtype, np.dtype) or dtype.kind not in "biufc":
        raise CheckpointError(f"numpy data with dtype {short_repr(dtype)}")
    return dtype


def _array_from_bytes(raw: Any, dtype: Any, shape: Any, fortran: bool) -> np.ndarray:
    dtype = _require_dtype(dtype)
    shape_t = int_tuple(shape, "numpy shape")
    if not isinstance(raw, (bytes, bytearray)) or len(raw) != math.prod(shape_t) * dtype.itemsize:
        raise CheckpointError("numpy array data does not match its shape and dtype")
    flat = np.frombuffer(bytes(raw), dtype=dtype)
    return flat.reshape(shape_t, order="F" if fortran else "C").copy()  # writable, owns its memory


class _ArrayStub(BuildStub):
    """numpy.core.multiarray._reconstruct(ndarray, ...): the data arrives in the BUILD state."""

    def _pickle_build(self, state: Any) -> np.ndarray:
        if isinstance(state, tuple) and len(state) == 5:
            state = state[1:]  # drop the version field
        if not isinstance(state, tuple) or len(state) != 4:
            raise CheckpointError("unsupported numpy array state")
        shape, dtype, fortran, raw = state
        return _array_from_bytes(raw, dtype, shape, bool(fortran))


def np_reconstruct(cls: Any, shape: Any = (0,), typecode: Any = b"b") -> _ArrayStub:
    """numpy's multiarray._reconstruct, for ndarray only: a stub that BUILD fills with the data."""
    if cls is not NDARRAY:
        raise UnsafePickleError(f"numpy _reconstruct asked to build {short_repr(cls)}; {NOTHING_RAN}")
    return _ArrayStub()


def np_frombuffer(buf: Any, dtype: Any, shape: Any, order: Any = "C") -> np.ndarray:
    """numpy's numeric._frombuffer: a numeric array copied from a buffer that matches its shape."""
    # Protocol 5 pickles arrays as numpy.core.numeric._frombuffer(buffer, dtype, shape, order).
    if order not in ("C", "F"):
        raise CheckpointError(f"bad numpy order {short_repr(order)}")
    return _array_from_bytes(buf, dtype, shape, order == "F")


def np_scalar(dtype: Any, raw: Any = None) -> Any:
    """numpy's multiarray.scalar: one numeric value from exactly its dtype's bytes."""
    dtype = _require_dtype(dtype)
    if not isinstance(raw, (bytes, bytearray)) or len(raw) != dtype.itemsize:
        raise CheckpointError("numpy scalar data does not match its dtype")
    return np.frombuffer(bytes(raw), dtype=dtype, count=1)[0]


NDARRAY = StandIn("numpy.ndarray")  # only ever an argument of _reconstruct

