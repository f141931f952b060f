"""The restricted pure-Python unpickler shared by ``network_pickle`` and ``torchscript``.

Both read untrusted pickles as data: NVlabs network pickles and the
``data.pkl`` of TorchScript archives.  ``RestrictedUnpickler`` re-implements
every opcode that builds or fills objects so that none of them can reach
anything the file chooses:

* REDUCE only calls a ``StandIn`` with a ``call``; NEWOBJ/NEWOBJ_EX only a
  ``StandIn`` with a ``new``, and never with arguments.  What ``find_class``
  returns (and so which stand-ins exist) is each format's own allow-list.
* BUILD only fills instances of the format's ``buildable_types``, through
  their own ``_pickle_build(state)``; no ``__setstate__`` or ``__dict__``
  update of any other object runs.
* INST and OBJ are refused outright.
* APPEND(S), SETITEM(S) and ADDITEMS only touch the exact container types in
  ``container_types``, so no foreign ``append``/``__setitem__``/``add`` runs.
* BYTEARRAY8 cannot allocate more than the whole input holds.
* Dict keys and set members must be safe to hash (``limits.require_key``):
  DICT, SETITEM(S), ADDITEMS and FROZENSET check them before hashing.
* Every tensor a REDUCE makes is charged to the file's ``ViewBudget``
  (``limits``), so stride-0 views cannot claim more than a bounded number of
  repeated elements.

The pure-Python ``pickle._Unpickler`` is used because the C one cannot be
restricted per opcode.  Its dispatch table holds the handlers below as plain
functions, so subclasses change behaviour through the hooks and class
attributes here (``_reduced``, ``_built``, ``describe``, ...), not by
overriding the ``_load_*`` handlers.

Also here, as public names both formats build on: the ``StandIn`` a global
becomes, the refusal messages, and the helpers their stand-ins use to rebuild
tensors (offset/size/stride checks, the parameter wrapper).  Nothing in this
module imports, evaluates or compiles anything.
"""

from __future__ import annotations

import math
import os
import pickle
import struct
from collections import OrderedDict
from typing import Any, BinaryIO, Callable, ClassVar

import torch

from targetclip_core.errors import CheckpointError, UnsafePickleError
from targetclip_core.formats.limits import ViewBudget, require_key, short_repr

__all__ = [
    "RestrictedUnpickler",
    "StandIn",
    "call_stand_ins",
    "describe_object",
    "unlisted_global",
    "NOTHING_RAN",
    "is_int",
    "int_tuple",
    "view_geometry",
    "view_last_index",
    "rebuild_parameter",
    "empty_table",
    "BoundedReader",
]

NOTHING_RAN = "nothing from the file was imported or executed"
"""How refusal messages end: the reassurance that the refused file ran nothing."""


# --------------------------------------------------------------------------
# Stand-ins and messages.


class StandIn:
    """A global as the pickle sees it: ``call`` serves REDUCE, ``new`` serves NEWOBJ."""

    def __init__(self, qualname: str, call: Callable[..., Any] | None = None,
                 new: Callable[[], Any] | None = None) -> None:
        self.qualname = qualname
        self.call = call
        self.new = new

    def __repr__(self) -> str:
        return f"<stand-in for {self.qualname}>"


def call_stand_ins(calls: dict[str, Callable[..., Any]]) -> dict[tuple[str, str], StandIn]:
    """Allow-list entries for functions REDUCE may call, keyed ``(module, name)`` like ``find_class``."""
    allowed: dict[tuple[str, str], StandIn] = {}
    for qualname, fn in calls.items():
        module, _, name = qualname.rpartition(".")
        allowed[(module, name)] = StandIn(qualname, call=fn)
    return allowed


def describe_object(obj: Any) -> str:
    """How refusal messages name an object; formats extend it (``RestrictedUnpickler.describe``)."""
    if isinstance(obj, StandIn):
        return obj.qualname
    return f"a {type(obj).__module__}.{type(obj).__qualname__} object"


def _refused(action: str) -> UnsafePickleError:
    """The error for an opcode that tried to do ``action`` with something off the allow-list."""
    return UnsafePickleError(f"the pickle tries to {action}; it was refused and {NOTHING_RAN}")


def unlisted_global(module: str, name: str) -> UnsafePickleError:
    """The error ``find_class`` raises for a global that is not on the allow-list."""
    return UnsafePickleError(
        f"the pickle asks for the global '{module}.{name}', which is not on the allow-list; "
        f"it was refused and {NOTHING_RAN}")


# --------------------------------------------------------------------------
# Tensor rebuild helpers (torch._utils._rebuild_tensor_v2 / _rebuild_parameter).


def is_int(value: Any) -> bool:
    """Whether ``value`` is a true int (bools, which pickles also hold, are not)."""
    return isinstance(value, int) and not isinstance(value, bool)


MAX_TENSOR_INDEX = 1 << 62
"""Sizes, strides and offsets of tensors stay below this (torch indexes with int64)."""

MAX_TENSOR_DIMS = 64
"""torch refuses tensors of more dimensions."""


def int_tuple(value: Any, what: str) -> tuple[int, ...]:
    """``value`` as a tuple of non-negative ints below MAX_TENSOR_INDEX; CheckpointError naming ``what`` otherwise."""
    if (not isinstance(value, (tuple, list)) or len(value) > MAX_TENSOR_DIMS
            or not all(is_int(v) and 0 <= v < MAX_TENSOR_INDEX for v in value)):
        raise CheckpointError(f"{what} must be a tuple of non-negative ints, got {short_repr(value)}")
    return tuple(value)


def view_geometry(offset: Any, size: Any, stride: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The checked size and stride of a strided tensor view; ``offset`` must be a non-negative int."""
    if not is_int(offset) or not 0 <= offset < MAX_TENSOR_INDEX:
        raise CheckpointError(f"bad tensor storage offset {short_repr(offset)}")
    size_t, stride_t = int_tuple(size, "tensor size"), int_tuple(stride, "tensor stride")
    if len(size_t) != len(stride_t):
        raise CheckpointError("tensor size and stride differ in length")
    return size_t, stride_t


def view_last_index(offset: int, size_t: tuple[int, ...], stride_t: tuple[int, ...]) -> int | None:
    """The storage index of a view's last element; None for a view without elements."""
    if math.prod(size_t) > 0:
        return offset + sum((n - 1) * s for n, s in zip(size_t, stride_t))
    return None


def empty_table(value: Any) -> bool:
    """None or an empty dict: what torch pickles for a tensor without backward hooks or metadata."""
    return value is None or (isinstance(value, dict) and not value)


def rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None,
                      state: Any = None) -> torch.Tensor:
    """torch._utils._rebuild_parameter(_with_state): the parameter's data as a plain tensor."""
    if not isinstance(data, torch.Tensor):
        raise CheckpointError(f"parameter data is a {type(data).__name__}, not a tensor")
    if backward_hooks:
        raise CheckpointError("parameter carries backward hooks")
    return data  # Python attributes in `state` are dropped: the result is data only


# --------------------------------------------------------------------------
# The unpickler.


class BoundedReader:
    """File wrapper refusing reads longer than what is left, before allocating for them.

    A forged length field (BINBYTES8, BINUNICODE8, ...) then cannot make the unpickler allocate
    more than the file holds; ``total`` is the size of the input from where it started (None: unknown).
    """

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


class RestrictedUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """Pure-Python unpickler whose object-building opcodes reach stand-ins only.

    Subclasses provide ``find_class`` and ``persistent_load`` and set:

    * ``source_kind``: the files read, as messages name them ("network pickles");
    * ``buildable_types``: the instances BUILD may fill (each has ``_pickle_build``);
    * ``container_types``: for ``list``, ``dict`` and ``set``, the exact types
      APPEND(S), SETITEM(S) and ADDITEMS may fill;
    * ``describe``: how messages name an object (extending ``describe_object``);

    and may override ``_reduced`` / ``_built`` to act on what REDUCE and BUILD made.
    """

    dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    source_kind: ClassVar[str]
    buildable_types: ClassVar[tuple[type, ...]]
    container_types: ClassVar[dict[type, tuple[type, ...]]] = {
        list: (list,),
        dict: (dict, OrderedDict),
        set: (set,),
    }
    describe: ClassVar[Callable[[Any], str]] = staticmethod(describe_object)

    def __init__(self, file: BinaryIO | Any, byte_limit: int | None, byte_limit_holder: str) -> None:
        """``byte_limit``: the size of the whole input (None: unknown), which ``byte_limit_holder``
        ("the file", "data.pkl") names in messages."""
        super().__init__(file)
        self._byte_limit = byte_limit
        self._byte_limit_holder = byte_limit_holder
        self.views = ViewBudget()  # what this file's tensor views may repeat

    # --- hooks

    def _reduced(self, result: Any) -> None:
        """Called with what a REDUCE produced, once it is on the stack."""

    def _built(self, inst: Any, result: Any) -> None:
        """Called with what ``inst._pickle_build(state)`` returned; by default BUILD fills in place."""

    def _require_container(self, obj: Any, kind: type) -> Any:
        if type(obj) not in self.container_types[kind]:
            raise _refused(f"add items to {self.describe(obj)}")
        return obj

    # --- object building

    def _load_reduce(self) -> None:
        args = self.stack.pop()
        func = self.stack[-1]
        if not isinstance(func, StandIn) or func.call is None:
            raise _refused(f"call {self.describe(func)}")
        if not isinstance(args, tuple):
            raise CheckpointError("REDUCE arguments are not a tuple")
        result = func.call(*args)
        self.stack[-1] = result
        self.views.charge(result)
        self._reduced(result)

    def _new(self, cls: Any, args: Any, kwargs: Any) -> Any:
        if not isinstance(cls, StandIn) or cls.new is None:
            raise _refused(f"instantiate {self.describe(cls)}")
        if not (type(args) is tuple and not args) or not (kwargs is None or (type(kwargs) is dict and not kwargs)):
            raise CheckpointError(f"{cls.qualname} is never created with arguments in {self.source_kind}")
        return cls.new()

    def _load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new(cls, args, None))

    def _load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new(cls, args, kwargs))

    def _load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if not isinstance(inst, self.buildable_types):
            raise _refused(f"set the state of {self.describe(inst)}")
        self._built(inst, inst._pickle_build(state))

    def _load_inst(self) -> None:
        module = self.readline()[:-1].decode("ascii", "replace")
        name = self.readline()[:-1].decode("ascii", "replace")
        raise _refused(f"instantiate '{module}.{name}' (INST opcode)")

    def _load_obj(self) -> None:
        args = self.pop_mark()
        cls = args[0] if args else None
        raise _refused(f"instantiate {self.describe(cls)} (OBJ opcode)")

    # --- container filling: plain containers only, so no foreign __setitem__/append runs

    def _load_append(self) -> None:
        value = self.stack.pop()
        self._require_container(self.stack[-1], list).append(value)

    def _load_appends(self) -> None:
        items = self.pop_mark()
        self._require_container(self.stack[-1], list).extend(items)

    def _load_setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        self._require_container(self.stack[-1], dict)[require_key(key)] = value

    def _load_setitems(self) -> None:
        items = self.pop_mark()
        target = self._require_container(self.stack[-1], dict)
        for key, value in _key_value_pairs(items):
            target[key] = value

    def _load_dict(self) -> None:
        self.append(dict(_key_value_pairs(self.pop_mark())))

    def _load_additems(self) -> None:
        items = self.pop_mark()
        self._require_container(self.stack[-1], set).update(require_key(v, "set member") for v in items)

    def _load_frozenset(self) -> None:
        items = self.pop_mark()
        self.append(frozenset(require_key(v, "set member") for v in items))

    def _load_bytearray8(self) -> None:
        # The base version allocates the claimed length before reading; the data
        # may already sit in a frame, so bound it by the whole input, not what is left.
        (length,) = struct.unpack("<Q", self.read(8))
        if self._byte_limit is not None and length > self._byte_limit:
            raise EOFError(
                f"pickle data was truncated: {length} bytes wanted, {self._byte_limit_holder} has {self._byte_limit}")
        buf = bytearray(length)
        self.readinto(buf)
        self.append(buf)

    dispatch.update({
        pickle.REDUCE[0]: _load_reduce, pickle.NEWOBJ[0]: _load_newobj, pickle.NEWOBJ_EX[0]: _load_newobj_ex,
        pickle.BUILD[0]: _load_build, pickle.INST[0]: _load_inst, pickle.OBJ[0]: _load_obj,
        pickle.APPEND[0]: _load_append, pickle.APPENDS[0]: _load_appends,
        pickle.SETITEM[0]: _load_setitem, pickle.SETITEMS[0]: _load_setitems, pickle.ADDITEMS[0]: _load_additems,
        pickle.DICT[0]: _load_dict, pickle.FROZENSET[0]: _load_frozenset,
        pickle.BYTEARRAY8[0]: _load_bytearray8,
    })


def _key_value_pairs(items: list[Any]) -> list[tuple[Any, Any]]:
    """The (key, value) pairs of a SETITEMS / DICT mark, keys checked before anything hashes them."""
    if len(items) % 2:
        raise CheckpointError("a dict is given an odd number of keys and values")
    return [(require_key(items[i]), items[i + 1]) for i in range(0, len(items), 2)]
