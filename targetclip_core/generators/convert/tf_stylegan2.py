"""The original TensorFlow NVlabs/stylegan2 network pickles (`stylegan2-ffhq-config-f.pkl`, cat, car,
church, horse, config-e ...): a tuple `(G, D, Gs)` of `dnnlib.tflib.network.Network` records
(`formats.pickle_records.TFNetworkRecord`, read as data; the `build_module_src` they carry is never run).

`Gs` (`G_main` with components `mapping` = `G_mapping` and `synthesis` = `G_synthesis_stylegan2`,
architecture 'skip') is translated the way NVlabs' stylegan2-ada-pytorch `legacy.py`
(`convert_tf_generator`) does: static_kwargs -> config (absent ones take the TensorFlow defaults),
variables -> PyTorch `Generator` names (dense and conv weights transposed, `Conv0_up` flipped in
both spatial axes, `mod_bias + 1`, the noise inputs given to their layers), then to our names
through `convert.nvlabs.nvlabs_stylegan2_state`.  Every variable's shape is checked against the
config first.  Other network kinds (StyleGAN1 `G_style`, `G_synthesis_stylegan_revised`, the
'orig'/'resnet' architectures, conditional `label_size` > 0) are refused by name.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import numpy as np
import torch

from targetclip_core.errors import CheckpointError
from targetclip_core.formats.pickle_records import TFNetworkRecord
from targetclip_core.generators.convert.nvlabs import nvlabs_stylegan2_state
from targetclip_core.generators.limits import (
    MAX_CHANNELS,
    MAX_FILTER_TAPS,
    MAX_LATENT_DIM,
    MAX_RESOLUTION,
    checked_float,
    checked_int,
)
from targetclip_core.generators.stylegan2 import StyleGAN2Config

__all__ = ["is_tf_network_pickle", "tf_stylegan2_to_internal", "tf_stylegan2_config"]

# What other build functions are, so a refusal can say it (NVlabs stylegan / stylegan2 networks).
_OTHER_KINDS = {
    "G_style": "a StyleGAN (1) generator",
    "G_synthesis": "a StyleGAN (1) synthesis network",
    "G_synthesis_stylegan": "a StyleGAN (1) synthesis network",
    "G_synthesis_stylegan_revised": "the revised StyleGAN synthesis of StyleGAN2 configs B-D",
    "D_stylegan": "a discriminator",
    "D_stylegan2": "a discriminator",
    "D_basic": "a discriminator",
}

# static_kwargs read into the config, with the TensorFlow defaults (networks_stylegan2.py).
_DEFAULTS: dict[str, Any] = {
    "num_channels": 3, "resolution": 1024, "label_size": 0, "latent_size": 512, "dlatent_size": 512,
    "fmap_base": 16 << 10, "fmap_decay": 1.0, "fmap_min": 1, "fmap_max": 512,
    "mapping_layers": 8, "mapping_fmaps": 512, "mapping_lrmul": 0.01,
    "mapping_nonlinearity": "lrelu", "nonlinearity": "lrelu", "normalize_latents": True,
    "architecture": "skip", "resample_kernel": [1, 3, 3, 1], "dlatent_broadcast": None,
    "mapping_func": "G_mapping", "synthesis_func": "G_synthesis_stylegan2",
}
# static_kwargs that only steer TensorFlow's graph, training or sampling: no effect on the weights' meaning.
_RUNTIME_ONLY = {
    "truncation_psi", "truncation_cutoff", "truncation_psi_val", "truncation_cutoff_val", "dlatent_avg_beta",
    "style_mixing_prob", "is_training", "is_validation", "return_dlatents", "is_template_graph",
    "randomize_noise", "fused_modconv", "dtype", "use_noise",
}


def is_tf_network_pickle(data: Any) -> bool:
    """Whether a network pickle's content is the TensorFlow release's tuple of networks."""
    return isinstance(data, (tuple, list)) and any(isinstance(x, TFNetworkRecord) for x in data)


def tf_stylegan2_to_internal(data: Any, file) -> tuple[StyleGAN2Config, dict, bool]:
    """Translate a TensorFlow StyleGAN2 `(G, D, Gs)` pickle into our config and parameter names."""
    Gs = _pick_gs(data, file)
    mapping, synthesis = _components(Gs, file)
    cfg = tf_stylegan2_config(_static_kwargs(Gs, (mapping, synthesis), file), file)
    variables = _variables(Gs, mapping, synthesis, file)
    _check_shapes(variables, _expected_shapes(cfg), file)
    return cfg, nvlabs_stylegan2_state(_to_pytorch(variables, cfg), cfg, file), True


# --------------------------------------------------------------------------- the networks


def _pick_gs(data, file) -> TFNetworkRecord:
    nets = list(data)
    bad = [type(n).__name__ for n in nets if not isinstance(n, TFNetworkRecord)]
    if bad:
        raise CheckpointError(f"{file}: a TensorFlow network tuple that also holds {bad[0]}")
    if any(n.version is None for n in nets):
        raise CheckpointError(f"{file}: a TensorFlow network was pickled without its state")
    found = ", ".join(f"{n.name} ({n.build_func_name})" for n in nets) or "nothing"
    named = [n for n in nets if n.name == "Gs"]
    if named:
        return named[-1]
    generators = [n for n in nets if n.build_func_name.startswith("G_")]
    if not generators:
        raise CheckpointError(f"{file}: a TensorFlow network pickle without a generator Gs (found: {found})")
    return generators[-1]  # (G, D, Gs): the last generator is the averaged one


def _refuse_kind(net: TFNetworkRecord, what: str, file) -> CheckpointError:
    kind = _OTHER_KINDS.get(net.build_func_name, "an unknown network kind")
    return CheckpointError(
        f"{file}: TensorFlow network {net.name!r} ({what}) is {kind} ({net.build_func_name!r}); only StyleGAN2 "
        "generators (G_main with G_mapping and G_synthesis_stylegan2) are supported")


def _components(Gs: TFNetworkRecord, file) -> tuple[TFNetworkRecord, TFNetworkRecord]:
    if Gs.build_func_name != "G_main":
        raise _refuse_kind(Gs, "the generator", file)
    comps = Gs.components
    if set(comps) != {"mapping", "synthesis"}:
        raise CheckpointError(f"{file}: TensorFlow G_main {Gs.name!r} has components {sorted(comps)}, "
                              "expected mapping and synthesis")
    mapping, synthesis = comps["mapping"], comps["synthesis"]
    if mapping.build_func_name != "G_mapping":
        raise _refuse_kind(mapping, "the mapping network", file)
    if synthesis.build_func_name != "G_synthesis_stylegan2":
        raise _refuse_kind(synthesis, "the synthesis network", file)
    for comp in (mapping, synthesis):
        if comp.components:
            raise CheckpointError(f"{file}: TensorFlow network {comp.name!r} has unexpected components")
    return mapping, synthesis


def _static_kwargs(Gs: TFNetworkRecord, comps, file) -> dict[str, Any]:
    """Gs's static_kwargs and its components' (G_main passes its own to both), which must agree."""
    merged: dict[str, Any] = {}
    for net in (Gs, *comps):
        _check_known(net.static_kwargs, f"TensorFlow network {net.name!r}", file)
        for key, value in net.static_kwargs.items():
            if key in merged and not _same(merged[key], value):
                raise CheckpointError(f"{file}: TensorFlow networks disagree on {key!r}")
            merged[key] = value
    return merged


def _check_known(static_kwargs: dict, where: str, file) -> None:
    for key in static_kwargs:
        if key not in _DEFAULTS and key not in _RUNTIME_ONLY:
            raise CheckpointError(f"{file}: {where}: unknown static_kwargs entry {str(key)[:60]!r} "
                                  "(not a StyleGAN2 setting)")


def _same(a, b) -> bool:
    try:
        return bool(a == b) and type(a) is type(b)
    except Exception:  # numpy values with odd comparisons: treat as different
        return False


# --------------------------------------------------------------------------- config


def _choice(kw, key, allowed: tuple, file) -> None:
    if kw[key] not in allowed or isinstance(kw[key], (bool, np.bool_)) != isinstance(allowed[0], bool):
        raise CheckpointError(f"{file}: TensorFlow StyleGAN2 with {key}={str(kw[key])[:40]!r} is not supported "
                              f"(only {allowed[0]!r}, used by every published model)")


def tf_stylegan2_config(static_kwargs: dict, file) -> StyleGAN2Config:
    """Our config from a TensorFlow StyleGAN2 Gs's static_kwargs (absent entries: the TensorFlow defaults).

    Published files hold only num_channels, resolution and label_size (so fmap_base 16384, fmap_max 512).
    """
    _check_known(static_kwargs, "TensorFlow StyleGAN2 Gs", file)
    kw = {**_DEFAULTS, **{k: v for k, v in static_kwargs.items() if v is not None}}
    try:
        return _config(kw, file)
    except ValueError as e:
        raise CheckpointError(f"{file}: TensorFlow StyleGAN2 Gs: {e}") from None


def _config(kw: dict, file) -> StyleGAN2Config:
    _choice(kw, "architecture", ("skip",), file)
    for key in ("nonlinearity", "mapping_nonlinearity"):
        _choice(kw, key, ("lrelu",), file)
    _choice(kw, "normalize_latents", (True,), file)
    _choice(kw, "mapping_func", ("G_mapping",), file)
    _choice(kw, "synthesis_func", ("G_synthesis_stylegan2",), file)
    label_size = checked_int("label_size", kw["label_size"], 0, 1 << 16)
    if label_size:
        # LabelConcat: the embedded label joins z before one shared normalisation, which the
        # PyTorch mapping network (separate normalisations, gained embedding) does not compute.
        raise CheckpointError(f"{file}: a conditional TensorFlow StyleGAN2 (label_size {label_size}, "
                              "mapping/LabelConcat) is not supported")
    resolution = checked_int("resolution", kw["resolution"], 4, MAX_RESOLUTION)
    w_dim = checked_int("dlatent_size", kw["dlatent_size"], 1, MAX_LATENT_DIM)
    if checked_int("mapping_fmaps", kw["mapping_fmaps"], 1, MAX_LATENT_DIM) != w_dim:
        raise CheckpointError(f"{file}: TensorFlow StyleGAN2 with mapping_fmaps {kw['mapping_fmaps']} != "
                              f"dlatent_size {w_dim} is not supported")
    cfg = StyleGAN2Config(
        resolution=resolution, channels=_channels(kw, resolution), z_dim=kw["latent_size"], w_dim=w_dim, c_dim=0,
        n_mlp=kw["mapping_layers"], mapping_lr_mul=kw["mapping_lrmul"], conv_clamp=None,
        blur_kernel=_resample_kernel(kw["resample_kernel"]), img_channels=kw["num_channels"],
        source_format="nvlabs-tf-pkl",
    )
    broadcast = kw["dlatent_broadcast"]
    if broadcast is not None and checked_int("dlatent_broadcast", broadcast, 1, 1 << 10) != cfg.n_latent:
        raise CheckpointError(f"{file}: dlatent_broadcast {broadcast} does not match {cfg.n_latent} "
                              f"layers at {resolution}px")
    return cfg


def _channels(kw: dict, resolution: int) -> dict[int, int]:
    """nf(stage) of networks_stylegan2.py: clip(int(fmap_base / 2**(stage * fmap_decay)), fmap_min, fmap_max)."""
    base = checked_int("fmap_base", kw["fmap_base"], 1, 1 << 30)
    decay = checked_float("fmap_decay", kw["fmap_decay"], 0.0, 16.0)
    lo = checked_int("fmap_min", kw["fmap_min"], 1, MAX_CHANNELS)
    hi = checked_int("fmap_max", kw["fmap_max"], lo, MAX_CHANNELS)
    if resolution & (resolution - 1):
        raise ValueError(f"resolution must be a power of two >= 4, got {resolution}")
    # a block at resolution r = 2**k has nf(k - 1) feature maps (= min(2 * fmap_base // r, fmap_max))
    return {2**k: int(np.clip(int(base / (2.0 ** ((k - 1) * decay))), lo, hi))
            for k in range(2, int(math.log2(resolution)) + 1)}


def _resample_kernel(value) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not 1 <= len(value) <= MAX_FILTER_TAPS:
        raise ValueError(f"resample_kernel must be a list of 1 to {MAX_FILTER_TAPS} integers")
    return tuple(checked_int("a resample_kernel tap", v, 0, 1 << 16) for v in value)


# --------------------------------------------------------------------------- variables


def _variables(Gs, mapping, synthesis, file) -> "OrderedDict[str, np.ndarray]":
    """All variables under the names legacy.py's `_collect_tf_params` gives them."""
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    for prefix, net in (("", Gs), ("mapping/", mapping), ("synthesis/", synthesis)):
        for name, value in net.variables.items():
            out[prefix + name] = value
    return out


def _layer_shapes(base: str, cin: int, cout: int, w_dim: int, k: int, noise: bool) -> dict[str, tuple]:
    shapes = {f"{base}/weight": (k, k, cin, cout), f"{base}/mod_weight": (w_dim, cin),
              f"{base}/mod_bias": (cin,), f"{base}/bias": (cout,)}
    if noise:
        shapes[f"{base}/noise_strength"] = ()
    return shapes


def _expected_shapes(cfg: StyleGAN2Config) -> dict[str, tuple]:
    """Every variable of Gs, mapping and synthesis with the shape the config implies."""
    w, ch = cfg.w_dim, cfg.channels
    shapes: dict[str, tuple] = {"lod": (), "dlatent_avg": (w,)}
    dims = [cfg.z_dim] + [w] * cfg.n_mlp
    for i in range(cfg.n_mlp):
        shapes[f"mapping/Dense{i}/weight"] = (dims[i], dims[i + 1])
        shapes[f"mapping/Dense{i}/bias"] = (dims[i + 1],)
    for k in range(cfg.n_latent - 1):
        r = 2 ** ((k + 5) // 2)  # noise0 at 4x4, then two per resolution
        shapes[f"synthesis/noise{k}"] = (1, 1, r, r)
    shapes["synthesis/4x4/Const/const"] = (1, ch[4], 4, 4)
    for r in cfg.resolutions:
        b = f"synthesis/{r}x{r}"
        if r == 4:
            shapes.update(_layer_shapes(f"{b}/Conv", ch[4], ch[4], w, 3, True))
        else:
            shapes.update(_layer_shapes(f"{b}/Conv0_up", ch[r // 2], ch[r], w, 3, True))
            shapes.update(_layer_shapes(f"{b}/Conv1", ch[r], ch[r], w, 3, True))
        shapes.update(_layer_shapes(f"{b}/ToRGB", ch[r], cfg.img_channels, w, 1, False))
    return shapes


def _check_shapes(variables: dict, expected: dict, file) -> None:
    missing = [k for k in expected if k not in variables]
    unexpected = [k for k in variables if k not in expected]
    if missing or unexpected:
        raise CheckpointError(f"{file}: TensorFlow StyleGAN2 variables do not match its static_kwargs "
                              f"(missing: {missing[:5]}, unexpected: {unexpected[:5]})")
    for name, shape in expected.items():
        value = variables[name]
        if tuple(value.shape) != shape:
            raise CheckpointError(f"{file}: TensorFlow variable {name} has shape {list(value.shape)}, "
                                  f"expected {list(shape)}")
        if value.dtype.kind != "f" or not np.isfinite(value).all():
            raise CheckpointError(f"{file}: TensorFlow variable {name} holds non-finite or non-float values")


def _tensor(value: np.ndarray) -> torch.Tensor:
    # ascontiguousarray makes a 0-d value 1-d: keep the variable's own shape
    return torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32).reshape(value.shape))


def _to_pytorch(v: dict, cfg: StyleGAN2Config) -> "OrderedDict[str, torch.Tensor]":
    """legacy.py's convert_tf_generator: TensorFlow variables -> NVlabs PyTorch `Generator` names."""
    sd: OrderedDict[str, torch.Tensor] = OrderedDict()
    for i in range(cfg.n_mlp):
        sd[f"mapping.fc{i}.weight"] = _tensor(v[f"mapping/Dense{i}/weight"].T)
        sd[f"mapping.fc{i}.bias"] = _tensor(v[f"mapping/Dense{i}/bias"])
    sd["mapping.w_avg"] = _tensor(v["dlatent_avg"])
    sd["synthesis.b4.const"] = _tensor(v["synthesis/4x4/Const/const"][0])
    for r in cfg.resolutions:
        log = int(math.log2(r))
        layers = [("conv1", "Conv", 0)] if r == 4 else [("conv0", "Conv0_up", 2 * log - 5), ("conv1", "Conv1", 2 * log - 4)]
        for ours, tf_name, noise in layers:
            _modulated(sd, v, f"synthesis.b{r}.{ours}", f"synthesis/{r}x{r}/{tf_name}", flip=tf_name == "Conv0_up")
            sd[f"synthesis.b{r}.{ours}.noise_strength"] = _tensor(v[f"synthesis/{r}x{r}/{tf_name}/noise_strength"])
            sd[f"synthesis.b{r}.{ours}.noise_const"] = _tensor(v[f"synthesis/noise{noise}"][0, 0])
        _modulated(sd, v, f"synthesis.b{r}.torgb", f"synthesis/{r}x{r}/ToRGB", flip=False)
    return sd


def _modulated(sd: dict, v: dict, dst: str, src: str, flip: bool) -> None:
    weight = v[f"{src}/weight"]
    if flip:  # TensorFlow's transposed-conv upsampling sees the kernel flipped
        weight = weight[::-1, ::-1]
    sd[f"{dst}.weight"] = _tensor(weight.transpose(3, 2, 0, 1))
    sd[f"{dst}.bias"] = _tensor(v[f"{src}/bias"])
    sd[f"{dst}.affine.weight"] = _tensor(v[f"{src}/mod_weight"].T)
    sd[f"{dst}.affine.bias"] = _tensor(v[f"{src}/mod_bias"] + 1)
