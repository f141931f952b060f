"""NVlabs StyleGAN2-ADA-PyTorch networks (`ffhq.pkl`, `metfaces.pkl`, `afhq*.pkl`): a persistent
`Generator` record from the safe pickle reader, translated into our config and parameter names
(EG3D's backbone is the same network: see convert.eg3d)."""

from __future__ import annotations

import math
import re

from targetclip_core.errors import CheckpointError
from targetclip_core.formats.checkpoints import TranslatedState, require_keys
from targetclip_core.generators.fir import check_fir_kernel, fir_kernel_2d
from targetclip_core.generators.stylegan2 import StyleGAN2Config


def nvlabs_to_internal(net, file) -> tuple[StyleGAN2Config, dict, bool]:
    """Translate an NVlabs StyleGAN2-ADA `Generator` record into our config and parameter names."""
    if net.class_name != "Generator":
        raise CheckpointError(f"{file}: G_ema is a {net.class_name}, not a StyleGAN2 Generator")
    sd = net.state_dict()
    # StyleGAN3 calls its network Generator too (convert.stylegan3 reads those): source text of
    # StyleGAN3 around StyleGAN2 weights is a file that contradicts itself
    if "filtered_lrelu" in (net.module_src or ""):
        raise CheckpointError(f"{file}: the network's source is StyleGAN3's (filtered_lrelu) but its weights are "
                              "StyleGAN2's; the file is inconsistent")
    kw = net.init_kwargs
    if "synthesis_kwargs" in kw:  # StyleGAN2-ADA-PyTorch: Generator(..., synthesis_kwargs={...})
        syn_kw = dict(kw.get("synthesis_kwargs") or {})
    else:
        # NVlabs/stylegan3's own StyleGAN2 (its `stylegan2` config) takes the synthesis arguments flat,
        # and its SynthesisBlock clamps at 256 unless told otherwise (StyleGAN2-ADA's default is None)
        syn_kw = {k: v for k, v in kw.items() if k not in ("z_dim", "c_dim", "w_dim", "img_resolution",
                                                            "img_channels", "mapping_kwargs")}
        syn_kw.setdefault("conv_clamp", 256)
    cfg = nvlabs_stylegan2_config(sd, kw, syn_kw, file, resolution=int(kw.get("img_resolution") or 0),
                                  img_channels=int(kw.get("img_channels", 3)))
    return cfg, nvlabs_stylegan2_state(sd, cfg, file), "mapping.w_avg" in sd


def nvlabs_stylegan2_config(sd, kw, syn_kw, file, *, resolution, img_channels, what="NVlabs StyleGAN2") -> StyleGAN2Config:
    """Config of an NVlabs `Generator` (StyleGAN2-ADA, or EG3D's backbone) from its init_kwargs and shapes."""
    map_kw = dict(kw.get("mapping_kwargs") or {})
    if syn_kw.get("architecture", "skip") != "skip":
        raise CheckpointError(f"{file}: synthesis architecture {syn_kw['architecture']!r} is not supported (only 'skip', used by every official model)")
    require_keys(sd, ["mapping.fc0.weight", "synthesis.b4.const"], file, what)
    res_list = [2**k for k in range(2, int(math.log2(max(resolution, 4))) + 1)]
    channels = {}
    for r in res_list:
        key = "synthesis.b4.const" if r == 4 else f"synthesis.b{r}.conv0.weight"
        require_keys(sd, [key], file, f"{resolution}px {what}")
        channels[r] = sd[key].shape[0]
    return StyleGAN2Config(
        resolution=resolution, channels=channels, z_dim=int(kw.get("z_dim", 512)), w_dim=int(kw.get("w_dim", 512)),
        c_dim=int(kw.get("c_dim", 0)), n_mlp=int(map_kw.get("num_layers", 8)),
        mapping_lr_mul=float(map_kw.get("lr_multiplier", 0.01)), conv_clamp=syn_kw.get("conv_clamp"),
        img_channels=img_channels, source_format="nvlabs-pkl",
    )


def nvlabs_stylegan2_state(sd, cfg: StyleGAN2Config, file) -> dict:
    """NVlabs `Generator` parameter names -> ours (FIR buffers checked and dropped)."""
    expected_filter = fir_kernel_2d(cfg.blur_kernel)
    out = TranslatedState(file_key=nvlabs_file_key)
    for k, v in sd.items():
        if k.endswith("resample_filter"):
            check_fir_kernel(v, expected_filter, k, file)
            continue
        ours = k  # mapping.*, and anything unknown (reported as unexpected by the checked load)
        m = re.fullmatch(r"synthesis\.(b\d+)\.(const|conv0|conv1|torgb)(?:\.(.+))?", k)
        if m:
            blk, layer, rest = m.groups()
            ours = f"synthesis_blocks.{blk}.const" if layer == "const" else nvlabs_layer_key(f"synthesis_blocks.{blk}.{layer}", rest)
        out[ours] = v
        out.origin[ours] = k
    return out


def nvlabs_file_key(ours: str) -> str:
    """NVlabs' name of one of our StyleGAN2 keys (for keys a file lacks)."""
    if not ours.startswith("synthesis_blocks."):
        return ours
    return "synthesis." + ours[len("synthesis_blocks."):].replace(".conv.", ".", 1)


def nvlabs_layer_key(base: str, rest: str) -> str:
    """Our name of an NVlabs SynthesisLayer/ToRGBLayer entry: conv weight and affine live under `.conv`."""
    if rest in ("weight", "affine.weight", "affine.bias"):
        return f"{base}.conv.{rest}"
    return f"{base}.{rest}"  # bias, noise_strength, noise_const
