"""torch.save files (the zip layout and the legacy pre-zip one) checked as data before torch reads them.

``torch.load(weights_only=True)`` runs no code, but it trusts the sizes a file
declares: the legacy loader allocates every storage the pickle names before it
reads a byte of it, zip records are inflated to the size their header claims,
a stride-0 view can claim 60000x60000 elements over one float (which the
first ``.float()`` or ``torch.isfinite`` materialises), and its unpickler
hashes dict keys from the file (a deeply nested tuple key crashes the
process, one that shares its parts takes exponential time).  So
``check_torch_container`` reads the container first, with bounded work:

* zip: every record lies inside the file, is STORED or DEFLATED within a
  bounded ratio (``MAX_DEFLATE_RATIO``, ``MAX_INFLATED_BYTES``), names are
  unique, and every CRC-32 matches (torch's own reader skips that check, so a
  flipped bit in the weights would load silently);
* legacy: the magic number, protocol and layout, and every storage's element
  count and bytes within what follows the pickles;
* both: a dry run of the pickle through the restricted unpickler of
  ``formats.unpickler`` with shape-only tensors: every storage it names is
  checked against the bytes the file holds for it, every view against its
  storage and the file's ``ViewBudget``, every key before it is hashed.  The
  dry run builds nothing from the file: globals it does not know stay inert
  placeholders, and torch's own allow-list still decides what ``torch.load``
  accepts afterwards.

``check_loaded_checkpoint`` then checks what ``torch.load`` returned: bounded
structure (``limits.check_structure``), keys that are strings (or ints outside
state dicts), and dense tensors with data.
"""

from __future__ import annotations

import argparse
import io
import math
import struct
import tarfile
import zipfile
from collections import OrderedDict
from itertools import chain
from typing import Any, BinaryIO, Iterable

import torch

from targetclip_core.errors import CheckpointError
from targetclip_core.formats.limits import check_structure, plain_children, require_key, short_repr
from targetclip_core.formats.unpickler import (
    BoundedReader,
    RestrictedUnpickler,
    StandIn,
    describe_object,
    is_int,
    unlisted_global,
    view_geometry,
    view_last_index,
)

__all__ = [
    "TORCH_LEGACY_MAGIC",
    "MAX_DEFLATE_RATIO",
    "MAX_INFLATED_BYTES",
    "STORAGE_DTYPES",
    "check_zip_records",
    "check_torch_container",
    "check_loaded_checkpoint",
    "storage_bytes_checked",
]

TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch's pre-zip format starts with this pickled number
_TORCH_LEGACY_PROTOCOL = 1001

MAX_DEFLATE_RATIO = 50
"""How much a DEFLATED record may inflate (torch writes records STORED; weights barely compress)."""

MAX_INFLATED_BYTES = 1 << 30
"""What all DEFLATED records of one zip may inflate to, together."""

_MAX_PICKLE_BYTES = 512 * 1024 * 1024  # data.pkl holds structure only (a few MB for big models)

STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool, "ComplexFloatStorage": torch.complex64,
    "ComplexDoubleStorage": torch.complex128, "QInt8Storage": torch.qint8, "QUInt8Storage": torch.quint8,
    "QInt32Storage": torch.qint32, "UntypedStorage": torch.uint8,
}
"""The storage classes torch pickles tensors' data under, and their element types."""


# --------------------------------------------------------------------------
# The zip container.


def check_zip_records(zf: zipfile.ZipFile, size: int) -> None:
    """Every record of ``zf`` lies inside the file's ``size`` bytes, once, STORED or DEFLATED within bounds.

    Reads only the directory; CheckpointError for a record that would inflate past the bounds.
    """
    infos = zf.infolist()
    if len({info.filename for info in infos}) != len(infos):
        raise CheckpointError("the zip names a record twice")
    inflated = 0
    for info in infos:
        if info.header_offset + info.compress_size > size:
            raise CheckpointError(f"record {info.filename} claims bytes past the end of the file")
        if info.compress_type == zipfile.ZIP_STORED:
            if info.file_size != info.compress_size:
                raise CheckpointError(f"stored record {info.filename} claims {info.file_size} bytes "
                                      f"but holds {info.compress_size}")
        elif info.compress_type == zipfile.ZIP_DEFLATED:
            inflated += info.file_size
            if info.file_size > MAX_DEFLATE_RATIO * max(info.compress_size, 1) or inflated > MAX_INFLATED_BYTES:
                raise CheckpointError(
                    f"record {info.filename} claims to inflate {info.compress_size} bytes to {info.file_size} "
                    f"(a zip bomb?); torch writes records uncompressed: re-save the file with torch.save")
        else:
            raise CheckpointError(f"record {info.filename} uses zip compression method {info.compress_type}, "
                                  "which torch cannot read")


def _verify_records(zf: zipfile.ZipFile) -> None:
    """Read every record to its end, which makes zipfile compare its CRC-32."""
    for info in zf.infolist():
        with zf.open(info) as record:
            while record.read(1 << 22):
                pass


def _check_zip(f: BinaryIO, size: int) -> None:
    try:
        zf = zipfile.ZipFile(f)
    except Exception as exc:  # BadZipFile, and whatever else a damaged directory makes zipfile raise
        raise CheckpointError(f"corrupt or truncated PyTorch checkpoint (not a readable zip: {exc})") from None
    with zf:
        check_zip_records(zf, size)
        names = zf.namelist()
        root = names[0].split("/", 1)[0] if names and "/" in names[0] else None
        if root is None or f"{root}/data.pkl" not in names:
            raise CheckpointError("a zip, but not a torch.save checkpoint (no <root>/data.pkl)")
        try:
            _verify_records(zf)
            info = zf.getinfo(f"{root}/data.pkl")
            if info.file_size > _MAX_PICKLE_BYTES:
                raise CheckpointError(f"data.pkl is {info.file_size} bytes; checkpoints keep tensors outside it")
            data = zf.read(info)
        except CheckpointError:
            raise
        except Exception as exc:  # BadZipFile (CRC, header), zlib.error, EOFError on a damaged file
            raise CheckpointError(f"corrupt or truncated PyTorch checkpoint ({type(exc).__name__}: {exc})") from None
        scan = _dry_run(io.BytesIO(data), len(data), legacy=False)
        for key, storage in scan.storages.items():
            try:
                record = zf.getinfo(f"{root}/data/{key}")
            except KeyError:
                raise CheckpointError(f"storage {short_repr(key)} has no record data/{key}") from None
            if record.file_size != storage.nbytes:
                raise CheckpointError(
                    f"storage {key} claims {storage.numel} elements ({storage.nbytes} bytes), "
                    f"but its record holds {record.file_size} bytes")


# --------------------------------------------------------------------------
# The legacy container: magic, protocol, sys info, the pickle, storage keys, then each storage.


def _check_legacy(f: BinaryIO, size: int) -> None:
    head = f.read(tarfile.BLOCKSIZE)
    f.seek(0)
    try:
        tarfile.TarInfo.frombuf(head, tarfile.ENCODING, "surrogateescape")
    except tarfile.HeaderError:
        pass  # not a tar header: good, torch will not read it as its ancient tar format
    else:
        raise CheckpointError("the file reads both as a legacy checkpoint and as a tar archive; refusing it")
    reader = BoundedReader(f)
    magic = _dry_run(reader, size, legacy=True, plain=True).result
    if type(magic) is not int or magic != TORCH_LEGACY_MAGIC:
        raise CheckpointError("not a PyTorch checkpoint (a pickle, but neither torch.save's zip nor its legacy format)")
    protocol = _dry_run(reader, size, legacy=True, plain=True).result
    if type(protocol) is not int or protocol != _TORCH_LEGACY_PROTOCOL:
        raise CheckpointError(f"legacy PyTorch checkpoint of unknown protocol {short_repr(protocol)}")
    _dry_run(reader, size, legacy=True, plain=True)  # sys info: torch ignores it
    storages = _dry_run(reader, size, legacy=True).storages
    keys = _dry_run(reader, size, legacy=True, plain=True).result
    if type(keys) is not list or not all(type(k) is str for k in keys):
        raise CheckpointError("corrupt legacy PyTorch checkpoint (the storage keys are not a list of strings)")
    if sorted(keys) != sorted(storages):
        raise CheckpointError("corrupt legacy PyTorch checkpoint (its storage keys do not match the storages "
                              "its tensors use)")
    offset = f.tell()
    for key in keys:
        storage = storages[key]
        raw = f.read(8)
        if len(raw) < 8:
            raise CheckpointError(f"truncated legacy PyTorch checkpoint (storage {key} is missing)")
        (numel,) = struct.unpack("<q", raw)
        if numel != storage.numel:
            raise CheckpointError(f"storage {key} is named with {storage.numel} elements but stored with {numel}")
        offset += 8 + storage.nbytes
        if offset > size:
            raise CheckpointError(
                f"storage {key} claims {storage.numel} elements ({storage.nbytes} bytes), more than the file "
                "holds: truncated or forged")
        f.seek(offset)


# --------------------------------------------------------------------------
# The dry run: the pickle with shape-only tensors.


class _StorageSketch:
    """A storage as the pickle names it: its key, element type and size; no data."""

    def __init__(self, key: str, dtype: torch.dtype, numel: int) -> None:
        self.key, self.dtype, self.numel = key, dtype, numel
        self.nbytes = numel * dtype.itemsize


class _TensorSketch:
    """A tensor view as the pickle declares it: how many elements over how big a storage."""

    def __init__(self, numel: int, storage_numel: int) -> None:
        self.numel, self.storage_numel = numel, storage_numel

    def view_extent(self) -> tuple[int, int]:
        return self.numel, self.storage_numel


class _Inert:
    """Whatever a global the dry run does not model makes: a placeholder that takes any state."""

    def __init__(self, qualname: str) -> None:
        self.qualname = qualname

    def _pickle_build(self, state: Any) -> "_Inert":
        return self


class _InertDict(OrderedDict):
    """An OrderedDict / Counter of the dry run: filled by SETITEMS, given attributes by BUILD."""

    def _pickle_build(self, state: Any) -> "_InertDict":
        return self


class _TensorShell:
    """``torch.Tensor()`` made by NEWOBJ, which an old-style BUILD turns into a view (``set_``)."""

    def _pickle_build(self, state: Any) -> Any:
        if isinstance(state, tuple) and len(state) >= 4:
            return _sketch_view(*state[:4])
        return self


def _sketch_view(storage: Any, offset: Any, size: Any, stride: Any, dtype: Any = None) -> _TensorSketch:
    if not isinstance(storage, _StorageSketch):
        raise CheckpointError(f"a tensor is built on {type(storage).__name__}, not a storage")
    size_t, stride_t = view_geometry(offset, size, stride)
    storage_numel = storage.numel
    if isinstance(dtype, torch.dtype) and dtype != storage.dtype:
        storage_numel = storage.nbytes // dtype.itemsize
    last = view_last_index(offset, size_t, stride_t)
    if last is not None and last >= storage_numel:
        raise CheckpointError(
            f"a tensor of size {list(size_t)} extends past the end of storage {storage.key} "
            f"({storage_numel} elements)")
    return _TensorSketch(math.prod(size_t), storage_numel)


def _rebuild_v3(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                backward_hooks: Any = None, dtype: Any = None, *rest: Any) -> _TensorSketch:
    return _sketch_view(storage, offset, size, stride, dtype)


def _rebuild_from_type(func: Any, new_type: Any, args: Any, state: Any = None) -> Any:
    if isinstance(func, StandIn) and func.call is not None and isinstance(args, tuple):
        return func.call(*args)
    return _Inert("torch._tensor._rebuild_from_type_v2")


def _mapping(*args: Any) -> _InertDict:
    """OrderedDict(pairs) / Counter(items) with their keys checked before anything hashes them."""
    out = _InertDict()
    if args:
        items = args[0]
        if isinstance(items, dict):
            items = list(items.items())
        if not isinstance(items, (list, tuple)):
            raise CheckpointError("a mapping is built from something other than a list")
        for item in items:
            key = item[0] if isinstance(item, (tuple, list)) and len(item) == 2 else item  # legacy files pickle [k, v] lists
            out[require_key(key)] = None
    return out


def _set(items: Any = ()) -> set:
    if not isinstance(items, (list, tuple)):
        raise CheckpointError("a set is built from something other than a list")
    return {require_key(v, "set member") for v in items}


_SKETCHES = {
    "torch._utils._rebuild_tensor_v2": lambda storage, offset, size, stride, *rest: _sketch_view(
        storage, offset, size, stride),
    "torch._utils._rebuild_tensor": lambda storage, offset, size, stride, *rest: _sketch_view(
        storage, offset, size, stride),
    "torch._utils._rebuild_tensor_v3": _rebuild_v3,
    "torch._utils._rebuild_qtensor": lambda storage, offset, size, stride, *rest: _sketch_view(
        storage, offset, size, stride),
    "torch._utils._rebuild_parameter": lambda data, *rest: data,
    "torch._utils._rebuild_parameter_with_state": lambda data, *rest: data,
    "torch._tensor._rebuild_from_type_v2": _rebuild_from_type,
    "collections.OrderedDict": _mapping,
    "collections.Counter": _mapping,
    "builtins.set": _set,
}
_PY2_NAMES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


class _StorageKind:
    """``torch.FloatStorage`` and friends in a storage's persistent id."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


def _describe(obj: Any) -> str:
    if isinstance(obj, _Inert):
        return f"a {obj.qualname} object"
    if isinstance(obj, (_TensorSketch, _TensorShell)):
        return "a tensor"
    if isinstance(obj, _StorageSketch):
        return "a storage"
    return describe_object(obj)


class _DryRun(RestrictedUnpickler):
    """The restricted unpickler over a torch pickle, with shape-only tensors and inert placeholders."""

    source_kind = "PyTorch checkpoints"
    buildable_types = (_Inert, _InertDict, _TensorShell)
    container_types = {list: (list,), dict: (dict, _InertDict), set: (set,)}
    describe = staticmethod(_describe)

    def __init__(self, file: Any, byte_limit: int, legacy: bool, plain: bool) -> None:
        super().__init__(file, byte_limit, "the file")
        self._legacy, self._plain = legacy, plain
        self.storages: dict[str, _StorageSketch] = {}
        self.result: Any = None

    def find_class(self, module: str, name: str) -> Any:
        module = _PY2_NAMES.get(module, module)
        qualname = f"{module}.{name}"
        if self._plain:  # the legacy header pickles: plain numbers and dicts
            raise unlisted_global(module, name)
        if qualname in _SKETCHES:
            return StandIn(qualname, call=_SKETCHES[qualname])
        if module in ("torch", "torch.cuda", "torch.storage") and name in STORAGE_DTYPES:
            return _StorageKind(STORAGE_DTYPES[name])
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if qualname == "builtins.bytearray":
            return StandIn(qualname, call=self._bytearray)
        if module == "torch" and name.endswith("Tensor"):
            return StandIn(qualname, call=lambda *a: _Inert(qualname), new=_TensorShell)
        return StandIn(qualname, call=lambda *a, **k: _Inert(qualname), new=lambda: _Inert(qualname))

    def _bytearray(self, source: Any = b"", *rest: Any) -> _Inert:
        if is_int(source) and source > (self._byte_limit or 0):
            raise CheckpointError(f"the pickle asks for a bytearray of {source} bytes, more than the file holds")
        return _Inert("builtins.bytearray")

    def _new(self, cls: Any, args: Any, kwargs: Any) -> Any:
        # torch allows arguments to NEWOBJ (nn.Parameter, allow-listed classes): the dry run ignores them
        if isinstance(cls, StandIn) and cls.new is not None:
            return cls.new()
        return super()._new(cls, args, kwargs)

    def _built(self, inst: Any, result: Any) -> None:
        if result is not inst:
            self.stack[-1] = result
            self.views.charge(result)

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or not pid:
            raise CheckpointError(f"unsupported persistent id {short_repr(pid)}")
        typename = pid[0].decode("ascii", "replace") if isinstance(pid[0], bytes) else pid[0]
        if self._legacy and typename == "module":
            return _Inert("module")
        if typename != "storage" or len(pid) != (6 if self._legacy else 5):
            raise CheckpointError(f"unsupported persistent id {short_repr(pid)}")
        kind, key, numel = pid[1], pid[2], pid[4]
        if isinstance(key, bytes):
            key = key.decode("ascii", "replace")
        if not isinstance(kind, _StorageKind):
            raise CheckpointError(f"a storage of unsupported type {short_repr(kind)}")
        if not isinstance(key, str) or not 0 < len(key) <= 256:
            raise CheckpointError(f"bad storage key {short_repr(key)}")
        if not is_int(numel) or not 0 <= numel < (1 << 62):
            raise CheckpointError(f"storage {key}: bad element count {short_repr(numel)}")
        storage = self.storages.get(key)
        if storage is None:
            storage = self.storages[key] = _StorageSketch(key, kind.dtype, numel)
        elif storage.dtype != kind.dtype or storage.numel != numel:
            raise CheckpointError(f"storage {key} is named with two different types or sizes")
        view = pid[5] if self._legacy else None
        if view is None:
            return storage
        if not (isinstance(view, tuple) and len(view) == 3 and all(is_int(v) and v >= 0 for v in view[1:])):
            raise CheckpointError(f"storage {key}: bad view {short_repr(view)}")
        _, offset, view_numel = view
        if offset + view_numel > numel:
            raise CheckpointError(f"a view of storage {key} extends past its end")
        return _StorageSketch(f"{key}[{offset}:]", kind.dtype, view_numel)


def _dry_run(file: Any, byte_limit: int, legacy: bool, plain: bool = False) -> _DryRun:
    """Unpickle one pickle of a torch file with shape-only tensors; ``plain``: no globals allowed."""
    run = _DryRun(file, byte_limit, legacy, plain)
    try:
        run.result = run.load()
    except CheckpointError:  # UnsafePickleError included
        raise
    except Exception as exc:  # anything else from untrusted bytes means a broken file
        raise CheckpointError(
            f"corrupt or truncated PyTorch checkpoint (its pickle is unreadable: {type(exc).__name__}: "
            f"{str(exc)[:200]})") from None
    return run


# --------------------------------------------------------------------------
# Entry points.


def check_torch_container(f: BinaryIO, size: int) -> None:
    """Check a torch.save file (open, seekable, ``size`` bytes) before torch.load reads it.

    Raises CheckpointError (without the file's name: callers add it) for anything that is not a
    well-formed zip or legacy checkpoint whose declared sizes fit the file; leaves ``f`` at 0.
    """
    head = f.read(16)
    f.seek(0)
    try:
        if head[:4] == b"PK\x03\x04":
            _check_zip(f, size)
        elif head[:1] == b"\x80":  # a pickle: the legacy format if it is torch's magic number
            _check_legacy(f, size)
        elif not head:
            raise CheckpointError("the file is empty (an interrupted download or save?)")
        else:
            raise CheckpointError("not a PyTorch checkpoint (neither torch.save's zip nor its legacy format)")
    finally:
        f.seek(0)


def _loaded_children(obj: Any) -> Iterable[Any] | None:
    if isinstance(obj, argparse.Namespace):
        return chain(vars(obj).keys(), vars(obj).values())
    found = plain_children(obj)
    if found is not None and isinstance(obj, dict) and getattr(obj, "__dict__", None):
        return chain(found, obj.__dict__.values())  # a state dict's _metadata
    return found


def _check_loaded_value(obj: Any) -> None:
    if isinstance(obj, dict):
        holds_tensors = any(isinstance(v, torch.Tensor) for v in obj.values())
        for key in obj:
            if isinstance(key, str):
                continue
            if holds_tensors or not is_int(key):
                where = "a state dict (a dict of tensors)" if holds_tensors else "a dict"
                raise CheckpointError(
                    f"{where} has the key {short_repr(key)}, a {type(key).__name__}; "
                    f"{'state dict keys are strings' if holds_tensors else 'keys are strings or ints'}")
    elif isinstance(obj, torch.Tensor):
        if obj.layout != torch.strided:
            raise CheckpointError(f"holds a {obj.layout} tensor; weights files hold dense tensors")
        if obj.is_meta:
            raise CheckpointError("holds a tensor without data (device 'meta')")


def check_loaded_checkpoint(obj: Any) -> None:
    """Check what torch.load returned: bounded structure, string (or int) keys, dense tensors with data."""
    check_structure(obj, _loaded_children, _check_loaded_value)


def storage_bytes_checked(data: bytes) -> io.BytesIO:
    """``data`` (the torch.save bytes of a storage) as a file, once its container passed ``check_torch_container``."""
    f = io.BytesIO(data)
    check_torch_container(f, len(data))
    return f

