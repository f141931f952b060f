"""What a network pickle yields: its networks as plain-data records.

``load_network_pickle`` (``formats.network_pickle``) turns every NVlabs
persistent object into a ``PersistentRecord`` and every allow-listed plain
module into a ``ModuleRecord``; a pickled ``dnnlib.EasyDict`` becomes a
``PickledEasyDict``.  Records hold the object's ``__dict__`` as it was pickled,
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

import torch

from targetclip_core.errors import CheckpointError
from targetclip_core.formats.limits import MAX_NESTING

__all__ = [
    "PersistentRecord",
    "ModuleRecord",
    "PickledEasyDict",
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
