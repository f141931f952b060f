"""Read NVlabs network pickles as plain data, without running anything from them.

Threat model
------------
A network pickle (StyleGAN2-ADA ``ffhq.pkl``, EG3D ``ffhq512-128.pkl``, ...)
is a file the user downloaded, possibly from a mirror or a stranger.  A plain
``pickle.load`` of it is arbitrary code execution twice over: any global the
file names is imported and called, and NVlabs' own
``torch_utils.persistence._reconstruct_persistent_obj`` runs the Python source
text stored in the file.  This module reads such files without importing,
calling or running anything the file chooses:

* ``find_class`` answers from a fixed allow-list (``_ALLOWED``) and never
  imports: every entry is either a value (a ``torch.dtype``) or a stand-in
  written here.  Any other global raises ``UnsafePickleError`` naming it.
* REDUCE, NEWOBJ and BUILD are re-implemented so they only ever reach those
  stand-ins (or records/stubs defined here); INST and OBJ are refused, and
  APPEND/SETITEM/ADDITEMS only touch plain lists, dicts and sets.  The
  pure-Python unpickler is used because the C one cannot be restricted per
  opcode (its BUILD would call any object's ``__setstate__``); those opcodes
  live in ``restricted_unpickler``, shared with ``torchscript_archive``.
* A persistent NVlabs object becomes a ``PersistentRecord``: its class name,
  version, ``state`` (the object's ``__dict__``) and ``module_src`` as text,
  which is kept for diagnostics only and never run.  Allow-listed plain
  ``torch.nn`` classes and EG3D's non-persistent helper modules become
  ``ModuleRecord``\\ s, again data only.
* Tensor storages are pickled by torch as the bytes of a ``torch.save``; they
  are read with ``torch.load(weights_only=True)``, torch's own restricted
  loader, and must come back as a storage.
* Forged length fields cannot make the reader allocate more than the file
  holds (``_BoundedReader``).

Remaining trust: torch's weights-only loader for storage bytes (including any
globals the host process added with ``torch.serialization.add_safe_globals``),
and numpy/torch to build arrays from validated buffers.  Tensors come back as
plain CPU tensors (parameters too, ``requires_grad`` off).  The result is
data; what the caller builds from it is up to the caller.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import re
import warnings
from abc import ABC, abstractmethod
from collections import OrderedDict
from typing import Any, BinaryIO

import numpy as np
import torch

from targetclip_core.errors import CheckpointError, TargetCLIPError, UnsafePickleError
from targetclip_core.formats.unpickler import (
    _NOTHING_RAN,
    RestrictedUnpickler,
    _call_stand_ins,
    _int_tuple,
    _is_int,
    _rebuild_parameter,
    _StandIn,
    _unlisted_global,
    _view_geometry,
    _view_last_index,
)
from targetclip_core.formats.unpickler import _describe as _describe_any

__all__ = [
    "load_network_pickle",
    "PersistentRecord",
    "ModuleRecord",
    "PickledEasyDict",
]


# --------------------------------------------------------------------------
# Records: what networks become.


class _Record(ABC):
    """Common part of persistent and plain module records: a module's __dict__."""

    state: dict

    def state_dict(self, prefix: str = "") -> "OrderedDict[str, torch.Tensor]":
        """Tensors in ``torch.nn.Module.state_dict()`` order and naming.

        Own parameters, then persistent buffers, then each child with a
        ``name.`` prefix; None entries are skipped like torch does.
        """
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        _collect_tensors(self, prefix, out, set())
        return out

    @property
    def init_kwargs(self) -> dict:
        """Constructor keyword arguments as plain (recursively plain) dicts; {} if absent."""
        # NVlabs stores them as `_init_kwargs`; the public `init_kwargs` is a property there.
        raw = self.state.get("_init_kwargs", self.state.get("init_kwargs"))
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            raise CheckpointError(f"{self._label()}: init_kwargs is a {type(raw).__name__}, not a dict")
        return _plain(raw)

    @property
    def init_args(self) -> tuple:
        """Constructor positional arguments (plain data); () if absent."""
        raw = self.state.get("_init_args", self.state.get("init_args"))
        if raw is None:
            return ()
        if not isinstance(raw, (tuple, list)):
            raise CheckpointError(f"{self._label()}: init_args is a {type(raw).__name__}, not a tuple")
        return tuple(_plain(list(raw)))

    @abstractmethod
    def _label(self) -> str:
        """How error messages name this record."""


class PersistentRecord(_Record):
    """One NVlabs persistent object (``@persistence.persistent_class``) as plain data."""

    def __init__(self, class_name: str, version: int, module_src: str, state: dict,
                 module_name: str | None = None) -> None:
        self.module_name = module_name  # the meta has no such field in NVlabs pickles: usually None
        self.class_name = class_name
        self.version = version
        self.module_src = module_src  # text for diagnostics only: never run
        self.state = state

    def _label(self) -> str:
        return f"persistent {self.class_name}"

    def __repr__(self) -> str:
        return f"PersistentRecord(class_name={self.class_name!r}, version={self.version!r})"


class ModuleRecord(_Record):
    """An allow-listed non-persistent module (e.g. ``torch.nn.Sequential``) as plain data."""

    def __init__(self, class_path: str) -> None:
        self.class_path = class_path
        self.module_name, _, self.class_name = class_path.rpartition(".")
        self.state: dict = {}
        self._built = False

    def _pickle_build(self, state: Any) -> "ModuleRecord":
        if self._built:
            raise CheckpointError(f"{self.class_path}: state given twice")
        if isinstance(state, tuple) and len(state) == 2 and state[1] is None:
            state = state[0]  # (dict_state, no slot state) form
        if not isinstance(state, dict):
            raise CheckpointError(f"{self.class_path}: state is a {type(state).__name__}, not a dict")
        self.state = state
        self._built = True
        return self

    def _label(self) -> str:
        return self.class_path

    def __repr__(self) -> str:
        return f"ModuleRecord({self.class_path!r})"


class PickledEasyDict(dict):
    """What a pickled ``dnnlib.EasyDict`` becomes: a dict with read-only attribute access."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def _pickle_build(self, state: Any) -> "PickledEasyDict":
        # EasyDict keeps everything as items; an instance __dict__ never exists in real files.
        if isinstance(state, tuple) and len(state) == 2 and state[1] is None:
            state = state[0]
        if state is not None and not (type(state) is dict and not state):
            raise CheckpointError("dnnlib.EasyDict with unexpected instance state")
        return self


def _collect_tensors(record: _Record, prefix: str, out: dict, path: set[int]) -> None:
    if id(record) in path:
        raise CheckpointError(f"{record._label()}: module graph has a cycle at {prefix or '<root>'}")
    path.add(id(record))
    state = record.state
    params = _mapping_field(record, "_parameters")
    buffers = _mapping_field(record, "_buffers")
    modules = _mapping_field(record, "_modules")
    non_persistent = state.get("_non_persistent_buffers_set") or set()
    if not isinstance(non_persistent, (set, frozenset, list, tuple)):
        raise CheckpointError(f"{record._label()}: _non_persistent_buffers_set is not a set")
    for name, value in params.items():
        if value is not None:
            out[prefix + _require_name(name)] = _require_tensor(value, prefix + name)
    for name, value in buffers.items():
        if value is not None and name not in non_persistent:
            out[prefix + _require_name(name)] = _require_tensor(value, prefix + name)
    for name, child in modules.items():
        if child is None:
            continue
        _require_name(name)
        if not isinstance(child, _Record):
            raise CheckpointError(f"{prefix + name}: child module is a {type(child).__name__}, not a record")
        _collect_tensors(child, f"{prefix}{name}.", out, path)
    path.discard(id(record))


def _mapping_field(record: _Record, key: str) -> dict:
    value = record.state.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CheckpointError(f"{record._label()}: {key} is a {type(value).__name__}, not a dict")
    return value


def _require_name(name: Any) -> str:
    if not isinstance(name, str):
        raise CheckpointError(f"module entry named by a {type(name).__name__}, not a string")
    return name


def _require_tensor(value: Any, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise CheckpointError(f"{name}: expected a tensor, found {type(value).__name__}")
    return value


def _plain(value: Any) -> Any:
    """Dict subclasses (EasyDict, OrderedDict) to dict, recursively through lists/tuples."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return value


# --------------------------------------------------------------------------
# Stand-ins: the only things a pickle can reach.


class _Stub(ABC):
    """A value that is only complete after BUILD; the unpickler swaps in the result."""

    @abstractmethod
    def _pickle_build(self, state: Any) -> Any:
        """Turn the BUILD state into the finished value."""


# ---- NVlabs persistence and dnnlib


def _persistent_obj(meta: Any) -> PersistentRecord:
    if not isinstance(meta, dict):
        raise CheckpointError(f"persistent object metadata is a {type(meta).__name__}, not a dict")
    kind = meta.get("type")
    if kind != "class":
        raise UnsafePickleError(
            "torch_utils.persistence._reconstruct_persistent_obj was asked to rebuild an object "
            f"of type {kind!r}; only type 'class' records are read, and {_NOTHING_RAN}")
    class_name, version, src = meta.get("class_name"), meta.get("version"), meta.get("module_src")
    state = meta.get("state")
    if not isinstance(class_name, str) or not class_name.isidentifier():
        raise CheckpointError(f"persistent object has a bad class_name {class_name!r}")
    if not _is_int(version):
        raise CheckpointError(f"persistent {class_name}: bad version {version!r}")
    if not isinstance(src, str):
        raise CheckpointError(f"persistent {class_name}: module_src is not text")
    if state is None:
        state = {}
    if not isinstance(state, dict):
        raise CheckpointError(f"persistent {class_name}: state is a {type(state).__name__}, not a dict")
    module_name = meta.get("module_name")
    return PersistentRecord(class_name, version, src, state,
                            module_name if isinstance(module_name, str) else None)


# ---- builtins and collections


def _ordered_dict(items: Any = ()) -> OrderedDict:
    # OrderedDict pickles as OrderedDict() followed by SETITEMS; accept pairs too.
    if not isinstance(items, (list, tuple)):
        raise CheckpointError("OrderedDict needs a list of pairs")
    return OrderedDict(_pairs(items))


def _pairs(items: list | tuple) -> list[tuple[Any, Any]]:
    if not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in items):
        raise CheckpointError("expected key/value pairs")
    return [(k, v) for k, v in items]


def _set(items: Any = ()) -> set:
    # Protocols 2 and 3 have no set opcode: set() is pickled as a call on a list.
    if not isinstance(items, (list, tuple)):
        raise CheckpointError("set needs a list")
    return set(items)


def _frozenset(items: Any = ()) -> frozenset:
    return frozenset(_set(items))


def _codecs_encode(text: Any, encoding: str = "utf-8") -> bytes:
    # Protocol 2 spells bytes as _codecs.encode(str, 'latin1') (numpy arrays and scalars).
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise CheckpointError("_codecs.encode is only accepted as latin1 text-to-bytes")
    return text.encode("latin1")


# ---- torch


def _load_storage(data: Any) -> torch.storage.TypedStorage:
    """A storage pickled by torch: the bytes of a torch.save (legacy or zip)."""
    if not isinstance(data, (bytes, bytearray)):
        raise CheckpointError("tensor storage is not given as bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TypedStorage deprecation chatter
            storage = torch.load(io.BytesIO(bytes(data)), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        refused = [line.strip() for line in str(exc).splitlines() if "GLOBAL" in line.upper()]
        if refused:
            raise UnsafePickleError(
                "a tensor storage inside the pickle was refused by torch's weights-only loader "
                f"({refused[0]}); {_NOTHING_RAN}") from None
        raise CheckpointError(f"unreadable tensor storage: {exc}") from None
    if not isinstance(storage, torch.storage.TypedStorage):
        raise CheckpointError(f"tensor storage bytes hold a {type(storage).__name__}, not a storage")
    return storage


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                    backward_hooks: Any = None, metadata: Any = None) -> torch.Tensor:
    """torch._utils._rebuild_tensor_v2: a view of a storage; always a plain CPU tensor."""
    if not isinstance(storage, torch.storage.TypedStorage):
        raise CheckpointError(f"tensor built on a {type(storage).__name__}, not a storage")
    size_t, stride_t = _view_geometry(offset, size, stride)
    if backward_hooks or metadata:
        # Hooks would be callables and metadata sets conj/neg bits: real network files have neither.
        raise CheckpointError("tensor carries backward hooks or metadata")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        numel, dtype, untyped = storage.size(), storage.dtype, storage._untyped_storage
    last = _view_last_index(offset, size_t, stride_t)
    if last is not None and last >= numel:
        raise CheckpointError("tensor extends past the end of its storage")
    return torch.empty((0,), dtype=dtype).set_(untyped, offset, size_t, stride_t)


def _device(kind: Any, index: Any = None) -> torch.device:
    if not isinstance(kind, str) or not re.fullmatch(r"[a-z]+(:\d+)?", kind):
        raise CheckpointError(f"bad torch.device {kind!r}")
    if index is not None and not _is_int(index):
        raise CheckpointError(f"bad torch.device index {index!r}")
    return torch.device(kind) if index is None else torch.device(kind, index)


# torch.dtype objects pickle as globals named after themselves, e.g. torch.float32.
_TORCH_DTYPES = {str(dtype).removeprefix("torch."): dtype for dtype in (
    torch.float16, torch.float32, torch.float64, torch.bfloat16, torch.complex64, torch.complex128,
    torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.bool)}


# ---- numpy

# Numeric dtypes only: object arrays would carry pickled objects, structured ones fields.
_NUMPY_DTYPE_SPEC = r"[?bBhHiIlLqQefdgFDG]|[biufc]\d{1,2}"


def _np_dtype(spec: Any, align: Any = False, copy: Any = True) -> "_DTypeStub":
    if not isinstance(spec, str) or not re.fullmatch(_NUMPY_DTYPE_SPEC, spec):
        raise CheckpointError(f"unsupported numpy dtype {spec!r} (numeric dtypes only)")
    return _DTypeStub(np.dtype(spec))


class _DTypeStub(_Stub):
    """numpy.dtype(spec): the byte order arrives in the BUILD state."""

    def __init__(self, dtype: np.dtype) -> None:
        self.dtype = dtype

    def _pickle_build(self, state: Any) -> np.dtype:
        # state: (version, byteorder, subarray, names, fields, elsize, alignment, flags)
        if not isinstance(state, tuple) or len(state) < 5 or any(x is not None for x in state[2:5]):
            raise CheckpointError("unsupported numpy dtype state (subarray or fields)")
        order = state[1]
        if order not in ("<", ">", "|", "="):
            raise CheckpointError(f"bad numpy byte order {order!r}")
        return self.dtype.newbyteorder(order) if order in "<>" else self.dtype


def _require_dtype(dtype: Any) -> np.dtype:
    if not isinstance(dtype, np.dtype) or dtype.kind not in "biufc":
        raise CheckpointError(f"numpy data with dtype {dtype!r}")
    return dtype


def _array_from_bytes(raw: Any, dtype: Any, shape: Any, fortran: bool) -> np.ndarray:
    dtype = _require_dtype(dtype)
    shape_t = _int_tuple(shape, "numpy shape")
    if not isinstance(raw, (bytes, bytearray)) or len(raw) != math.prod(shape_t) * dtype.itemsize:
        raise CheckpointError("numpy array data does not match its shape and dtype")
    flat = np.frombuffer(bytes(raw), dtype=dtype)
    return flat.reshape(shape_t, order="F" if fortran else "C").copy()  # writable, owns its memory


class _ArrayStub(_Stub):
    """numpy.core.multiarray._reconstruct(ndarray, ...): the data arrives in the BUILD state."""

    def _pickle_build(self, state: Any) -> np.ndarray:
        if isinstance(state, tuple) and len(state) == 5:
            state = state[1:]  # drop the version field
        if not isinstance(state, tuple) or len(state) != 4:
            raise CheckpointError("unsupported numpy array state")
        shape, dtype, fortran, raw = state
        return _array_from_bytes(raw, dtype, shape, bool(fortran))


def _np_reconstruct(cls: Any, shape: Any = (0,), typecode: Any = b"b") -> _ArrayStub:
    if cls is not _NDARRAY:
        raise UnsafePickleError(f"numpy _reconstruct asked to build {cls!r}; {_NOTHING_RAN}")
    return _ArrayStub()


def _np_frombuffer(buf: Any, dtype: Any, shape: Any, order: Any = "C") -> np.ndarray:
    # Protocol 5 pickles arrays as numpy.core.numeric._frombuffer(buffer, dtype, shape, order).
    if order not in ("C", "F"):
        raise CheckpointError(f"bad numpy order {order!r}")
    return _array_from_bytes(buf, dtype, shape, order == "F")


def _np_scalar(dtype: Any, raw: Any = None) -> Any:
    dtype = _require_dtype(dtype)
    if not isinstance(raw, (bytes, bytearray)) or len(raw) != dtype.itemsize:
        raise CheckpointError("numpy scalar data does not match its dtype")
    return np.frombuffer(bytes(raw), dtype=dtype, count=1)[0]


_NDARRAY = _StandIn("numpy.ndarray")  # only ever an argument of _reconstruct


# ---- the allow-list

# Helper modules EG3D keeps as plain (non-persistent) torch.nn.Module attributes of
# TriPlaneGenerator: pickled by class path, they hold no code we need, only state.
_EG3D_HELPERS = {
    "training.triplane": ("OSGDecoder",),
    "training.volumetric_rendering.renderer": ("ImportanceRenderer",),
    "training.volumetric_rendering.ray_marcher": ("MipRayMarcher2",),
    "training.volumetric_rendering.ray_sampler": ("RaySampler",),
}
_EG3D_HELPER_NAMES = {name for names in _EG3D_HELPERS.values() for name in names}
# persistence._src_to_module names modules it rebuilds like this; helper classes
# created through such a module are pickled under that name.
_REBUILT_MODULE = r"_imported_module_[0-9a-f]{32}"

_PLAIN_TORCH_MODULES = (
    "torch.nn.modules.container.Sequential",   # EG3D OSGDecoder.net
    "torch.nn.modules.container.ModuleList",   # generic containers: children only
    "torch.nn.modules.container.ModuleDict",
    "torch.nn.modules.activation.Softplus",    # EG3D OSGDecoder.net[1]
)


def _module_class(class_path: str) -> _StandIn:
    return _StandIn(class_path, new=lambda: ModuleRecord(class_path))


def _build_allow_list() -> dict[tuple[str, str], Any]:
    entries: dict[str, Any] = {
        # Every NVlabs network: the persistent-class record (meta dict with state).
        "torch_utils.persistence._reconstruct_persistent_obj": _persistent_obj,
        # nn.Module hook/parameter tables (older torch) and tensors' empty backward_hooks.
        "collections.OrderedDict": _ordered_dict,
        # nn.Module._non_persistent_buffers_set under protocols 2-3 (no set opcode there).
        "builtins.set": _set,
        "builtins.frozenset": _frozenset,
        # Protocol 2 spelling of bytes (numpy array and scalar data).
        "_codecs.encode": _codecs_encode,
        # Tensors, parameters and their storages as torch pickles them.
        "torch._utils._rebuild_tensor_v2": _rebuild_tensor,
        "torch._utils._rebuild_parameter": _rebuild_parameter,
        "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,  # torch >= 2 re-saves
        "torch.storage._load_from_bytes": _load_storage,
        # A device kept as a plain attribute; harmless value.
        "torch.device": _device,
        # numpy scalars (FullyConnectedLayer.weight_gain = lr / np.sqrt(n)) and arrays
        # (StyleGAN3 SynthesisLayer.in_size) and values in training_set_kwargs.
        "numpy.dtype": _np_dtype,
    }
    for core in ("numpy.core", "numpy._core"):  # numpy 1 and numpy 2 spellings
        entries[f"{core}.multiarray._reconstruct"] = _np_reconstruct
        entries[f"{core}.multiarray.scalar"] = _np_scalar
        entries[f"{core}.numeric._frombuffer"] = _np_frombuffer
    allowed: dict[tuple[str, str], Any] = dict(_call_stand_ins(entries))
    allowed[("numpy", "ndarray")] = _NDARRAY
    easydict = _StandIn("dnnlib.util.EasyDict", new=PickledEasyDict)
    allowed[("dnnlib.util", "EasyDict")] = allowed[("dnnlib", "EasyDict")] = easydict
    for class_path in _PLAIN_TORCH_MODULES:
        allowed[tuple(class_path.rsplit(".", 1))] = _module_class(class_path)  # type: ignore[index]
    for module, names in _EG3D_HELPERS.items():
        for name in names:
            allowed[(module, name)] = _module_class(f"{module}.{name}")
    for name, dtype in _TORCH_DTYPES.items():
        allowed[("torch", name)] = dtype  # values, not callables
    return allowed


_ALLOWED = _build_allow_list()
# Protocols 0-2 spell builtins by their Python 2 module name.
_PY2_MODULES = {"__builtin__": "builtins"}


def _describe(obj: Any) -> str:
    if isinstance(obj, torch.dtype):
        return str(obj)
    return _describe_any(obj)


# --------------------------------------------------------------------------
# The unpickler.


class _Memo(dict):
    """The pickle memo, remembering under which keys stubs were stored."""

    def __init__(self) -> None:
        super().__init__()
        self.stub_keys: dict[int, list[Any]] = {}

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        if isinstance(value, _Stub):
            self.stub_keys.setdefault(id(value), []).append(key)


class _RestrictedUnpickler(RestrictedUnpickler):
    """The shared restricted unpickler with NVlabs' allow-list, records and numpy stubs."""

    source_kind = "network pickles"
    buildable_types = (ModuleRecord, PickledEasyDict, _Stub)
    container_types = {
        list: (list,),
        dict: (dict, OrderedDict, PickledEasyDict),
        set: (set,),
    }
    describe = staticmethod(_describe)

    def __init__(self, file: "_BoundedReader") -> None:
        super().__init__(file, file.total, "the file")
        self.memo = _Memo()
        self._pending: dict[int, _Stub] = {}  # stubs made by REDUCE, not yet BUILT

    def find_class(self, module: str, name: str) -> Any:
        module = _PY2_MODULES.get(module, module)
        found = _ALLOWED.get((module, name))
        if found is None and re.fullmatch(_REBUILT_MODULE, module) and name in _EG3D_HELPER_NAMES:
            found = _module_class(f"{module}.{name}")
        if found is None:
            raise _unlisted_global(module, name)
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise CheckpointError("the pickle uses persistent ids, which network pickles never do")

    def check_complete(self) -> None:
        if self._pending:
            raise CheckpointError("a numpy value was left without its data")

    def _reduced(self, result: Any) -> None:
        if isinstance(result, _Stub):
            self._pending[id(result)] = result

    def _built(self, inst: Any, result: Any) -> None:
        # A stub's BUILD makes the real value: it replaces the stub on the stack and in the memo.
        if result is not inst:
            self.stack[-1] = result
            for key in self.memo.stub_keys.pop(id(inst), ()):
                if self.memo.get(key) is inst:
                    self.memo[key] = result
            self._pending.pop(id(inst), None)


class _BoundedReader:
    """File wrapper refusing reads longer than what is left, before allocating for them."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self._left: int | None
        try:
            here = file.tell()
            end = file.seek(0, os.SEEK_END)
            file.seek(here)
            self._left = end - here
        except (AttributeError, OSError, ValueError):
            self._left = None  # not seekable: rely on the stream's own end
        self.total = self._left  # the whole file's size (None: unknown), which bounds BYTEARRAY8

    def check_available(self, n: int) -> None:
        if self._left is not None and n > self._left:
            raise EOFError(f"pickle data was truncated: {n} bytes wanted, {self._left} left")

    def read(self, n: int = -1) -> bytes:
        if n is not None and n >= 0:
            self.check_available(n)
        data = self._file.read(n)
        if self._left is not None:
            self._left -= len(data)
        return data

    def readline(self) -> bytes:
        data = self._file.readline()
        if self._left is not None:
            self._left -= len(data)
        return data


# --------------------------------------------------------------------------
# Entry point.


def load_network_pickle(source: str | os.PathLike | BinaryIO) -> Any:
    """Read a network pickle (path or binary file) into plain data with records for networks.

    Raises UnsafePickleError for anything outside the allow-list (nothing is run)
    and CheckpointError for a file that is missing, truncated or not a pickle.
    """
    if isinstance(source, (str, os.PathLike)):
        name = os.fspath(source)
        try:
            file = open(name, "rb")
        except OSError as exc:
            raise CheckpointError(f"{name}: cannot open network pickle: {exc.strerror or exc}") from None
        with file:
            return _load(file, str(name))
    if not callable(getattr(source, "read", None)) or not callable(getattr(source, "readline", None)):
        raise TypeError(f"load_network_pickle needs a path or a binary file, not {type(source).__name__}")
    return _load(source, str(getattr(source, "name", "<binary stream>")))


def _load(file: BinaryIO, name: str) -> Any:
    unpickler = _RestrictedUnpickler(_BoundedReader(file))
    try:
        data = unpickler.load()
        unpickler.check_complete()
    except TargetCLIPError as exc:
        raise type(exc)(f"{name}: {exc}") from None
    except Exception as exc:  # anything else from untrusted bytes means a broken file
        raise CheckpointError(
            f"{name}: not a readable network pickle (truncated or corrupt): {type(exc).__name__}: {exc}"
        ) from exc
    return data
