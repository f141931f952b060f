"""NVlabs/stylegan3 network pickles of the shared fixtures (stylegan3_t_32, stylegan3_r_32, stylegan3_sg2_32),
written exactly as each manifest's `pickle` section describes, without NVlabs code.

The file is `dict(G, D, G_ema, augment_pipe, training_set_kwargs)` at protocol 4. Every network module is a
REDUCE of `torch_utils.persistence._reconstruct_persistent_obj` with the meta dict
{type: 'class', version: 6, module_src, class_name, state}; `state` is the module's `__dict__` (torch's own keys
with OrderedDict tables, then the manifest's attributes with their numpy types). numpy values are written
under the numpy 1.x names (`numpy.core.multiarray._reconstruct` / `.scalar`) as published files are, even
though this venv runs numpy 2; `numpy2_names=True` writes numpy 2's `numpy._core` spelling instead.
The fake `torch_utils` / `dnnlib` modules exist only while a file is written (helpers.nvlabs).
"""

from __future__ import annotations

import builtins
import copy
import json
import os
import pickle
import sys
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from helpers.nvlabs import fake_nvlabs_modules
from helpers.paths import fixture_state_dict

STYLEGAN3_FIXTURES = ("stylegan3_t_32", "stylegan3_r_32", "stylegan3_sg2_32")

# Harmless stand-ins for the source text a real file carries (never run by a safe reader).
SRC_STYLEGAN3 = "# training/networks_stylegan3.py (stand-in text, never run)\nimport torch\n"
SRC_STYLEGAN2 = "# training/networks_stylegan2.py (stand-in text, never run)\nimport torch\n"
SRC_AUGMENT = "# training/augment.py (stand-in text, never run)\nimport torch\n"

TRAINING_COPY_SCALE = 0.5  # G (the training copy) holds G_ema's tensors times this


def payload_source(marker: Path) -> str:
    """module_src that, if anything executed it, would write `marker`."""
    return f"open({str(marker)!r}, 'w').write('module_src ran')\nimport torch\n"


# --------------------------------------------------------------------------- the manifest


def load_manifest(fixtures_dir: Path, name: str) -> dict:
    return json.loads((Path(fixtures_dir) / f"{name}.json").read_text(encoding="utf-8"))


def decode_value(value: Any, easydict: Callable[[dict], dict] = dict) -> Any:
    """A manifest value as the pickle holds it: numpy arrays / scalars, tuples, EasyDicts; lists stay lists."""
    if isinstance(value, list):
        return [decode_value(v, easydict) for v in value]
    if not isinstance(value, dict):
        return value
    if "__ndarray__" in value:
        return np.array(value["__ndarray__"], dtype=np.dtype(value["dtype"]))
    if "__numpy_scalar__" in value:
        return np.dtype(value["dtype"]).type(value["__numpy_scalar__"])
    if "__tuple__" in value:
        return tuple(decode_value(v, easydict) for v in value["__tuple__"])
    if "__EasyDict__" in value:
        return easydict({k: decode_value(v, easydict) for k, v in value["__EasyDict__"].items()})
    return {k: decode_value(v, easydict) for k, v in value.items()}


def manifest_init_kwargs(fixtures_dir: Path, name: str) -> dict:
    """The manifest's init_kwargs as plain data (EasyDict -> dict), for comparing with a record's."""
    return decode_value(load_manifest(fixtures_dir, name)["init_kwargs"])


# --------------------------------------------------------------------------- records


class _Persistent:
    """One persistent module: pickles as REDUCE(_reconstruct_persistent_obj, (meta,))."""

    def __init__(self, reconstruct: Callable, class_name: str, module_src: str, state: dict) -> None:
        self.reconstruct, self.class_name, self.module_src, self.state = reconstruct, class_name, module_src, state

    def __reduce__(self):
        meta = {"type": "class", "version": 6, "module_src": self.module_src, "class_name": self.class_name, "state": self.state}
        return (self.reconstruct, (meta,))


def _torch_keys(keys: list[str], training: bool, non_persistent: list[str]) -> dict:
    """torch.nn.Module's own __dict__ entries, in the manifest's order, with the values a fresh module has."""
    fresh = torch.nn.Module().__dict__
    out: dict[str, Any] = {}
    for key in keys:
        if key == "training":
            out[key] = bool(training)
        elif key in ("_parameters", "_buffers", "_modules"):
            out[key] = OrderedDict()  # the manifest: OrderedDicts (older torch wrote them so)
        elif key == "_non_persistent_buffers_set":
            out[key] = set(non_persistent)
        elif key in fresh:
            out[key] = copy.deepcopy(fresh[key])
        else:  # a hook table this torch no longer has
            out[key] = OrderedDict()
    return out


def _tensor_for(weights: dict, key: str, shape: list | None, strict: bool) -> Any:
    """The value a parameter/buffer entry holds; `_MISSING` when the caller's state leaves it out."""
    if shape is None:
        return None
    if key not in weights:
        if strict:
            raise KeyError(f"fixture state has no {key}")
        return _MISSING
    value = weights[key].detach().to("cpu", torch.float32).clone()
    if strict and list(value.shape) != list(shape):
        raise ValueError(f"{key}: fixture shape {list(value.shape)} != manifest {shape}")
    return value


_MISSING = object()


def build_records(manifest: dict, weights: dict, fake: Any, module_src: str, *, strict: bool = True,
                  attr_overrides: dict[str, dict] | None = None) -> _Persistent:
    """The G_ema module tree of `manifest['pickle']['modules']` holding `weights` (state-dict names)."""
    spec = manifest["pickle"]
    keys = spec["torch_module_keys"]
    records: dict[str, _Persistent] = {}
    unknown = set(attr_overrides or {}) - {mod["path"] for mod in spec["modules"]}
    assert not unknown, f"no such module in the manifest: {sorted(unknown)}"
    for mod in spec["modules"]:
        path = mod["path"]
        state = _torch_keys(keys, mod["training"], mod["non_persistent_buffers"])
        for attr, value in mod["attributes"].items():
            state[attr] = decode_value(value, fake.EasyDict)
        state.update((attr_overrides or {}).get(path, {}))
        prefix = f"{path}." if path else ""
        for pname, shape in mod["parameters"]:
            value = _tensor_for(weights, prefix + pname, shape, strict)
            if value is not _MISSING:
                state["_parameters"][pname] = (
                    None if value is None else torch.nn.Parameter(value, requires_grad=False))
        for bname, shape in mod["buffers"]:
            value = _tensor_for(weights, prefix + bname, shape, strict)
            if value is not _MISSING:
                state["_buffers"][bname] = value
        records[path] = _Persistent(fake.reconstruct, mod["class_name"], module_src, state)
    for mod in spec["modules"]:  # children after every record exists (the manifest lists parents first)
        path = mod["path"]
        for child, class_name in mod["modules"]:
            child_path = f"{path}.{child}" if path else child
            record = records[child_path]
            assert record.class_name == class_name, (child_path, record.class_name, class_name)
            records[path].state["_modules"][child] = record
    if strict:
        used = {f"{m['path']}.{n}" if m["path"] else n
                for m in spec["modules"] for n, s in m["parameters"] + m["buffers"] if s is not None}
        assert used == set(weights), f"manifest and fixture state disagree: {sorted(used ^ set(weights))[:5]}"
    return records[""]


def _small_module(fake: Any, class_name: str, src: str, keys: list[str], attributes: dict,
                  parameters: dict | None = None, buffers: dict | None = None, modules: dict | None = None):
    state = _torch_keys(keys, False, [])
    state.update(attributes)
    for k, v in (parameters or {}).items():
        state["_parameters"][k] = torch.nn.Parameter(v, requires_grad=False)
    state["_buffers"].update(buffers or {})
    state["_modules"].update(modules or {})
    return _Persistent(fake.reconstruct, class_name, src, state)


def small_discriminator(fake: Any, keys: list[str], src: str, resolution: int = 32) -> _Persistent:
    """A tiny training.networks_stylegan2.Discriminator record (fromrgb of the top block + the output layer)."""
    fir = torch.outer(torch.tensor([1.0, 3.0, 3.0, 1.0]), torch.tensor([1.0, 3.0, 3.0, 1.0])) / 64
    fromrgb = _small_module(fake, "Conv2dLayer", src, keys, {"in_channels": 3, "out_channels": 8, "activation": "lrelu",
                            "weight_gain": np.float64(1 / np.sqrt(3)), "_init_args": (3, 8), "_init_kwargs": {}},
                            parameters={"weight": torch.full((8, 3, 1, 1), 0.25), "bias": torch.zeros(8)})
    top = _small_module(fake, "DiscriminatorBlock", src, keys,
                        {"resolution": resolution, "architecture": "resnet", "_init_args": (0, 8, 8), "_init_kwargs": {}},
                        buffers={"resample_filter": fir}, modules={"fromrgb": fromrgb})
    out = _small_module(fake, "FullyConnectedLayer", src, keys, {"in_features": 8, "out_features": 1,
                        "activation": "linear", "weight_gain": np.float64(1 / np.sqrt(8)), "bias_gain": 1,
                        "_init_args": (8, 1), "_init_kwargs": {}},
                        parameters={"weight": torch.ones(1, 8), "bias": torch.zeros(1)})
    b4 = _small_module(fake, "DiscriminatorEpilogue", src, keys, {"in_channels": 8, "resolution": 4,
                       "_init_args": (8,), "_init_kwargs": {}}, modules={"out": out})
    init_kwargs = {"c_dim": 0, "img_resolution": resolution, "img_channels": 3,
                   "block_kwargs": fake.EasyDict(freeze_layers=0), "mapping_kwargs": fake.EasyDict(),
                   "epilogue_kwargs": fake.EasyDict(mbstd_group_size=4)}
    return _small_module(fake, "Discriminator", src, keys, {
        "c_dim": 0, "img_resolution": resolution, "img_resolution_log2": int(np.log2(resolution)),
        "img_channels": 3, "block_resolutions": [resolution, 4], "_init_args": (), "_init_kwargs": init_kwargs},
        modules={f"b{resolution}": top, "b4": b4})


def small_augment_pipe(fake: Any, keys: list[str], src: str) -> _Persistent:
    """A tiny training.augment.AugmentPipe record ('bgc' strengths, the p buffer, a short wavelet buffer)."""
    strengths = {"xflip": 1, "rotate90": 1, "xint": 1, "scale": 1, "rotate": 1, "aniso": 1, "xfrac": 1,
                     "brightness": 1, "contrast": 1, "lumaflip": 1, "hue": 1, "saturation": 1}
    attributes = {k: float(v) for k, v in strengths.items()}
    attributes.update(_init_args=(), _init_kwargs=dict(strengths))
    return _small_module(fake, "AugmentPipe", src, keys, attributes,
                         buffers={"p": torch.tensor(0.125), "Hz_geom": torch.linspace(-0.1, 0.1, 12)})


# --------------------------------------------------------------------------- numpy 1.x names


class _Global:
    """A global spelled by name only: written as STACK_GLOBAL without importing anything."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def __call__(self, *args: Any) -> Any:  # pickle wants a callable; nothing ever calls it
        raise RuntimeError(f"{self.module}.{self.name} is a name for pickling only")


def _numpy_globals(core: str) -> dict[Any, _Global]:
    multiarray = np._core.multiarray
    return {multiarray._reconstruct: _Global(f"{core}.multiarray", "_reconstruct"),
            multiarray.scalar: _Global(f"{core}.multiarray", "scalar")}


class _NetworkPickler(pickle._Pickler):  # the Python pickler: its `save` can be extended per object
    """Pickler that spells numpy's array/scalar reconstructors under a chosen numpy module name."""

    def __init__(self, file, numpy_core: str) -> None:
        super().__init__(file, protocol=4)
        self._renamed = _numpy_globals(numpy_core)

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is np.ndarray or isinstance(obj, np.generic):
            rv = obj.__reduce__()
            func = self._renamed.get(rv[0])
            assert func is not None, f"unexpected numpy reducer {rv[0]!r}"
            return (func, *rv[1:])
        return NotImplemented

    def save(self, obj: Any, save_persistent_id: bool = True) -> None:
        if not isinstance(obj, _Global):
            return super().save(obj, save_persistent_id)
        memo = self.memo.get(id(obj))
        if memo is not None:
            self.write(self.get(memo[0]))
            return
        self.save(obj.module)
        self.save(obj.name)
        self.write(pickle.STACK_GLOBAL)
        self.memoize(obj)


def dump_network_pickle(data: Any, path: Path, *, numpy2_names: bool = False) -> Path:
    with open(path, "wb") as f:
        _NetworkPickler(f, "numpy._core" if numpy2_names else "numpy.core").dump(data)
    return Path(path)


# --------------------------------------------------------------------------- the fixture pickles


def _training_copy(weights: dict) -> dict:
    return {k: v * TRAINING_COPY_SCALE for k, v in weights.items()}


def build_snapshot(fake: Any, fixtures_dir: Path, name: str, *, module_src: str | None = None,
                   g_ema_state: dict | None = None, with_augment_pipe: bool = True,
                   attr_overrides: dict[str, dict] | None = None) -> dict:
    """The training snapshot dict (while `fake` modules exist)."""
    manifest = load_manifest(fixtures_dir, name)
    stylegan3 = manifest["class_name"] == "training.networks_stylegan3.Generator"
    g_src = module_src if module_src is not None else (SRC_STYLEGAN3 if stylegan3 else SRC_STYLEGAN2)
    d_src = module_src if module_src is not None else SRC_STYLEGAN2
    if not stylegan3:
        d_src = g_src  # one shared str per source module: G and D come from networks_stylegan2.py
    aug_src = module_src if module_src is not None else SRC_AUGMENT
    weights = fixture_state_dict(Path(fixtures_dir), name)
    keys = manifest["pickle"]["torch_module_keys"]
    g_ema = build_records(manifest, weights if g_ema_state is None else g_ema_state, fake, g_src,
                          strict=g_ema_state is None, attr_overrides=attr_overrides)
    return {
        "G": build_records(manifest, _training_copy(weights), fake, g_src),
        "D": small_discriminator(fake, keys, d_src, manifest["resolution"]),
        "G_ema": g_ema,
        "augment_pipe": small_augment_pipe(fake, keys, aug_src) if with_augment_pipe else None,
        "training_set_kwargs": {"class_name": "training.dataset.ImageFolderDataset", "path": "/data/ffhq-32x32.zip",
                                 "use_labels": False, "max_size": 70000, "xflip": False, "resolution": manifest["resolution"],
                                 "random_seed": 0},
    }


def write_stylegan3_fixture_pickle(path: Path, fixtures_dir: Path, name: str, *, module_src: str | None = None,
                                   g_ema_state: dict | None = None, numpy2_names: bool = False,
                                   with_augment_pipe: bool = True) -> Path:
    """Write fixture `name`'s network pickle as the manifest describes; returns `path`.

    `module_src` replaces every record's source text (e.g. `payload_source(marker)`); `g_ema_state`
    replaces G_ema's tensors (an entry the manifest lists but the state lacks is left out of the record).
    """
    with fake_nvlabs_modules() as fake:
        data = build_snapshot(fake, fixtures_dir, name, module_src=module_src, g_ema_state=g_ema_state,
                              with_augment_pipe=with_augment_pipe)
        return dump_network_pickle(data, Path(path), numpy2_names=numpy2_names)


class Payload:
    """A value whose unpickling would call `func(*args)` (REDUCE of a dangerous global)."""

    def __init__(self, func: Callable, args: tuple) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


def payload_module(manifest: dict) -> str:
    """Where the payload is planted: one synthesis layer of G_ema (the 4th StyleGAN3 layer, StyleGAN2's b8.conv0)."""
    synthesis = next(m for m in manifest["pickle"]["modules"] if m["path"] == "synthesis")
    names = synthesis["attributes"].get("layer_names")
    return f"synthesis.{names[3]}" if names else "synthesis.b8.conv0"


# The global each payload kind names in the file.
PAYLOAD_GLOBALS = {"os.system": f"{os.system.__module__}.system", "exec": "builtins.exec"}


def write_stylegan3_payload_pickle(path: Path, fixtures_dir: Path, name: str, marker: Path,
                                   kind: str = "os.system") -> Path:
    """The fixture pickle with a REDUCE payload inside G_ema's state (`conv_clamp` of one layer) that would
    write `marker` if unpickled by a plain `pickle.load`. kind: 'os.system' or 'exec'."""
    if kind == "os.system":
        payload = Payload(os.system, (f"touch {marker}",))
    elif kind == "exec":
        payload = Payload(builtins.exec, (f"open({str(marker)!r}, 'w').write('payload ran')",))
    else:
        raise ValueError(kind)
    with fake_nvlabs_modules() as fake:
        where = payload_module(load_manifest(fixtures_dir, name))
        data = build_snapshot(fake, fixtures_dir, name, attr_overrides={where: {"conv_clamp": payload}})
        return dump_network_pickle(data, Path(path))


def plain_pickle_load(path: Path) -> Any:
    """Read one of OUR files with the stock unpickler (a cross-check of the writer, independent of our reader):
    stand-in `torch_utils` / `dnnlib` modules exist only meanwhile, and the persistence stand-in returns the
    meta dict instead of running anything. Never use this on a file this module did not write."""
    with fake_nvlabs_modules() as fake:
        persistence = sys.modules["torch_utils.persistence"]
        persistence._reconstruct_persistent_obj = lambda meta: meta
        try:
            with open(path, "rb") as f:
                return pickle.load(f)
        finally:
            persistence._reconstruct_persistent_obj = fake.reconstruct
