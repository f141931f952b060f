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
  stand-ins (or the records of ``pickle_records`` and the stubs of
  ``pickle_arrays``); INST and OBJ are refused, and APPEND/SETITEM/ADDITEMS
  only touch plain lists, dicts and sets.  The pure-Python unpickler is used
  because the C one cannot be restricted per opcode (its BUILD would call any
  object's ``__setstate__``); those opcodes live in ``formats.unpickler``,
  shared with ``formats.torchscript``.
* A persistent NVlabs object becomes a ``PersistentRecord``: its class name,
  version, ``state`` (the object's ``__dict__``) and ``module_src`` as text,
  which is kept for diagnostics only and never run.  Allow-listed plain
  ``torch.nn`` classes and EG3D's non-persistent helper modules become
  ``ModuleRecord``\\ s, again data only.
* The original TensorFlow release (NVlabs/stylegan2 ``.pkl``: a tuple
  ``(G, D, Gs)`` of ``dnnlib.tflib.network.Network``) pickles each network as
  NEWOBJ of that class then BUILD with its state dict; NEWOBJ makes an empty
  ``TFNetworkRecord`` and BUILD fills it with the name, static_kwargs,
  components and variables (numpy arrays and scalars through numpy's
  ``multiarray._reconstruct`` / ``multiarray.scalar``, numpy 1 or 2 spelling).
  Its ``build_module_src``, which TensorFlow's loader would execute, is kept
  as text and never run.
* Tensor storages are pickled by torch as the bytes of a ``torch.save``; they
  are read with ``torch.load(weights_only=True)``, torch's own restricted
  loader, and must come back as a storage (``pickle_arrays``, with the
  checked tensor views and numpy values).
* Forged length fields cannot make the reader allocate more than the file
  holds (``BoundedReader``).

Remaining trust: torch's weights-only loader for storage bytes (including any
globals the host process added with ``torch.serialization.add_safe_globals``),
and numpy/torch to build arrays from validated buffers.  Tensors come back as
plain CPU tensors (parameters too, ``requires_grad`` off).  The result is
data; what the caller builds from it is up to the caller.

Here: the allow-list, the restricted unpickler subclass, the bounded reader
and ``load_network_pickle``.  The record types are re-exported from
``pickle_records`` so callers can take them from here too.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from typing import Any, BinaryIO

import torch

from targetclip_core.errors import CheckpointError, TargetCLIPError, UnsafePickleError
from targetclip_core.formats.limits import check_structure, plain_children, require_key, short_repr
from targetclip_core.formats.pickle_arrays import (
    NDARRAY,
    TORCH_DTYPES,
    BuildStub,
    load_storage,
    np_dtype,
    np_frombuffer,
    np_reconstruct,
    np_scalar,
    rebuild_tensor,
    torch_device,
)
from targetclip_core.formats.pickle_records import (
    ModuleRecord,
    PersistentRecord,
    PickledEasyDict,
    TFNetworkRecord,
)
from targetclip_core.formats.unpickler import (
    NOTHING_RAN,
    BoundedReader,
    RestrictedUnpickler,
    StandIn,
    call_stand_ins,
    describe_object,
    is_int,
    rebuild_parameter,
    unlisted_global,
)

__all__ = [
    "load_network_pickle",
    "PersistentRecord",
    "ModuleRecord",
    "PickledEasyDict",
    "TFNetworkRecord",
]


# --------------------------------------------------------------------------
# Stand-ins: the only things a pickle can reach (torch and numpy ones are in pickle_arrays).


# ---- NVlabs persistence and dnnlib


def _persistent_obj(meta: Any) -> PersistentRecord:
    if not isinstance(meta, dict):
        raise CheckpointError(f"persistent object metadata is a {type(meta).__name__}, not a dict")
    kind = meta.get("type")
    if not (isinstance(kind, str) and kind == "class"):
        raise UnsafePickleError(
            "torch_utils.persistence._reconstruct_persistent_obj was asked to rebuild an object "
            f"of type {short_repr(kind)}; only type 'class' records are read, and {NOTHING_RAN}")
    class_name, version, src = meta.get("class_name"), meta.get("version"), meta.get("module_src")
    state = meta.get("state")
    if not isinstance(class_name, str) or not class_name.isidentifier():
        raise CheckpointError(f"persistent object has a bad class_name {short_repr(class_name)}")
    if not is_int(version):
        raise CheckpointError(f"persistent {class_name}: bad version {short_repr(version)}")
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
    return [(require_key(k), v) for k, v in items]


def _set(items: Any = ()) -> set:
    # Protocols 2 and 3 have no set opcode: set() is pickled as a call on a list.
    if not isinstance(items, (list, tuple)):
        raise CheckpointError("set needs a list")
    return {require_key(v, "set member") for v in items}


def _frozenset(items: Any = ()) -> frozenset:
    return frozenset(_set(items))


def _codecs_encode(text: Any, encoding: str = "utf-8") -> bytes:
    # Protocol 2 spells bytes as _codecs.encode(str, 'latin1') (numpy arrays and scalars).
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise CheckpointError("_codecs.encode is only accepted as latin1 text-to-bytes")
    return text.encode("latin1")


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


def _module_class(class_path: str) -> StandIn:
    return StandIn(class_path, new=lambda: ModuleRecord(class_path))


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
        "torch._utils._rebuild_tensor_v2": rebuild_tensor,
        "torch._utils._rebuild_parameter": rebuild_parameter,
        "torch._utils._rebuild_parameter_with_state": rebuild_parameter,  # torch >= 2 re-saves
        "torch.storage._load_from_bytes": load_storage,
        # A device kept as a plain attribute; harmless value.
        "torch.device": torch_device,
        # numpy scalars (FullyConnectedLayer.weight_gain = lr / np.sqrt(n)) and arrays
        # (StyleGAN3 SynthesisLayer.in_size) and values in training_set_kwargs.
        "numpy.dtype": np_dtype,
    }
    for core in ("numpy.core", "numpy._core"):  # numpy 1 and numpy 2 spellings
        entries[f"{core}.multiarray._reconstruct"] = np_reconstruct
        entries[f"{core}.multiarray.scalar"] = np_scalar
        entries[f"{core}.numeric._frombuffer"] = np_frombuffer
    allowed: dict[tuple[str, str], Any] = dict(call_stand_ins(entries))
    allowed[("numpy", "ndarray")] = NDARRAY
    easydict = StandIn("dnnlib.util.EasyDict", new=PickledEasyDict)
    allowed[("dnnlib.util", "EasyDict")] = allowed[("dnnlib", "EasyDict")] = easydict
    # TensorFlow-era NVlabs networks: NEWOBJ makes an empty record, BUILD fills it (data only).
    allowed[("dnnlib.tflib.network", "Network")] = StandIn("dnnlib.tflib.network.Network", new=TFNetworkRecord)
    for class_path in _PLAIN_TORCH_MODULES:
        allowed[tuple(class_path.rsplit(".", 1))] = _module_class(class_path)  # type: ignore[index]
    for module, names in _EG3D_HELPERS.items():
        for name in names:
            allowed[(module, name)] = _module_class(f"{module}.{name}")
    for name, dtype in TORCH_DTYPES.items():
        allowed[("torch", name)] = dtype  # values, not callables
    return allowed


_ALLOWED = _build_allow_list()
# Protocols 0-2 spell builtins by their Python 2 module name.
_PY2_MODULES = {"__builtin__": "builtins"}


def _describe(obj: Any) -> str:
    if isinstance(obj, torch.dtype):
        return str(obj)
    return describe_object(obj)


# --------------------------------------------------------------------------
# The unpickler.


class _Memo(dict):
    """The pickle memo, remembering under which keys stubs were stored."""

    def __init__(self) -> None:
        super().__init__()
        self.stub_keys: dict[int, list[Any]] = {}

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        if isinstance(value, BuildStub):
            self.stub_keys.setdefault(id(value), []).append(key)


class _RestrictedUnpickler(RestrictedUnpickler):
    """The shared restricted unpickler with NVlabs' allow-list, records and numpy stubs."""

    source_kind = "network pickles"
    buildable_types = (ModuleRecord, PickledEasyDict, TFNetworkRecord, BuildStub)
    container_types = {
        list: (list,),
        dict: (dict, OrderedDict, PickledEasyDict),
        set: (set,),
    }
    describe = staticmethod(_describe)

    def __init__(self, file: "BoundedReader") -> None:
        super().__init__(file, file.total, "the file")
        self.memo = _Memo()
        self._pending: dict[int, BuildStub] = {}  # stubs made by REDUCE, not yet BUILT

    def find_class(self, module: str, name: str) -> Any:
        module = _PY2_MODULES.get(module, module)
        found = _ALLOWED.get((module, name))
        if found is None and re.fullmatch(_REBUILT_MODULE, module) and name in _EG3D_HELPER_NAMES:
            found = _module_class(f"{module}.{name}")
        if found is None:
            raise unlisted_global(module, name)
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise CheckpointError("the pickle uses persistent ids, which network pickles never do")

    def check_complete(self) -> None:
        if self._pending:
            raise CheckpointError("a numpy value was left without its data")

    def _reduced(self, result: Any) -> None:
        if isinstance(result, BuildStub):
            self._pending[id(result)] = result

    def _built(self, inst: Any, result: Any) -> None:
        # A stub's BUILD makes the real value: it replaces the stub on the stack and in the memo.
        if result is not inst:
            self.stack[-1] = result
            for key in self.memo.stub_keys.pop(id(inst), ()):
                if self.memo.get(key) is inst:
                    self.memo[key] = result
            self._pending.pop(id(inst), None)


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
    unpickler = _RestrictedUnpickler(BoundedReader(file))

    def named(obj: Any) -> None:
        if isinstance(obj, (PersistentRecord, ModuleRecord, TFNetworkRecord)):
            obj.source = name  # the records' own errors (state_dict, init_kwargs) name the file

    try:
        data = unpickler.load()
        unpickler.check_complete()
        check_structure(data, _children, named)  # bounded before any caller walks it
    except TargetCLIPError as exc:
        raise type(exc)(f"{name}: {exc}") from None
    except Exception as exc:  # anything else from untrusted bytes means a broken file
        raise CheckpointError(
            f"{name}: not a readable network pickle (truncated or corrupt): {type(exc).__name__}: {str(exc)[:200]}"
        ) from None
    return data


def _children(obj: Any) -> Any:
    if isinstance(obj, (PersistentRecord, ModuleRecord)):
        return (obj.state,)
    if isinstance(obj, TFNetworkRecord):
        return (obj.static_kwargs, obj.components, obj.variables)
    return plain_children(obj)
