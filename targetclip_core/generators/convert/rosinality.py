"""rosinality/stylegan2-pytorch checkpoints (`stylegan2-ffhq-config-f.pt`: {'g_ema', 'latent_avg'}), and the
e4e / pSp checkpoints that carry the same generator under 'decoder.', translated into our names.

Equalised-lr scales are applied at run time in both layouts, so weights copy over unchanged
(only squeezed to our shapes); the FIR buffers are checked, not loaded.
"""

from __future__ import annotations

import re
import warnings

import torch

from targetclip_core.errors import CheckpointError
from targetclip_core.formats.checkpoints import TranslatedState, few_keys, require_keys
from targetclip_core.generators.fir import check_fir_kernel, fir_kernel_2d
from targetclip_core.generators.stylegan2 import StyleGAN2Config


def stylegan2_from_torch_checkpoint(ckpt, file) -> tuple[StyleGAN2Config, dict, bool]:
    """(config, state in our names, has w_avg) of the StyleGAN2 inside a torch.load-ed checkpoint:
    rosinality's {'g_ema': ...}, an e4e / pSp {'state_dict': {'decoder.*'}}, or a bare state dict."""
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{file}: expected a dict of tensors, found {type(ckpt).__name__}")
    latent_avg = ckpt.get("latent_avg")
    if "g_ema" in ckpt:
        sd = ckpt["g_ema"]
    elif "state_dict" in ckpt and any(isinstance(k, str) and k.startswith("decoder.") for k in ckpt["state_dict"]):
        # e4e / pSp: the generator lives under the 'decoder.' prefix
        sd = {k[len("decoder.") :]: v for k, v in ckpt["state_dict"].items() if isinstance(k, str) and k.startswith("decoder.")}
    elif any(isinstance(k, str) and k.startswith("synthesis_blocks.") for k in ckpt):
        raise CheckpointError(f"{file}: this looks like a raw state dict of our own model; save it with save_generator")
    elif any(isinstance(k, str) and k.startswith(("style.", "conv1.", "input.")) for k in ckpt):
        sd = ckpt
    else:
        keys = ", ".join(list(ckpt)[:6])
        raise CheckpointError(f"{file}: no StyleGAN2 generator found (top-level keys: {keys})")
    if not isinstance(sd, dict):
        raise CheckpointError(f"{file}: 'g_ema' is a {type(sd).__name__}, expected a state dict")
    if latent_avg is not None and torch.is_tensor(latent_avg) and latent_avg.dim() == 2:
        latent_avg = latent_avg[0]  # e4e stores the average repeated over the W+ entries
    return rosinality_to_internal(sd, latent_avg, file)


def rosinality_to_internal(sd: dict, latent_avg, file) -> tuple[StyleGAN2Config, dict, bool]:
    """Translate rosinality/stylegan2-pytorch parameter names into ours (shapes squeezed to ours)."""
    not_tensors = [str(k) for k, v in sd.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if not_tensors:
        raise CheckpointError(f"{file}: the generator state dict holds non-tensor entries: {few_keys(not_tensors)}")
    require_keys(sd, ["style.1.weight", "input.input", "conv1.conv.weight", "to_rgb1.conv.weight"], file, "rosinality StyleGAN2")
    n_mlp = len([k for k in sd if re.fullmatch(r"style\.\d+\.weight", k)])
    n_rgbs = len([k for k in sd if re.fullmatch(r"to_rgbs\.\d+\.conv\.weight", k)])
    resolution = 2 ** (n_rgbs + 2)
    for key, dims in [("style.1.weight", 2), ("input.input", 4)] + [(f"convs.{2 * j}.conv.weight", 5) for j in range(n_rgbs)]:
        require_keys(sd, [key], file, "rosinality StyleGAN2")
        if sd[key].dim() != dims:
            raise CheckpointError(f"{file}: {key} has shape {list(sd[key].shape)}; a rosinality StyleGAN2 has {dims} dimensions there")
    w_dim = sd["style.1.weight"].shape[0]
    channels = {4: sd["input.input"].shape[1]}
    for j in range(n_rgbs):
        channels[2 ** (j + 3)] = sd[f"convs.{2 * j}.conv.weight"].shape[1]
    cfg = StyleGAN2Config(
        resolution=resolution, channels=channels, z_dim=sd["style.1.weight"].shape[1], w_dim=w_dim,
        n_mlp=n_mlp, source_format="rosinality",
    )
    kernel = fir_kernel_2d(cfg.blur_kernel)
    out = TranslatedState()
    used = set()

    def take(src, dst, reshape=None):
        out.origin[dst] = src  # errors about `dst` name the key the user's file has
        if src not in sd:
            return
        t = sd[src]
        try:
            out[dst] = t.reshape(reshape) if reshape is not None else t
        except RuntimeError:
            raise CheckpointError(f"{file}: shape mismatch for {src}: file has {list(t.shape)}, "
                                  f"which does not fit {list(reshape)}") from None
        used.add(src)

    for i in range(n_mlp):
        take(f"style.{i + 1}.weight", f"mapping.fc{i}.weight")
        take(f"style.{i + 1}.bias", f"mapping.fc{i}.bias")
    take("input.input", "synthesis_blocks.b4.const", sd["input.input"].shape[1:])

    def layer(src, dst, noise_idx=None, rgb=False):
        w = sd.get(f"{src}.conv.weight")
        take(f"{src}.conv.weight", f"{dst}.conv.weight", None if w is None else w.shape[1:])
        take(f"{src}.conv.modulation.weight", f"{dst}.conv.affine.weight")
        take(f"{src}.conv.modulation.bias", f"{dst}.conv.affine.bias")
        if rgb:
            take(f"{src}.bias", f"{dst}.bias", [-1])
            _check_fir(sd, f"{src}.upsample.kernel", kernel * 4, used, file)
        else:
            take(f"{src}.noise.weight", f"{dst}.noise_strength", [])
            take(f"{src}.activate.bias", f"{dst}.bias")
            n = sd.get(f"noises.noise_{noise_idx}")
            take(f"noises.noise_{noise_idx}", f"{dst}.noise_const", None if n is None else n.shape[-2:])
            _check_fir(sd, f"{src}.conv.blur.kernel", kernel * 4, used, file)

    layer("conv1", "synthesis_blocks.b4.conv1", noise_idx=0)
    layer("to_rgb1", "synthesis_blocks.b4.torgb", rgb=True)
    for j in range(n_rgbs):
        blk = f"synthesis_blocks.b{2 ** (j + 3)}"
        layer(f"convs.{2 * j}", f"{blk}.conv0", noise_idx=2 * j + 1)
        layer(f"convs.{2 * j + 1}", f"{blk}.conv1", noise_idx=2 * j + 2)
        layer(f"to_rgbs.{j}", f"{blk}.torgb", rgb=True)
    _fill_missing_noise(out, cfg, file)
    unexpected = [k for k in sd if k not in used]
    if unexpected:
        raise CheckpointError(f"{file}: unexpected keys for a {resolution}px rosinality StyleGAN2: {few_keys(unexpected)}")
    has_w_avg = latent_avg is not None
    # without a trained average, truncation falls back to a sampled mean (see MappingNetwork)
    out["mapping.w_avg"] = torch.as_tensor(latent_avg).reshape(-1) if has_w_avg else torch.zeros(w_dim)
    return cfg, out, has_w_avg


def _check_fir(sd, key, expected, used, file):
    if key in sd:
        used.add(key)
        check_fir_kernel(sd[key], expected, key, file)


def _fill_missing_noise(out, cfg, file):
    """Older rosinality checkpoints carry no noise buffers: use seeded ones, and say so."""
    missing = []
    gen = torch.Generator().manual_seed(0)
    for res in cfg.resolutions:
        for ln in (["conv1"] if res == 4 else ["conv0", "conv1"]):
            key = f"synthesis_blocks.b{res}.{ln}.noise_const"
            if key not in out:
                out[key] = torch.randn(res, res, generator=gen)
                missing.append(key)
    if missing:
        warnings.warn(f"{file}: no stored noise buffers; noise_mode='const' uses seeded noise instead", stacklevel=3)
