"""Read the weights of a TorchScript archive as a state dict, without running anything from it.

Threat model
------------
OpenAI's original CLIP checkpoints (``ViT-B-32.pt``, ``RN50.pt``, ..., what the
``clip`` package downloads) are TorchScript archives: ``torch.jit.save`` zips
holding the module tree as a pickle (``<root>/data.pkl``), tensor bytes
(``<root>/data/<key>``) and the model's TorchScript source (``<root>/code/``).
``torch.jit.load`` (what ``open_clip.load_openai_model`` calls) compiles and
runs that source and unpickles with TorchScript's own unpickler; ``torch.load``
with ``weights_only=True`` refuses such files.  A file from a mirror or a
stranger must not get that far, so this module reads the archive as data:

* The zip is opened with ``zipfile``, its directory checked like a torch file's
  (``torch_files.check_zip_records``).  ``<root>/data.pkl`` is unpickled by a
  pure-Python unpickler whose ``find_class`` never imports: ``__torch__.*``
  classes become ``ScriptObjectRecord`` stand-ins (filled by NEWOBJ + BUILD
  with their attribute dict), a fixed allow-list (``_ALLOWED``) maps the few
  globals TorchScript writes to functions written here, and every other global
  raises ``UnsafePickleError`` naming it.  REDUCE, NEWOBJ and BUILD only ever
  reach those stand-ins; INST and OBJ are refused; APPEND/SETITEM/ADDITEMS only
  touch plain lists, dicts and sets (the opcode handling is
  ``formats.unpickler``, shared with ``formats.network_pickle``).
* Tensors: ``persistent_load`` resolves ``('storage', <dtype>, key, location,
  numel)`` to the bytes of ``<root>/data/<key>``, which must be exactly
  ``numel * itemsize`` long, as a CPU tensor; ``_rebuild_tensor_v2`` becomes a
  bounds-checked strided view of it (views of one storage stay shared).
* Which attributes are parameters and buffers, and which objects are modules,
  is read from the class declarations in ``<root>/code/`` *as text* (two
  regular expressions over ``class X(Module):`` headers and their
  ``__parameters__ = [...]`` / ``__buffers__ = [...]`` lines); the code is
  never compiled or run.  The result has the keys and order of
  ``torch.jit.load(path).state_dict()``.
* The module tree is bounded (``limits.check_structure``) before it is walked.

Nothing in this module calls eval, exec, compile, importlib, torch.jit.load or
torch.load.  Remaining trust: ``zipfile`` and ``zlib`` for the container, the
pure-Python ``pickle._Unpickler`` opcode loop, and ``re`` over the code text.

Limits: TorchScript does not record which buffers were non-persistent, so
(like ``torch.jit.load(...).state_dict()``) they come back as ordinary
buffers.  Quantized tensors, modules with custom ``__getstate__`` (packed
params) and big-endian archives are refused with ``CheckpointError``.  If an
archive lacks the code file declaring a class, every tensor attribute of its
objects is taken as a buffer, and an object is taken as a module when it has
a ``training`` flag.
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
import sys
import zipfile
from collections import OrderedDict
from typing import Any, Callable

import torch

from targetclip_core.errors import CheckpointError, TargetCLIPError
from targetclip_core.formats.limits import check_structure, plain_children, require_key, short_repr
from targetclip_core.formats.torch_files import STORAGE_DTYPES, check_zip_records
from targetclip_core.formats.unpickler import (
    RestrictedUnpickler,
    StandIn,
    call_stand_ins,
    describe_object,
    empty_table,
    is_int,
    rebuild_parameter,
    unlisted_global,
    view_geometry,
    view_last_index,
)

__all__ = [
    "is_torchscript_archive",
    "read_torchscript_state_dict",
    "openai_clip_from_torchscript",
    "ScriptObjectRecord",
    "OPENAI_EXTRA_KEYS",
]

_MAX_PICKLE_BYTES = 512 * 1024 * 1024  # data.pkl holds structure only (a few MB for big models)
_MAX_CODE_BYTES = 64 * 1024 * 1024
_STORAGE_KEY = re.compile(r"[A-Za-z0-9_]{1,64}")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LOCATION = re.compile(r"[a-z_]+(:[0-9]+)?")

# Buffers OpenAI's training code registered on the top module; not CLIP parameters.
OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")


# --------------------------------------------------------------------------
# Records and stand-ins.


class ScriptObjectRecord:
    """One pickled TorchScript object (a module or a TorchScript class instance) as data.

    ``qualified_name`` is the class as the archive names it (e.g.
    ``__torch__.torch.nn.modules.linear.___torch_mangle_0.Linear``); ``state``
    is its attribute dict, in the archive's attribute order.
    """

    def __init__(self, qualified_name: str) -> None:
        self.qualified_name = qualified_name
        self.state: dict[str, Any] | None = None

    def _pickle_build(self, state: Any) -> None:
        if self.state is not None:
            raise CheckpointError(f"{self.qualified_name}: state given twice")
        if type(state) is not dict:
            raise CheckpointError(
                f"{self.qualified_name}: object state is a {type(state).__name__}, not an attribute dict "
                "(custom __getstate__, e.g. quantized packed parameters, is not supported)")
        if not all(isinstance(k, str) for k in state):
            raise CheckpointError(f"{self.qualified_name}: attribute names must be strings")
        self.state = dict(state)

    def __repr__(self) -> str:
        return f"ScriptObjectRecord({self.qualified_name!r})"


class _StorageType:
    """``torch.FloatStorage`` and friends: only meaningful inside a persistent id."""

    def __init__(self, qualname: str, dtype: torch.dtype) -> None:
        self.qualname = qualname
        self.dtype = dtype

    def __repr__(self) -> str:
        return f"<stand-in for {self.qualname}>"


class _Storage:
    """The bytes of ``<root>/data/<key>`` as a flat CPU tensor of the storage's dtype."""

    def __init__(self, key: str, dtype: torch.dtype, numel: int, flat: torch.Tensor) -> None:
        self.key, self.dtype, self.numel, self.flat = key, dtype, numel, flat


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                    backward_hooks: Any = None, metadata: Any = None) -> torch.Tensor:
    """torch._utils._rebuild_tensor_v2: a bounds-checked view of a storage, on the CPU."""
    if not isinstance(storage, _Storage):
        raise CheckpointError(f"tensor built on a {type(storage).__name__}, not an archive storage")
    size_t, stride_t = view_geometry(offset, size, stride)
    if not isinstance(requires_grad, bool):
        raise CheckpointError(f"bad requires_grad flag {short_repr(requires_grad)}")
    if not empty_table(backward_hooks) or not empty_table(metadata):
        # hooks would be callables, metadata sets conj/neg bits: archives of weights have neither
        raise CheckpointError("tensor carries backward hooks or metadata")
    last = view_last_index(offset, size_t, stride_t)
    if last is None:
        if offset > storage.numel:
            raise CheckpointError(f"tensor offset lies past the end of storage {storage.key}")
    elif last >= storage.numel:
        raise CheckpointError(f"tensor extends past the end of storage {storage.key}")
    return storage.flat.as_strided(size_t, stride_t, offset)


def _ordered_dict(items: Any = ()) -> OrderedDict:
    # Tensors' empty backward_hooks table: OrderedDict() (items arrive by SETITEMS, if any).
    if not isinstance(items, (list, tuple)) or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in items):
        raise CheckpointError("OrderedDict needs a list of key/value pairs")
    return OrderedDict((require_key(k), v) for k, v in items)


def _typed_list(what: str, check: Callable[[Any], bool]) -> Callable[[Any], list]:
    # torch.jit._pickle.build_{int,double,bool,tensor}list: identity on a list of that type.
    def build(data: Any) -> list:
        if type(data) is not list or not all(check(v) for v in data):
            raise CheckpointError(f"torch.jit._pickle.build_{what}list got something other than a list of {what}s")
        return data
    return build


def _restore_type_tag(value: Any, type_str: Any) -> Any:
    # torch.jit._pickle.restore_type_tag(value, "Dict[str, Tensor]"): the tag only matters to TorchScript.
    if not isinstance(type_str, str):
        raise CheckpointError("restore_type_tag needs a type string")
    return value


def _device(kind: Any, index: Any = None) -> torch.device:
    # a Device-typed attribute: a harmless value (making a torch.device does not touch the device)
    if not isinstance(kind, str) or not _LOCATION.fullmatch(kind):
        raise CheckpointError(f"bad torch.device {short_repr(kind)}")
    if index is not None and not is_int(index):
        raise CheckpointError(f"bad torch.device index {short_repr(index)}")
    return torch.device(kind) if index is None else torch.device(kind, index)


# quantized storages are refused: a TorchScript archive of weights has none
_STORAGE_DTYPES = {name: dtype for name, dtype in STORAGE_DTYPES.items() if not name.startswith("Q")}


def _build_allow_list() -> dict[tuple[str, str], Any]:
    calls: dict[str, Callable[..., Any]] = {
        "torch._utils._rebuild_tensor_v2": _rebuild_tensor,
        "torch._utils._rebuild_parameter": rebuild_parameter,
        "torch._utils._rebuild_parameter_with_state": rebuild_parameter,
        "collections.OrderedDict": _ordered_dict,
        "torch.device": _device,
        "torch.jit._pickle.build_intlist": _typed_list("int", is_int),
        "torch.jit._pickle.build_doublelist": _typed_list("double", lambda v: isinstance(v, float)),
        "torch.jit._pickle.build_boollist": _typed_list("bool", lambda v: isinstance(v, bool)),
        "torch.jit._pickle.build_tensorlist": _typed_list("tensor", lambda v: isinstance(v, torch.Tensor)),
        "torch.jit._pickle.restore_type_tag": _restore_type_tag,
    }
    allowed: dict[tuple[str, str], Any] = dict(call_stand_ins(calls))
    for name, dtype in _STORAGE_DTYPES.items():
        allowed[("torch", name)] = _StorageType(f"torch.{name}", dtype)
    return allowed


_ALLOWED = _build_allow_list()


def _describe(obj: Any) -> str:
    if isinstance(obj, _StorageType):
        return obj.qualname
    if isinstance(obj, ScriptObjectRecord):
        return f"a {obj.qualified_name} object"
    return describe_object(obj)


# --------------------------------------------------------------------------
# The unpickler.


class _ArchiveUnpickler(RestrictedUnpickler):
    """The shared restricted unpickler with TorchScript's allow-list, records and storages."""

    source_kind = "TorchScript archives"
    buildable_types = (ScriptObjectRecord,)  # filled in place: _pickle_build returns None
    # container_types: the shared plain list/dict(+OrderedDict)/set
    describe = staticmethod(_describe)

    def __init__(self, data: bytes, archive: "_Archive") -> None:
        super().__init__(io.BytesIO(data), len(data), "data.pkl")
        self._archive = archive
        self._storages: dict[str, _Storage] = {}
        self._classes: dict[str, StandIn] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "__torch__" or module.startswith("__torch__."):
            if not all(_IDENT.fullmatch(part) for part in (*module.split("."), name)):
                raise CheckpointError(f"bad TorchScript class name {module}.{name!r}")
            qualname = f"{module}.{name}"
            if qualname not in self._classes:
                self._classes[qualname] = StandIn(qualname, new=lambda: ScriptObjectRecord(qualname))
            return self._classes[qualname]
        found = _ALLOWED.get((module, name))
        if found is None:
            raise unlisted_global(module, name)
        return found

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise CheckpointError(f"unsupported persistent id {short_repr(pid)}")
        _, kind, key, location, numel = pid
        if not isinstance(kind, _StorageType):
            raise CheckpointError(f"storage of unsupported type {_describe(kind)}")
        if not isinstance(key, str) or not _STORAGE_KEY.fullmatch(key):
            raise CheckpointError(f"bad storage key {short_repr(key)}")
        if not isinstance(location, str) or not _LOCATION.fullmatch(location):
            raise CheckpointError(f"bad storage location {short_repr(location)}")
        if not is_int(numel) or numel < 0:
            raise CheckpointError(f"storage {key}: bad element count {short_repr(numel)}")
        known = self._storages.get(key)
        if known is not None:
            if known.dtype != kind.dtype or known.numel != numel:
                raise CheckpointError(f"storage {key} is referenced with two different types or sizes")
            return known
        storage = _Storage(key, kind.dtype, numel, self._archive.read_storage(key, kind.dtype, numel))
        self._storages[key] = storage
        return storage


# --------------------------------------------------------------------------
# The zip container and the class declarations in code/.


def _torchscript_root(names: list[str]) -> str | None:
    """The archive's root folder: ``<root>/data.pkl`` plus ``<root>/code/`` or ``<root>/constants.pkl``.

    None when there is no such root or several (a zip is not a TorchScript archive then).
    """
    nameset = set(names)
    roots = []
    for n in names:
        root, sep, leaf = n.rpartition("/")
        if leaf == "data.pkl" and sep and root and "/" not in root:
            if f"{root}/constants.pkl" in nameset or any(m.startswith(f"{root}/code/") for m in names):
                roots.append(root)
    return roots[0] if len(set(roots)) == 1 else None


@dataclasses.dataclass(frozen=True)
class _ClassDecl:
    is_module: bool
    parameters: tuple[str, ...] | None  # None: the header names none (fallback rules apply)
    buffers: tuple[str, ...] | None


_CLASS_HEADER = re.compile(r"^class ([A-Za-z_][A-Za-z0-9_]*)(?:\(([A-Za-z0-9_., ]*)\))?:[ \t]*$", re.M)
_TOP_LEVEL_LINE = re.compile(r"^(?=\S)", re.M)
_DECLARED = re.compile(r"^  (__parameters__|__buffers__) = \[([^\]\n]*)\][ \t]*$", re.M)
_QUOTED = re.compile(r'"([^"\\\n]*)"')


def _parse_class_decls(text: str) -> dict[str, _ClassDecl]:
    """Class headers of one TorchScript source file, read as text (never compiled)."""
    out: dict[str, _ClassDecl] = {}
    for m in _CLASS_HEADER.finditer(text):
        nxt = _TOP_LEVEL_LINE.search(text, m.end() + 1)
        body = text[m.end(): nxt.start() if nxt else len(text)]
        found: dict[str, tuple[str, ...]] = {}
        for d in _DECLARED.finditer(body):
            found.setdefault(d.group(1), tuple(_QUOTED.findall(d.group(2))))
        out[m.group(1)] = _ClassDecl(
            is_module=(m.group(2) or "").strip() == "Module",
            parameters=found.get("__parameters__"),
            buffers=found.get("__buffers__"),
        )
    return out


class _Archive:
    """An open TorchScript zip: member reads that turn every failure into CheckpointError."""

    def __init__(self, zf: zipfile.ZipFile, name: str) -> None:
        self.zf, self.name = zf, name
        check_zip_records(zf, os.path.getsize(name))
        root = _torchscript_root(zf.namelist())
        if root is None:
            raise CheckpointError(
                "not a TorchScript archive: no single <root>/data.pkl beside <root>/code/ or <root>/constants.pkl")
        self.root = root
        self._decls: dict[str, dict[str, _ClassDecl] | None] = {}

    def _info(self, rel: str) -> zipfile.ZipInfo | None:
        try:
            return self.zf.getinfo(f"{self.root}/{rel}")
        except KeyError:
            return None

    def read(self, rel: str, limit: int) -> bytes | None:
        info = self._info(rel)
        if info is None:
            return None
        if info.file_size > limit:
            raise CheckpointError(f"{rel} is {info.file_size} bytes, more than the {limit} read for it")
        try:
            return self.zf.read(info)
        except Exception as exc:  # BadZipFile (CRC), zlib.error, EOFError, OSError on a damaged file
            raise CheckpointError(f"cannot read {rel} (corrupt or truncated archive): {exc}") from None

    def read_storage(self, key: str, dtype: torch.dtype, numel: int) -> torch.Tensor:
        rel = f"data/{key}"
        info = self._info(rel)
        if info is None:
            raise CheckpointError(f"storage {key} is missing ({rel} not in the archive)")
        itemsize = torch.empty((), dtype=dtype).element_size()
        expected = numel * itemsize
        if info.file_size != expected:
            raise CheckpointError(
                f"storage {key} holds {info.file_size} bytes, but its entry says {numel} x {itemsize}-byte "
                f"{str(dtype).removeprefix('torch.')} = {expected}")
        if expected == 0:
            return torch.empty((0,), dtype=dtype)
        buf = bytearray(expected)
        try:
            with self.zf.open(info) as f:
                view, got = memoryview(buf), 0
                while got < expected:
                    n = f.readinto(view[got:])
                    if not n:
                        break
                    got += n
                extra = f.read(1)  # reaching the end makes zipfile check the CRC
        except Exception as exc:
            raise CheckpointError(f"cannot read storage {key} (corrupt or truncated archive): {exc}") from None
        if got != expected or extra:
            raise CheckpointError(f"storage {key}: {rel} does not hold the {expected} bytes its entry says")
        return torch.frombuffer(buf, dtype=dtype)  # shares (and keeps alive) buf, no copy

    def class_decl(self, qualified_name: str) -> _ClassDecl | None:
        module, _, cls = qualified_name.rpartition(".")
        rel = "code/" + module.replace(".", "/") + ".py"
        if rel not in self._decls:
            raw = self.read(rel, _MAX_CODE_BYTES)
            self._decls[rel] = None if raw is None else _parse_class_decls(raw.decode("utf-8", "replace"))
        decls = self._decls[rel]
        return None if decls is None else decls.get(cls)


# --------------------------------------------------------------------------
# From records to a state dict.


def _children(obj: Any) -> Any:
    if isinstance(obj, ScriptObjectRecord):
        return () if obj.state is None else (obj.state,)
    return plain_children(obj)


def _is_module(record: ScriptObjectRecord, archive: _Archive) -> bool:
    decl = archive.class_decl(record.qualified_name)
    if decl is not None:
        return decl.is_module
    return isinstance((record.state or {}).get("training"), bool)


def _collect(record: ScriptObjectRecord, prefix: str, archive: _Archive, out: OrderedDict,
             path: set[int]) -> None:
    if id(record) in path:
        raise CheckpointError(f"module graph has a cycle at {prefix or '<root>'}")
    if record.state is None:
        raise CheckpointError(f"{prefix or '<root>'}: {record.qualified_name} object without state")
    path.add(id(record))
    state = record.state
    decl = archive.class_decl(record.qualified_name)
    tensor_attrs = [k for k, v in state.items() if isinstance(v, torch.Tensor)]
    if decl is not None and decl.parameters is not None:
        params = list(decl.parameters)
        # archives from before `__buffers__` was written: every other tensor attribute was a buffer
        buffers = list(decl.buffers) if decl.buffers is not None else [k for k in tensor_attrs if k not in params]
    else:
        params, buffers = [], tensor_attrs
    if len(set(params) | set(buffers)) != len(params) + len(buffers):
        raise CheckpointError(f"{record.qualified_name}: a name is declared twice as parameter/buffer")
    for name in params + buffers:
        if name not in state:
            raise CheckpointError(
                f"{prefix}{name}: declared by {record.qualified_name} but has no value in the archive")
        value = state[name]
        if value is None:
            continue
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{prefix}{name}: expected a tensor, found {type(value).__name__}")
        out[prefix + name] = value
    for name, child in state.items():
        if isinstance(child, ScriptObjectRecord) and _is_module(child, archive):
            _collect(child, f"{prefix}{name}.", archive, out, path)
    path.discard(id(record))


# --------------------------------------------------------------------------
# Entry points.


def is_torchscript_archive(path: str | os.PathLike) -> bool:
    """True for a zip holding ``<root>/data.pkl`` plus ``<root>/code/`` or ``<root>/constants.pkl``.

    Reads only the zip's directory; never raises for a missing or unreadable file (False).
    ``torch.save`` zips have no code/ or constants.pkl and are not TorchScript archives.
    """
    try:
        with zipfile.ZipFile(os.fspath(path)) as zf:
            return _torchscript_root(zf.namelist()) is not None
    except Exception:  # not a file, not a zip, unreadable
        return False


def read_torchscript_state_dict(path: str | os.PathLike) -> "OrderedDict[str, torch.Tensor]":
    """The weights of a TorchScript archive, as ``torch.jit.load(path).state_dict()`` would give them.

    Tensors are CPU tensors (views sharing storage where the archive shares it),
    without requires_grad.  Raises UnsafePickleError for a global outside the
    allow-list (nothing is imported or run) and CheckpointError for a file that
    is missing, corrupt, truncated or not a TorchScript archive; both name the file.
    """
    name = os.fspath(path)
    try:
        with zipfile.ZipFile(name) as zf:
            archive = _Archive(zf, name)
            if sys.byteorder != "little" or (archive.read("byteorder", 64) or b"little").strip() != b"little":
                raise CheckpointError("only little-endian archives on little-endian machines are supported")
            data = archive.read("data.pkl", _MAX_PICKLE_BYTES)
            if data is None:
                raise CheckpointError("data.pkl is missing")
            try:
                obj = _ArchiveUnpickler(data, archive).load()
            except TargetCLIPError:
                raise
            except Exception as exc:  # anything else from untrusted bytes means a broken file
                raise CheckpointError(
                    f"data.pkl is not a readable pickle (corrupt?): {type(exc).__name__}: {str(exc)[:200]}") from None
            if not isinstance(obj, ScriptObjectRecord) or not _is_module(obj, archive):
                raise CheckpointError(f"data.pkl holds {_describe(obj)}, not a TorchScript module")
            check_structure(obj, _children)  # bounded (depth, size, no cycle) before it is walked
            out: OrderedDict[str, torch.Tensor] = OrderedDict()
            _collect(obj, "", archive, out, set())
            return out
    except TargetCLIPError as exc:
        raise type(exc)(f"{name}: {exc}") from None
    except FileNotFoundError:
        raise CheckpointError(f"{name}: no such file") from None
    except OSError as exc:
        raise CheckpointError(f"{name}: cannot read: {exc.strerror or exc}") from None
    except Exception as exc:  # zipfile.BadZipFile and friends on a damaged container
        raise CheckpointError(
            f"{name}: not a readable TorchScript archive (corrupt or truncated zip): {type(exc).__name__}: "
            f"{str(exc)[:200]}"
        ) from None


# --------------------------------------------------------------------------
# OpenAI CLIP archives.


def _openai_arch(sd: dict) -> dict[str, Any]:
    """Architecture fields of an OpenAI-layout state dict, inferred the way open_clip infers them."""
    text_width = sd["ln_final.weight"].shape[0]
    arch: dict[str, Any] = {
        "embed_dim": sd["text_projection"].shape[1],
        "text_cfg.context_length": sd["positional_embedding"].shape[0],
        "text_cfg.vocab_size": sd["token_embedding.weight"].shape[0],
        "text_cfg.width": text_width,
        "text_cfg.heads": text_width // 64,
        "text_cfg.layers": len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")}),
    }
    if "visual.proj" in sd:
        width, patch = sd["visual.conv1.weight"].shape[0], sd["visual.conv1.weight"].shape[-1]
        grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        arch.update({
            "vision_cfg.width": width,
            "vision_cfg.patch_size": patch,
            "vision_cfg.image_size": patch * grid,
            "vision_cfg.layers": len([k for k in sd if k.startswith("visual.") and k.endswith(".attn.in_proj_weight")]),
        })
    else:
        layers = tuple(len({k.split(".")[2] for k in sd if k.startswith(f"visual.layer{b}.")}) for b in (1, 2, 3, 4))
        arch.update({
            "vision_cfg.width": sd["visual.layer1.0.conv1.weight"].shape[0],
            "vision_cfg.layers": layers,
            "vision_cfg.image_size": round((sd["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5) * 32,
        })
    return arch


def _check_arch(arch: dict[str, Any], cfg: dict | None, name: str) -> None:
    if not cfg:
        return
    for field, have in arch.items():
        section, _, key = field.rpartition(".")
        want = (cfg.get(section) or {}).get(key) if section else cfg.get(key)
        if want is None:
            continue
        if isinstance(want, list):
            want = tuple(want)
        if want != have:
            raise CheckpointError(
                f"holds a CLIP whose {field} is {have}, but {name!r} has {want}; pass the matching architecture name")


def openai_clip_from_torchscript(path: str | os.PathLike, name: str | None = None) -> torch.nn.Module:
    """An fp32 open_clip CLIP (QuickGELU) from an OpenAI TorchScript checkpoint, read as data.

    The architecture is inferred from the weights by
    ``open_clip.model.build_model_from_openai_state_dict``; when ``name`` is given its
    open_clip config must agree with them (sizes, layers, context length, vocabulary).
    Image preprocessing is set to OpenAI's (mean/std, bicubic) at the inferred size.
    """
    from open_clip import get_model_config
    from open_clip.model import build_model_from_openai_state_dict, set_model_preprocess_cfg
    from open_clip.transform import PreprocessCfg

    file = os.fspath(path)
    sd = read_torchscript_state_dict(file)
    for key in OPENAI_EXTRA_KEYS:
        sd.pop(key, None)
    for key in [k for k in sd if k.rpartition(".")[2] == "attn_mask"]:
        # a causal mask, never a weight: open_clip keeps it as a non-persistent buffer, which
        # TorchScript cannot mark, so a scripted open_clip model (create_model(jit=True)) has it
        del sd[key]
    needed = ("text_projection", "positional_embedding", "token_embedding.weight", "ln_final.weight")
    vision = "visual.proj" in sd or "visual.attnpool.positional_embedding" in sd
    if not vision or any(k not in sd for k in needed):
        raise CheckpointError(
            f"{file}: a TorchScript archive, but not an OpenAI CLIP one (keys: {', '.join(list(sd)[:6])}, ...)")
    try:
        arch = _openai_arch(sd)
        if name is not None:
            _check_arch(arch, get_model_config(name), name)
        model = build_model_from_openai_state_dict(sd, quick_gelu=True, cast_dtype=None)
    except TargetCLIPError as exc:
        raise type(exc)(f"{file}: {exc}") from None
    except (KeyError, IndexError, ValueError, RuntimeError, AssertionError, ZeroDivisionError) as exc:
        msg = " ".join(line.strip() for line in str(exc).splitlines()[:3]) or type(exc).__name__
        raise CheckpointError(f"{file}: not a usable OpenAI CLIP checkpoint: {msg}") from None
    model = model.float().eval()  # the builder converts some weights to fp16, as OpenAI shipped them
    set_model_preprocess_cfg(model, dataclasses.asdict(PreprocessCfg(size=model.visual.image_size)))
    return model
