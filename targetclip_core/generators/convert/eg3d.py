"""Reading EG3D generators: official network pickles (`ffhq512-128.pkl`, `afhqcats512-128.pkl`,
`shapenetcars128-64.pkl`, ...) through the safe pickle reader, and our own safetensors.

An official pickle holds `G_ema` as a persistent `TriPlaneGenerator` record: its init_kwargs
(z_dim, c_dim, w_dim, img_resolution, sr_num_fp16_res, mapping_kwargs, rendering_kwargs,
sr_kwargs, and the backbone's synthesis kwargs at top level) and its state (parameters of
backbone / superresolution / decoder, plus attributes such as `neural_rendering_resolution`
and `rendering_kwargs` that training may have changed after construction; those win).
Nothing in the file is executed: see formats.network_pickle.
"""

from __future__ import annotations

import numbers
import re
from collections import OrderedDict

import numpy as np

from targetclip_core.errors import CheckpointError
from targetclip_core.generators.convert.nvlabs import nvlabs_layer_key, nvlabs_stylegan2_config, nvlabs_stylegan2_state
from targetclip_core.generators.volume_rendering import PLANE_CHANNELS
from targetclip_core.generators.eg3d import RENDERING_DEFAULTS, EG3DConfig
from targetclip_core.generators.fir import check_fir_kernel
from targetclip_core.generators.fir import fir_kernel_2d

BACKBONE_RESOLUTION = 256  # TriPlaneGenerator builds its backbone at 256px whatever the output size


def eg3d_to_internal(net, file) -> tuple[EG3DConfig, dict, bool]:
    """Translate a `TriPlaneGenerator` record into (EG3DConfig, state dict in our names, has w_avg)."""
    kw = net.init_kwargs
    sd = net.state_dict()
    backbone_sd = OrderedDict((k[len("backbone."):], v) for k, v in sd.items() if k.startswith("backbone."))
    if not backbone_sd:
        raise CheckpointError(f"{file}: a TriPlaneGenerator without backbone weights")
    syn_kw = {k: v for k, v in kw.items() if k in ("channel_base", "channel_max", "num_fp16_res", "conv_clamp",
                                                     "architecture", "fused_modconv_default")}
    backbone = nvlabs_stylegan2_config(backbone_sd, kw, syn_kw, file, resolution=BACKBONE_RESOLUTION,
                                       img_channels=3 * PLANE_CHANNELS, what="EG3D backbone")
    rendering = dict(kw.get("rendering_kwargs") or {})
    state_rendering = net.state.get("rendering_kwargs")
    if isinstance(state_rendering, dict):
        rendering.update(state_rendering)
    if "superresolution_module" not in rendering:
        raise CheckpointError(f"{file}: rendering_kwargs has no superresolution_module")
    sr_fp16 = int(_plain_number(kw.get("sr_num_fp16_res", 0)) or 0)
    nrr = net.state.get("neural_rendering_resolution", 64)
    try:
        cfg = EG3DConfig(
            backbone=backbone,
            img_resolution=int(kw.get("img_resolution") or 0),
            superresolution_module=str(rendering["superresolution_module"]),
            sr_antialias=bool(rendering.get("sr_antialias", True)),
            # the reference gives the SR blocks conv_clamp=256 exactly when they may run in fp16
            sr_conv_clamp=256.0 if sr_fp16 > 0 else None,
            neural_rendering_resolution=int(_plain_number(nrr)),
            decoder_lr_mul=float(_plain_number(rendering.get("decoder_lr_mul", 1.0))),
            rendering=_rendering_options(rendering),
            source_format="eg3d-pkl",
        )
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{file}: unsupported EG3D configuration ({e})") from None
    state = OrderedDict(("backbone." + k, v) for k, v in nvlabs_stylegan2_state(backbone_sd, backbone, file).items())
    state.update(_head_state(sd, file))
    return cfg, state, "backbone.mapping.w_avg" in sd


def _head_state(sd, file) -> dict:
    """Super-resolution and decoder entries in our names (FIR buffers checked and dropped)."""
    expected_filter = fir_kernel_2d((1, 3, 3, 1))
    out = OrderedDict()
    for k, v in sd.items():
        if k.startswith("backbone."):
            continue
        if k.endswith("resample_filter"):
            check_fir_kernel(v, expected_filter, k, file)
            continue
        m = re.fullmatch(r"superresolution\.(block[01])\.(conv0|conv1|torgb)\.(.+)", k)
        out[nvlabs_layer_key(f"superresolution.{m.group(1)}.{m.group(2)}", m.group(3)) if m else k] = v
    return out


def _rendering_options(rendering: dict) -> dict:
    """The rendering_kwargs that change images, as plain JSON-able values."""
    out = {}
    for key in RENDERING_DEFAULTS:
        if key in rendering:
            value = rendering[key]
            out[key] = [float(_plain_number(v)) for v in value] if isinstance(value, (list, tuple)) else _plain_number(value)
    return out


def _plain_number(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Number):
        return value
    return int(value) if isinstance(value, numbers.Integral) else float(value)
