"""The bounds every reader of untrusted files applies, so reading one is bounded work.

* ``require_key``: what may be hashed.  Dict keys and set members from a file
  must be scalars or small flat tuples of them; hashing a deeply nested tuple
  crashes CPython (no recursion check in ``tuple.__hash__``) and hashing a
  tuple that shares its parts (a DAG) takes exponential time.
* ``check_structure``: what a reader hands on.  Once a file is unpickled, its
  result must nest at most ``MAX_NESTING`` containers deep, expand to at most
  ``MAX_EXPANDED_VALUES`` values when every shared part is counted once per
  reference (so any naive walk -- ``repr``, ``==``, a recursive converter -- is
  bounded) and hold no cycle.  It walks iteratively and visits each distinct
  object once.
* ``ViewBudget``: what tensor views may claim.  A view may repeat elements of
  its storage (stride 0, overlapping strides); honest files rarely do and never
  much, so the elements a file's views repeat are bounded in total before any
  caller materialises them (``.float()``, ``torch.isfinite``).
* ``short_repr``: how messages quote a value from a file (bounded in depth,
  width and digits, never the ``repr`` of an arbitrary object).
"""

from __future__ import annotations

import reprlib
from itertools import chain
from typing import Any, Callable, Iterable

import torch

from targetclip_core.errors import CheckpointError

__all__ = [
    "MAX_NESTING",
    "MAX_EXPANDED_VALUES",
    "MAX_REPEATED_ELEMENTS",
    "short_repr",
    "require_key",
    "plain_children",
    "check_structure",
    "ViewBudget",
]

MAX_NESTING = 100
"""Containers a file's data may nest (network pickles nest about 30, state dicts 3)."""

MAX_EXPANDED_VALUES = 1 << 22
"""Values a file's data may expand to, a shared part counted once per reference (state dicts: thousands)."""

MAX_REPEATED_ELEMENTS = 1 << 24
"""Elements the tensor views of one file may repeat beyond their storages, in all (64 MB of float32)."""

_MAX_KEY_PARTS = 64
_KEY_ATOMS = (str, bytes, int, float, complex, bool, type(None), torch.dtype)


# --------------------------------------------------------------------------
# Quoting values in messages.


class _ShortRepr(reprlib.Repr):
    """reprlib with bounded ints and containers of any subclass; other objects by type name only."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxstring, self.maxother, self.maxlong = 3, 60, 60, 40
        self.maxdict = self.maxlist = self.maxtuple = self.maxset = self.maxfrozenset = 6

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 128:  # str() of a huge int is slow, and refused past 4300 digits
            return f"<{x.bit_length()}-bit int>"
        return super().repr_int(x, level)

    def repr_instance(self, x: Any, level: int) -> str:
        for kind, method in ((dict, self.repr_dict), (list, self.repr_list), (tuple, self.repr_tuple),
                             (set, self.repr_set), (frozenset, self.repr_frozenset)):
            if isinstance(x, kind):
                return method(x, level)
        if isinstance(x, torch.Tensor):
            return f"<tensor {list(x.shape)} {str(x.dtype).removeprefix('torch.')}>"
        if isinstance(x, (int, float, complex, str, bytes, bool, type(None), torch.dtype, torch.device)):
            return super().repr_instance(x, level)
        return f"<{type(x).__module__}.{type(x).__qualname__}>"

    repr_Tensor = repr_Parameter = repr_instance


_SHORT = _ShortRepr()


def short_repr(value: Any) -> str:
    """A bounded repr of a value read from a file, for error messages."""
    try:
        return _SHORT.repr(value)
    except Exception:  # an odd object: name its type only
        return f"<{type(value).__qualname__}>"


# --------------------------------------------------------------------------
# Keys.


def require_key(key: Any, what: str = "dict key") -> Any:
    """``key`` if it is safe to hash (a scalar or a small flat tuple of scalars); CheckpointError otherwise."""
    if type(key) in _KEY_ATOMS:
        return key
    if type(key) is tuple:
        parts: list[Any] = [key]
        seen = 0
        while parts:
            part = parts.pop()
            seen += 1
            if seen > _MAX_KEY_PARTS:
                raise CheckpointError(f"a {what} is a tuple nested or shared too much to be hashed safely")
            if type(part) is tuple:
                parts.extend(part)
            elif type(part) not in _KEY_ATOMS:
                raise CheckpointError(f"a {what} holds a {type(part).__name__}; {_KEYS_ARE}")
        return key
    raise CheckpointError(f"a {what} is a {type(key).__name__} ({short_repr(key)}); {_KEYS_ARE}")


_KEYS_ARE = "keys are strings, numbers or tuples of them"


# --------------------------------------------------------------------------
# Structure.


def plain_children(obj: Any) -> Iterable[Any] | None:
    """What a plain container holds (a dict: its keys and values); None for a leaf."""
    if isinstance(obj, dict):
        return chain(obj.keys(), obj.values())
    if isinstance(obj, (list, tuple, set, frozenset)):
        return obj
    return None


def check_structure(root: Any, children: Callable[[Any], Iterable[Any] | None] = plain_children,
                    visit: Callable[[Any], None] | None = None) -> None:
    """Refuse data nested deeper than MAX_NESTING, expanding past MAX_EXPANDED_VALUES, or with a cycle.

    ``children(obj)`` says what ``obj`` holds (None: a leaf); ``visit(obj)`` is called once per
    distinct container and once per reference to a leaf.  Iterative: never a RecursionError.
    """
    done: dict[int, tuple[int, int]] = {}  # id -> (height, expanded size) of a finished container
    on_path: set[int] = set()
    first = children(root)
    if first is None:
        if visit is not None:
            visit(root)
        return
    if visit is not None:
        visit(root)
    # frames: [object, iterator over its children, height so far, expanded size so far]
    frames: list[list[Any]] = [[root, iter(first), 0, 1]]
    on_path.add(id(root))
    while frames:
        frame = frames[-1]
        child = next(frame[1], _END)
        if child is _END:
            frames.pop()
            on_path.discard(id(frame[0]))
            height, size = frame[2] + 1, frame[3]
            done[id(frame[0])] = (height, size)
            if frames:
                _add(frames[-1], height, size)
            continue
        key = id(child)
        if key in done:
            _add(frame, *done[key])
            continue
        if key in on_path:
            raise CheckpointError("the data refers back to itself (a cycle); files of weights never do")
        grand = children(child)
        if visit is not None:
            visit(child)
        if grand is None:
            _add(frame, 0, 1)
            continue
        if len(frames) >= MAX_NESTING:
            raise CheckpointError(f"the data nests more than {MAX_NESTING} containers deep")
        on_path.add(key)
        frames.append([child, iter(grand), 0, 1])


_END = object()


def _add(frame: list[Any], height: int, size: int) -> None:
    frame[2] = max(frame[2], height)
    frame[3] += size
    if frame[3] > MAX_EXPANDED_VALUES:
        raise CheckpointError(
            f"the data expands to more than {MAX_EXPANDED_VALUES} values (parts shared over and over); "
            "files of weights are far smaller")


# --------------------------------------------------------------------------
# Tensor views.


class ViewBudget:
    """The elements one file's tensor views repeat beyond their storages, bounded in total.

    ``charge`` takes a tensor, or anything with ``view_extent() -> (numel, storage_numel)``
    (the shape-only tensors of a dry run); each distinct object is charged once.
    """

    def __init__(self, limit: int = MAX_REPEATED_ELEMENTS) -> None:
        self.left = limit
        self._charged: dict[int, Any] = {}  # keeps charged objects alive, so their ids stay unique

    def charge(self, obj: Any) -> None:
        if id(obj) in self._charged:
            return
        if isinstance(obj, torch.Tensor):
            if obj.layout != torch.strided or obj.is_quantized:
                return
            numel, storage_numel = obj.numel(), obj.untyped_storage().nbytes() // max(obj.element_size(), 1)
        elif callable(getattr(obj, "view_extent", None)):
            numel, storage_numel = obj.view_extent()
        else:
            return
        self._charged[id(obj)] = obj
        self.charge_extent(numel, storage_numel)

    def charge_extent(self, numel: int, storage_numel: int) -> None:
        excess = numel - storage_numel
        if excess > 0:
            self.left -= excess
            if self.left < 0:
                raise CheckpointError(
                    f"a tensor claims {numel} elements over a storage of {storage_numel} (a stride-0 or "
                    f"overlapping view); a file's views may repeat at most {MAX_REPEATED_ELEMENTS} elements in all")
