"""What a network pickle yields: its networks as plain-data records.

``load_network_pickle`` (``formats.network_pickle``) turns every NVlabs
persistent object into a ``PersistentRecord`` and every allow-listed plain
module into a ``ModuleRecord``; a pickled ``dnnlib.EasyDict`` becomes a
``PickledEasyDict``; a TensorFlow-era ``dnnlib.tflib.network.Network`` (the
original NVlabs/stylegan2 release) becomes a ``TFNetworkRecord``.  Records hold the object's ``__dict__`` as it was pickled,
never code, and ``state_dict()`` collects their tensors the way
``torch.nn.Module.state_dict()`` names and orders them.

``load_network_pickle`` has bounded the data (``limits.check_structure``:
depth, expanded size, no cycles) before anyone walks it, and sets each
record's ``source`` to the file, which the records' own errors then name.
The walks here still guard depth themselves and convert shared parts once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict
from typing import Any

import numpy as np
import torch

from targetclip_core.errors import CheckpointError
from targetclip_core.formats.limits import MAX_NESTING

__all__ = [
    "PersistentRecord",
    "ModuleRecord",
    "PickledEasyDict",
    "TFNetworkRecord",
]


class _Record(ABC):
    """Common part of persistent and plain module records: a module's __dict__."""

    state: dict
    source: str | None = None  # the file the record was read from, for messages

    def state_dict(self, prefix: str = "") -> "OrderedDict[str, torch.Tensor]":
        """Tensors in ``torch.nn.Module.state_dict()`` order and naming.

        Own parameters, then persistent buffers, then each child with a
        ``name.`` prefix; None entries are skipped like torch does.
        """
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        _collect_tensors(self, prefix, out, set())
        return out

    def _where(self) -> str:
        """The label, prefixed with the file when known."""
        return f"{self.source}: {self._label()}" if self.source else self._label()

    @property
    def init_kwargs(self) -> dict:
        """Constructor keyword arguments as plain (recursively plain) dicts; {} if absent."""
        # NVlabs stores them as `_init_kwargs`; the public `init_kwargs` is a property there.
        raw = self.state.get("_init_kwargs", self.state.get("init_kwargs"))
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            raise CheckpointError(f"{self._where()}: init_kwargs is a {type(raw).__name__}, not a dict")
        return _plain(raw, {}, 0, self)

    @property
    def init_args(self) -> tuple:
        """Constructor positional arguments (plain data); () if absent."""
        raw = self.state.get("_init_args", self.state.get("init_args"))
        if raw is None:
            return ()
        if not isinstance(raw, (tuple, list)):
            raise CheckpointError(f"{self._where()}: init_args is a {type(raw).__name__}, not a tuple")
        return tuple(_plain(list(raw), {}, 0, self))

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


# The keys dnnlib.tflib.network.Network.__getstate__ writes (version 4; 2 and 3 lack nothing we read).
_TF_STATE_KEYS = ("version", "name", "static_kwargs", "components", "build_module_src", "build_func_name",
                  "variables")
_TF_VERSIONS = (2, 3, 4)  # what Network.__setstate__ itself accepts


class TFNetworkRecord:
    """A TensorFlow-era ``dnnlib.tflib.network.Network`` (NVlabs/stylegan2 ``.pkl``) as plain data.

    ``variables`` maps each variable's local name to its value as a numpy array (shape-[] values,
    pickled as numpy scalars, become 0-d arrays) in the file's (creation) order; ``components``
    maps component keys (``mapping``, ``synthesis``) to nested records.  ``build_module_src`` is
    the network's Python source, kept as text for diagnostics only: it is never run.
    """

    source: str | None = None  # the file the record was read from, for messages

    def __init__(self) -> None:
        self.version: int | None = None
        self.name = ""
        self.static_kwargs: dict[str, Any] = {}
        self.components: dict[str, TFNetworkRecord] = {}
        self.build_module_src = ""
        self.build_func_name = ""
        self.variables: OrderedDict[str, np.ndarray] = OrderedDict()
        self._built = False

    def _pickle_build(self, state: Any) -> "TFNetworkRecord":
        if self._built:
            raise CheckpointError("dnnlib.tflib.network.Network: state given twice")
        if isinstance(state, tuple) and len(state) == 2 and state[1] is None:
            state = state[0]
        if type(state) is not dict:
            raise CheckpointError(f"dnnlib.tflib.network.Network: state is a {type(state).__name__}, not a dict")
        unknown = [k for k in state if k not in _TF_STATE_KEYS]
        missing = [k for k in _TF_STATE_KEYS if k not in state and k != "components"]
        if unknown or missing:
            raise CheckpointError(f"dnnlib.tflib.network.Network: unexpected state (missing {missing}, "
                                  f"unknown {[str(k)[:40] for k in unknown[:5]]})")
        version = state["version"]
        if type(version) is not int or version not in _TF_VERSIONS:
            raise CheckpointError(f"dnnlib.tflib.network.Network: unsupported version {str(version)[:20]!r}")
        self.version = version
        self.name = _tf_text(state["name"], "name")
        self.build_func_name = _tf_text(state["build_func_name"], "build_func_name")
        self.build_module_src = _tf_text(state["build_module_src"], "build_module_src")
        self.static_kwargs = _tf_static_kwargs(state["static_kwargs"], self.name)
        self.components = _tf_components(state.get("components") or {}, self.name)
        self.variables = _tf_variables(state["variables"], self.name)
        self._built = True
        return self

    def _where(self) -> str:
        label = f"TensorFlow network {self.name!r}"
        return f"{self.source}: {label}" if self.source else label

    def __repr__(self) -> str:
        return f"TFNetworkRecord(name={self.name!r}, build_func_name={self.build_func_name!r})"


def _tf_text(value: Any, what: str) -> str:
    if type(value) is not str:
        raise CheckpointError(f"dnnlib.tflib.network.Network: {what} is a {type(value).__name__}, not text")
    return value


def _tf_static_kwargs(value: Any, net: str) -> dict[str, Any]:
    if not isinstance(value, dict) or not all(type(k) is str for k in value):
        raise CheckpointError(f"TensorFlow network {net!r}: static_kwargs is not a dict with text keys")
    return dict(value)  # values are checked by whoever reads them


def _tf_components(value: Any, net: str) -> "dict[str, TFNetworkRecord]":
    if not isinstance(value, dict):
        raise CheckpointError(f"TensorFlow network {net!r}: components is a {type(value).__name__}, not a dict")
    for key, comp in value.items():
        if type(key) is not str or not isinstance(comp, TFNetworkRecord):
            raise CheckpointError(f"TensorFlow network {net!r}: component {str(key)[:40]!r} is not a network")
    return dict(value)


def _tf_variables(value: Any, net: str) -> "OrderedDict[str, np.ndarray]":
    if not isinstance(value, (list, tuple)):
        raise CheckpointError(f"TensorFlow network {net!r}: variables is a {type(value).__name__}, not a list")
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    for item in value:
        if not isinstance(item, (list, tuple)) or len(item) != 2 or type(item[0]) is not str:
            raise CheckpointError(f"TensorFlow network {net!r}: a variable is not a (name, value) pair")
        name, val = item
        if name in out:
            raise CheckpointError(f"TensorFlow network {net!r}: variable {name!r} appears twice")
        if isinstance(val, np.generic):
            val = np.asarray(val)  # a numpy scalar (what session.run gives for shape [])
        if not isinstance(val, np.ndarray) or val.dtype.kind not in "biuf":
            raise CheckpointError(
                f"TensorFlow network {net!r}: variable {name!r} is a {type(val).__name__}, not a numeric array")
        out[name] = val
    return out


def _collect_tensors(record: _Record, prefix: str, out: dict, path: set[int]) -> None:
    if id(record) in path:
        raise CheckpointError(f"{record._where()}: module graph has a cycle at {prefix or '<root>'}")
    if len(path) >= MAX_NESTING:
        raise CheckpointError(f"{record._where()}: modules nested more than {MAX_NESTING} deep at {prefix}")
    path.add(id(record))
    state = record.state
    params = _mapping_field(record, "_parameters")
    buffers = _mapping_field(record, "_buffers")
    modules = _mapping_field(record, "_modules")
    non_persistent = state.get("_non_persistent_buffers_set") or set()
    if not isinstance(non_persistent, (set, frozenset, list, tuple)) or not all(
            isinstance(n, str) for n in non_persistent):
        raise CheckpointError(f"{record._where()}: _non_persistent_buffers_set is not a set of names")
    non_persistent = set(non_persistent)
    for name, value in params.items():
        if value is not None:
            out[prefix + _require_name(record, name)] = _require_tensor(record, value, prefix + name)
    for name, value in buffers.items():
        if value is not None and _require_name(record, name) not in non_persistent:
            out[prefix + name] = _require_tensor(record, value, prefix + name)
    for name, child in modules.items():
        if child is None:
            continue
        _require_name(record, name)
        if not isinstance(child, _Record):
            raise CheckpointError(
                f"{record._where()}: child module {prefix + name} is a {type(child).__name__}, not a record")
        _collect_tensors(child, f"{prefix}{name}.", out, path)
    path.discard(id(record))


def _mapping_field(record: _Record, key: str) -> dict:
    value = record.state.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CheckpointError(f"{record._where()}: {key} is a {type(value).__name__}, not a dict")
    return value


def _require_name(record: _Record, name: Any) -> str:
    if not isinstance(name, str):
        raise CheckpointError(f"{record._where()}: module entry named by a {type(name).__name__}, not a string")
    return name


def _require_tensor(record: _Record, value: Any, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise CheckpointError(f"{record._where()}: {name}: expected a tensor, found {type(value).__name__}")
    return value


def _plain(value: Any, memo: dict[int, Any], depth: int, record: _Record) -> Any:
    """Dict subclasses (EasyDict, OrderedDict) to dict, recursively through lists/tuples.

    A part the data shares is converted once (``memo``, by id), so shared parts stay shared
    and the work is linear in the distinct parts.
    """
    if not isinstance(value, (dict, list, tuple)):
        return value
    if id(value) in memo:
        return memo[id(value)]
    if depth >= MAX_NESTING:
        raise CheckpointError(f"{record._where()}: init arguments nest more than {MAX_NESTING} deep")
    if isinstance(value, dict):
        out: Any = {k: _plain(v, memo, depth + 1, record) for k, v in value.items()}
    elif isinstance(value, list):
        out = [_plain(v, memo, depth + 1, record) for v in value]
    else:
        out = tuple(_plain(v, memo, depth + 1, record) for v in value)
    memo[id(value)] = out
    return out
