"""NVlabs StyleGAN2-ADA network pickles written in the layout of NVlabs/stylegan2-ada-pytorch training/networks.py
(parameter names and shapes, the persistent-class record torch_utils.persistence pickles, the `_init_kwargs` it keeps).
The fake `torch_utils.persistence` / `dnnlib` modules exist only while a pickle is written."""

from __future__ import annotations

import contextlib
import copy
import pickle
import re
import sys
import types
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

FIR = torch.outer(torch.tensor([1.0, 3.0, 3.0, 1.0]), torch.tensor([1.0, 3.0, 3.0, 1.0])) / 64  # setup_filter([1,3,3,1])


def rosinality_to_nvlabs(sd: dict, resolution: int, n_mlp: int, w_avg=None) -> "OrderedDict[str, torch.Tensor]":
    """Rename a rosinality Generator state dict into StyleGAN2-ADA `Generator` names and shapes."""
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for i in range(n_mlp):
        out[f"mapping.fc{i}.weight"] = sd[f"style.{i + 1}.weight"]
        out[f"mapping.fc{i}.bias"] = sd[f"style.{i + 1}.bias"]
    w_dim = sd["style.1.weight"].shape[0]
    out["mapping.w_avg"] = torch.zeros(w_dim) if w_avg is None else torch.as_tensor(w_avg).reshape(w_dim)

    def synthesis_layer(dst, src, noise):
        out[f"{dst}.weight"] = sd[f"{src}.conv.weight"][0]  # [1, O, I, 3, 3] -> [O, I, 3, 3]
        out[f"{dst}.noise_strength"] = sd[f"{src}.noise.weight"].reshape([])
        out[f"{dst}.bias"] = sd[f"{src}.activate.bias"]
        out[f"{dst}.resample_filter"] = FIR.clone()
        out[f"{dst}.noise_const"] = sd[f"noises.noise_{noise}"][0, 0]  # [1, 1, R, R] -> [R, R]
        out[f"{dst}.affine.weight"] = sd[f"{src}.conv.modulation.weight"]
        out[f"{dst}.affine.bias"] = sd[f"{src}.conv.modulation.bias"]

    def torgb(dst, src):
        out[f"{dst}.weight"] = sd[f"{src}.conv.weight"][0]  # [1, 3, I, 1, 1] -> [3, I, 1, 1]
        out[f"{dst}.bias"] = sd[f"{src}.bias"].reshape(-1)  # [1, 3, 1, 1] -> [3]
        out[f"{dst}.affine.weight"] = sd[f"{src}.conv.modulation.weight"]
        out[f"{dst}.affine.bias"] = sd[f"{src}.conv.modulation.bias"]

    out["synthesis.b4.const"] = sd["input.input"][0]  # [1, C, 4, 4] -> [C, 4, 4]
    out["synthesis.b4.resample_filter"] = FIR.clone()
    synthesis_layer("synthesis.b4.conv1", "conv1", 0)
    torgb("synthesis.b4.torgb", "to_rgb1")
    for j, res in enumerate(2**k for k in range(3, int(np.log2(resolution)) + 1)):
        out[f"synthesis.b{res}.resample_filter"] = FIR.clone()
        synthesis_layer(f"synthesis.b{res}.conv0", f"convs.{2 * j}", 2 * j + 1)
        synthesis_layer(f"synthesis.b{res}.conv1", f"convs.{2 * j + 1}", 2 * j + 2)
        torgb(f"synthesis.b{res}.torgb", f"to_rgbs.{j}")
    return out


def random_nvlabs_state(resolution, channels, z_dim, w_dim, c_dim, n_mlp, seed=0, lr_mul=0.01):
    """A random StyleGAN2-ADA Generator state dict (initialised like NVlabs does: weights / lr_mul)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return scale * torch.randn(*shape, generator=g)

    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    if c_dim:
        out["mapping.embed.weight"] = rnd(w_dim, c_dim)
        out["mapping.embed.bias"] = rnd(w_dim, scale=0.1)
    dims = [z_dim + (w_dim if c_dim else 0)] + [w_dim] * n_mlp
    for i in range(n_mlp):
        out[f"mapping.fc{i}.weight"] = rnd(dims[i + 1], dims[i]) / lr_mul
        out[f"mapping.fc{i}.bias"] = rnd(dims[i + 1], scale=0.1) / lr_mul
    out["mapping.w_avg"] = rnd(w_dim, scale=0.5)
    prev = None
    for res in [2**k for k in range(2, int(np.log2(resolution)) + 1)]:
        ch = channels[res]
        b = f"synthesis.b{res}"
        if res == 4:
            out[f"{b}.const"] = rnd(ch, 4, 4)
        out[f"{b}.resample_filter"] = FIR.clone()
        layers = [("conv1", ch)] if res == 4 else [("conv0", prev), ("conv1", ch)]
        for name, cin in layers:
            out[f"{b}.{name}.weight"] = rnd(ch, cin, 3, 3)
            out[f"{b}.{name}.noise_strength"] = rnd(1, scale=0.3).reshape([])
            out[f"{b}.{name}.bias"] = rnd(ch, scale=0.2)
            out[f"{b}.{name}.resample_filter"] = FIR.clone()
            out[f"{b}.{name}.noise_const"] = rnd(res, res)
            out[f"{b}.{name}.affine.weight"] = rnd(cin, w_dim)
            out[f"{b}.{name}.affine.bias"] = 1.0 + rnd(cin, scale=0.1)
        out[f"{b}.torgb.weight"] = rnd(3, ch, 1, 1)
        out[f"{b}.torgb.bias"] = rnd(3, scale=0.1)
        out[f"{b}.torgb.affine.weight"] = rnd(ch, w_dim)
        out[f"{b}.torgb.affine.bias"] = 1.0 + rnd(ch, scale=0.1)
        prev = ch
    return out


_BUFFERS = {"resample_filter", "noise_const", "w_avg"}


def _class_of(path: str) -> str:
    last = path.rsplit(".", 1)[-1]
    if path == "":
        return "Generator"
    if path == "mapping":
        return "MappingNetwork"
    if path == "synthesis":
        return "SynthesisNetwork"
    if re.fullmatch(r"b\d+", last):
        return "SynthesisBlock"
    if last in ("conv0", "conv1"):
        return "SynthesisLayer"
    if last == "torgb":
        return "ToRGBLayer"
    return "FullyConnectedLayer"  # fcN, embed, affine


@contextlib.contextmanager
def fake_nvlabs_modules():
    """`torch_utils.persistence` and `dnnlib` just long enough for pickle to name their globals."""

    def _reconstruct_persistent_obj(meta):  # pragma: no cover - a safe reader never calls it
        raise RuntimeError("fake persistence: a safe reader must never call this")

    class EasyDict(dict):
        pass

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    EasyDict.__module__, EasyDict.__qualname__ = "dnnlib.util", "EasyDict"
    mods = {name: types.ModuleType(name) for name in ("torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util")}
    mods["torch_utils.persistence"]._reconstruct_persistent_obj = _reconstruct_persistent_obj
    mods["torch_utils"].persistence = mods["torch_utils.persistence"]
    mods["dnnlib.util"].EasyDict = EasyDict
    mods["dnnlib"].util = mods["dnnlib.util"]
    mods["dnnlib"].EasyDict = EasyDict
    assert not any(name in sys.modules for name in mods)
    sys.modules.update(mods)
    try:
        yield types.SimpleNamespace(reconstruct=_reconstruct_persistent_obj, EasyDict=EasyDict)
    finally:
        for name in mods:
            sys.modules.pop(name, None)


class _Persistent(torch.nn.Module):
    """A module pickled like torch_utils.persistence pickles a persistent class: a meta record."""

    def __init__(self, reconstruct, class_name, module_src, init_kwargs=None):
        super().__init__()
        object.__setattr__(self, "_meta", (reconstruct, class_name, module_src))
        self._init_args = ()
        self._init_kwargs = copy.deepcopy(init_kwargs or {})

    def __reduce__(self):
        reconstruct, class_name, module_src = self._meta
        state = {k: v for k, v in self.__dict__.items() if k != "_meta"}
        meta = dict(type="class", version=6, module_src=module_src, class_name=class_name, state=state)
        return (reconstruct, (meta,), None)


NETWORKS_SRC = "# training/networks.py (stand-in text, never run)\nimport torch\nfrom torch_utils import persistence\n"


def build_network(fake, state: dict, init_kwargs: dict, class_name="Generator", module_src=NETWORKS_SRC, root_attrs=None):
    """Module tree of persistent records from a flat state dict (NVlabs names)."""
    root = _Persistent(fake.reconstruct, class_name, module_src, init_kwargs)
    nodes = {"": root}
    for key, value in state.items():
        *path, leaf = key.split(".")
        parent = root
        for depth in range(len(path)):
            sub = ".".join(path[: depth + 1])
            if sub not in nodes:
                node = _Persistent(fake.reconstruct, _class_of(sub), module_src)
                parent.add_module(path[depth], node)
                nodes[sub] = node
            parent = nodes[sub]
        if leaf in _BUFFERS:
            parent.register_buffer(leaf, value.clone())
        else:
            parent.register_parameter(leaf, torch.nn.Parameter(value.clone(), requires_grad=False))
    for k, v in (root_attrs or {}).items():
        setattr(root, k, v)
    return root


def nvlabs_init_kwargs(fake, resolution, z_dim=512, w_dim=512, c_dim=0, n_mlp=8, lr_multiplier=0.01,
                       channel_base=16384, channel_max=512, conv_clamp=None, num_fp16_res=0):
    return dict(
        z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, img_resolution=resolution, img_channels=3,
        mapping_kwargs=fake.EasyDict(num_layers=n_mlp, lr_multiplier=lr_multiplier),
        synthesis_kwargs=fake.EasyDict(
            channel_base=channel_base, channel_max=channel_max, num_fp16_res=num_fp16_res,
            conv_clamp=conv_clamp, architecture="skip",
        ),
    )


def write_nvlabs_pickle(path: Path, state: dict, *, with_d=True, class_name="Generator", module_src=NETWORKS_SRC,
                        **kwargs) -> Path:
    """A StyleGAN2-ADA network pickle: dict(G, D, G_ema, augment_pipe, training_set_kwargs)."""
    with fake_nvlabs_modules() as fake:
        resolution = kwargs.pop("resolution")
        init_kwargs = nvlabs_init_kwargs(fake, resolution, **kwargs)
        G_ema = build_network(fake, state, init_kwargs, class_name, module_src)
        G = build_network(fake, state, init_kwargs, class_name, module_src)
        D = None
        if with_d:
            D = build_network(fake, {"b4.fromrgb.weight": torch.ones(2, 3, 1, 1), "b4.resample_filter": FIR},
                              {"c_dim": 0, "img_resolution": resolution, "img_channels": 3}, "Discriminator")
        data = dict(
            G=G, D=D, G_ema=G_ema, augment_pipe=None,
            training_set_kwargs=fake.EasyDict(class_name="training.dataset.ImageFolderDataset", path="/data/x.zip",
                                              use_labels=False, max_size=np.int64(100), resolution=resolution),
        )
        with open(path, "wb") as f:
            pickle.dump(data, f, protocol=4)
    assert "torch_utils" not in sys.modules and "dnnlib" not in sys.modules
    return path


def nvlabs_fixture_pickle(path, rosinality32_state, w_avg=None, **kwargs):
    state = rosinality_to_nvlabs(rosinality32_state, 32, 8, w_avg=w_avg)
    return write_nvlabs_pickle(path, state, resolution=32, **kwargs)
