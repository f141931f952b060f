"""Hand-forged checkpoint containers for the hostile-input tests.

torch.save only writes honest files, so these write the same containers from parts the test
chooses: the pickle (with torch's persistent storage ids and tensor rebuild calls, whatever
sizes they claim) and the records beside it.  `write_torch_zip` writes torch's zip layout
(`<root>/data.pkl`, `<root>/data/<key>`, `byteorder`, `version`), `write_torch_legacy` the
pre-zip layout (magic, protocol, sys info, the pickle, the storage keys, then each storage as
an 8-byte element count and its bytes).  `op_*` and the graph builders write pickles opcode by
opcode (deep nesting, parts shared exponentially, module graphs), which pickle.dumps cannot.
`read_in_child` reads files in a child process with an address-space limit and a time limit per
read, so a test can prove a bomb is refused without the memory to build it, and a crash or hang
of the reader fails the test instead of the test run.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path

import torch
from helpers.bounded import run_limited

TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
TORCH_LEGACY_PROTOCOL = 1001


class Storage:
    """A storage as the pickle names it: key, storage class name (FloatStorage, ...) and claimed numel."""

    def __init__(self, key: str, numel: int, kind: str = "FloatStorage"):
        self.key, self.numel, self.kind = key, numel, kind


class Tensor:
    """A tensor as `_rebuild_tensor_v2` arguments: a view of `storage`, whatever sizes it claims."""

    def __init__(self, storage: Storage, size, stride=None, offset: int = 0):
        if stride is None:  # contiguous
            stride, acc = [], 1
            for n in reversed(list(size)):
                stride.insert(0, acc)
                acc *= n
        self.storage, self.size, self.stride, self.offset = storage, tuple(size), tuple(stride), offset

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2,
                (self.storage, self.offset, self.size, self.stride, False, OrderedDict()))


class _Pickler(pickle.Pickler):
    def __init__(self, file, legacy: bool):
        super().__init__(file, protocol=2)
        self.legacy = legacy

    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            pid = ("storage", getattr(torch, obj.kind), obj.key, "cpu", obj.numel)
            return pid + (None,) if self.legacy else pid
        return None


def forged_pickle(obj, legacy: bool = False) -> bytes:
    """The pickle torch would write for `obj`, where `Storage` / `Tensor` parts become storage ids and views."""
    buf = io.BytesIO()
    _Pickler(buf, legacy).dump(obj)
    return buf.getvalue()


def write_torch_zip(path: Path, obj, records: dict[str, bytes], *, data_pkl: bytes | None = None,
                    compress: dict[str, int] | None = None, root: str = "archive") -> Path:
    """A torch zip checkpoint: `obj` pickled as data.pkl, `records[key]` as data/<key> (STORED unless `compress`)."""
    compress = compress or {}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{root}/data.pkl", forged_pickle(obj) if data_pkl is None else data_pkl)
        zf.writestr(f"{root}/byteorder", "little")
        for key, raw in records.items():
            zf.writestr(f"{root}/data/{key}", raw, compress_type=compress.get(key, zipfile.ZIP_STORED))
        zf.writestr(f"{root}/version", "3\n")
    return path


def torch_legacy_bytes(obj, storages: dict[str, tuple[int, bytes]]) -> bytes:
    """A pre-zip torch checkpoint; `storages[key]` = (element count written before the bytes, bytes)."""
    buf = io.BytesIO()
    for header in (TORCH_LEGACY_MAGIC, TORCH_LEGACY_PROTOCOL,
                   dict(protocol_version=TORCH_LEGACY_PROTOCOL, little_endian=True,
                        type_sizes=dict(short=2, int=4, long=4))):
        pickle.dump(header, buf, protocol=2)
    buf.write(forged_pickle(obj, legacy=True))
    pickle.dump(list(storages), buf, protocol=2)
    for numel, raw in storages.values():
        buf.write(struct.pack("<q", numel))
        buf.write(raw)
    return buf.getvalue()


def write_torch_legacy(path: Path, obj, storages: dict[str, tuple[int, bytes]]) -> Path:
    """`torch_legacy_bytes` written to `path`."""
    Path(path).write_bytes(torch_legacy_bytes(obj, storages))
    return path


class Call:
    """Pickles as a call of `func(*args)` (how NVlabs pickles embed storages and tensors)."""

    def __init__(self, func, args: tuple):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


def nvlabs_tensor(storage_bytes: bytes, size, stride, offset: int = 0) -> Call:
    """A tensor as a network pickle holds it: a view of a storage given as torch.save bytes."""
    storage = Call(torch.storage._load_from_bytes, (storage_bytes,))
    return Call(torch._utils._rebuild_tensor_v2, (storage, offset, tuple(size), tuple(stride), False, OrderedDict()))


def rewrite_zip(src: Path, dst: Path, changes: dict[str, bytes]) -> Path:
    """A copy of the zip `src` with the members named in `changes` (by their last path parts) replaced."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            tail = next((k for k in changes if info.filename.endswith("/" + k)), None)
            zout.writestr(info.filename, changes[tail] if tail else zin.read(info))
    return dst


def floats(*values: float) -> bytes:
    """Little-endian float32 bytes."""
    return struct.pack(f"<{len(values)}f", *values)


def patch_declared_size(path: Path, name: str, size: int) -> None:
    """Make the zip record `name` claim `size` uncompressed bytes (local header and central directory)."""
    raw = bytearray(Path(path).read_bytes())
    with zipfile.ZipFile(path) as zf:
        info, entry = zf.getinfo(name), zf.start_dir
    struct.pack_into("<I", raw, info.header_offset + 22, size)
    while True:  # central directory entries: 46 fixed bytes, then name, extra field and comment
        assert raw[entry: entry + 4] == b"PK\x01\x02"
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", raw, entry + 28)
        if raw[entry + 46: entry + 46 + name_len] == name.encode():
            struct.pack_into("<I", raw, entry + 24, size)
            break
        entry += 46 + name_len + extra_len + comment_len
    Path(path).write_bytes(bytes(raw))


# ---------------------------------------------------------------- pickles written opcode by opcode (protocol 2)


def op_str(text: str) -> bytes:
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def op_int(n: int) -> bytes:
    return b"J" + struct.pack("<i", n)


def op_put(i: int) -> bytes:
    return b"r" + struct.pack("<I", i)


def op_get(i: int) -> bytes:
    return b"j" + struct.pack("<I", i)


def op_global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def op_dict(*pairs: tuple[bytes, bytes]) -> bytes:
    """A dict from (key opcodes, value opcodes) pairs."""
    return b"}(" + b"".join(k + v for k, v in pairs) + b"u"


def deep_tuple(levels: int) -> bytes:
    """Opcodes leaving ((((0,),),),...) nested `levels` deep on the stack."""
    return b"K\x00" + b"\x85" * levels


def shared_tuple(levels: int, memo: int = 9000) -> bytes:
    """Opcodes leaving a tuple that holds the previous level twice, `levels` times: a tiny DAG that
    expands (and hashes) exponentially."""
    return b"K\x00" + op_put(memo) + (op_get(memo) + b"\x86" + op_put(memo)) * levels


def deep_list(levels: int) -> bytes:
    """Opcodes leaving [[[...]]] nested `levels` deep on the stack."""
    return b"]" * levels + b"a" * (levels - 1)


def key_pickle(key_ops: bytes) -> bytes:
    """A pickle of {key: 1} whose key the opcodes build."""
    return b"\x80\x02}" + key_ops + b"K\x01s."


def value_pickle(value_ops: bytes) -> bytes:
    """A pickle of {'w': value} whose value the opcodes build."""
    return b"\x80\x02}" + op_str("w") + value_ops + b"s."


def nvlabs_module_graph(levels: int, shared: bool, init_kwargs_ops: bytes = b"}") -> bytes:
    """A network pickle {'G_ema': record} whose modules form a chain `levels` deep; `shared`: each
    module holds the one below it twice (a DAG whose state_dict() is exponential).

    Records are what torch_utils.persistence pickles: _reconstruct_persistent_obj(meta dict).
    Each one stays on the stack and in the memo; the next refers to it by memo index.
    """
    out = bytearray(b"\x80\x02" + op_global("torch_utils.persistence", "_reconstruct_persistent_obj") + op_put(0))

    def record(modules: bytes, kwargs: bytes = b"}") -> bytes:
        state = op_dict((op_str("_parameters"), b"}"), (op_str("_buffers"), b"}"),
                        (op_str("_modules"), modules), (op_str("_init_kwargs"), kwargs))
        meta = op_dict((op_str("type"), op_str("class")), (op_str("version"), op_int(6)),
                       (op_str("module_src"), op_str("")), (op_str("class_name"), op_str("Layer")),
                       (op_str("state"), state))
        return op_get(0) + meta + b"\x85R"

    out += record(b"}") + op_put(1)
    for level in range(levels):
        children = [(op_str("a"), op_get(1 + level))]
        if shared:
            children.append((op_str("b"), op_get(1 + level)))
        kwargs = init_kwargs_ops if level == levels - 1 else b"}"
        out += record(op_dict(*children), kwargs) + op_put(2 + level)
    out += b"}" + op_str("G_ema") + op_get(1 + levels) + b"s."
    return bytes(out)


def torchscript_module_graph(levels: int, shared: bool) -> bytes:
    """A TorchScript data.pkl whose module objects (NEWOBJ + BUILD of a __torch__ class, a `training`
    flag marking them as modules) form a chain `levels` deep; `shared`: each holds the one below twice."""
    out = bytearray(b"\x80\x02" + op_global("__torch__", "M") + op_put(0))

    def module(children: list[tuple[bytes, bytes]]) -> bytes:
        return op_get(0) + b")\x81" + op_dict((op_str("training"), b"\x88"), *children) + b"b"

    out += module([]) + op_put(1)
    for level in range(levels):
        children = [(op_str("a"), op_get(1 + level))]
        if shared:
            children.append((op_str("b"), op_get(1 + level)))
        out += module(children) + op_put(2 + level)
    out += b"."
    return bytes(out)


# ---------------------------------------------------------------- reading in a child process


_CHILD = r"""
import hashlib, json, resource, signal, sys, time
from targetclip_core.errors import TargetCLIPError
from targetclip_core.formats.checkpoints import torch_load_safely
from targetclip_core.formats.network_pickle import load_network_pickle
from targetclip_core.formats.pickle_records import PersistentRecord
from targetclip_core.formats.torchscript import read_torchscript_state_dict


class Slow(Exception):
    pass


def on_alarm(*_):
    raise Slow()


signal.signal(signal.SIGALRM, on_alarm)


def tensors(obj, found, depth=0):
    # what a caller does next: every tensor materialised (isfinite), every record's state and kwargs read
    if depth > 20:
        return
    if isinstance(obj, PersistentRecord):
        found.update(obj.state_dict())
        obj.init_kwargs
        obj.init_args
    elif isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, torch.Tensor):
                found[str(k)] = v
            else:
                tensors(v, found, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            tensors(v, found, depth + 1)


def digest(found):
    h = hashlib.sha256()
    for k in sorted(found):
        t = found[k]
        if t.is_floating_point():
            torch.isfinite(t).all()
        h.update(f"{k}{t.dtype}{list(t.shape)}".encode())
        h.update(t.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


READERS = {"torch": torch_load_safely, "nvlabs": load_network_pickle, "torchscript": read_torchscript_state_dict}
results = []
base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for reader, path in json.loads(CASES):
    start = time.perf_counter()
    signal.setitimer(signal.ITIMER_REAL, PER_READ)
    out = dict(path=path)
    try:
        found = {}
        tensors(READERS[reader](path), found)
        out.update(ok=True, digest=digest(found))
    except BaseException as exc:
        out.update(ok=False, error=type(exc).__name__, ours=isinstance(exc, TargetCLIPError), message=str(exc)[:500])
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    out.update(seconds=time.perf_counter() - start,
               rss_growth_mb=(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024)
    results.append(out)
print(json.dumps(results))
"""


def read_in_child(cases: list[tuple[str, Path]], headroom_gb: float = 2.0, per_read_s: float = 5.0,
                  timeout: float = 120) -> list[dict]:
    """Read each (reader, path) in one fresh interpreter whose address space may grow only `headroom_gb`
    past what importing torch took (helpers.bounded), each read cut off after `per_read_s` (error 'Slow').

    Readers: 'torch' (torch_load_safely), 'nvlabs' (load_network_pickle, then every record's state_dict()
    and init_kwargs), 'torchscript' (read_torchscript_state_dict).  After a load every floating tensor
    goes through torch.isfinite, as a caller's checks would.  Returns per case: ok, digest (of the tensors)
    or error (type name), ours (a TargetCLIPError), message; seconds and growth of the peak RSS in MB.
    A crash of the child (a segfault) fails the calling test with the child's stderr.
    """
    arg = json.dumps([(reader, str(path)) for reader, path in cases])
    code = _CHILD.replace("PER_READ", str(per_read_s)).replace("CASES", repr(arg))
    return run_limited(code, timeout=timeout, headroom=int(headroom_gb * 2**30))


def npy_header_only(path: Path, shape, descr="<f8", data: bytes = b"") -> Path:
    """A .npy file whose header declares `shape` and `descr`, followed by `data` (none: a header that lies)."""
    from numpy.lib import format as npy

    with open(path, "wb") as f:
        npy.write_array_header_1_0(f, {"descr": descr, "fortran_order": False, "shape": shape})
        f.write(data)
    return path
