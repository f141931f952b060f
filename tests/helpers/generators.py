"""Small StyleGAN2 generators and rosinality-layout state dicts for the tests, and the relative error
the conformance tests compare with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from targetclip_core.generators.stylegan2 import StyleGAN2Config, StyleGAN2Generator
from targetclip_core.generators.stylegan3 import StyleGAN3Config, StyleGAN3Generator

# Our StyleSpace / layer names -> rosinality module names of a 32px Generator, in synthesis order.
OURS_TO_ROSINALITY_32 = {
    "b4.conv1": "conv1.conv",
    "b4.torgb": "to_rgb1.conv",
    "b8.conv0": "convs.0.conv",
    "b8.conv1": "convs.1.conv",
    "b8.torgb": "to_rgbs.0.conv",
    "b16.conv0": "convs.2.conv",
    "b16.conv1": "convs.3.conv",
    "b16.torgb": "to_rgbs.1.conv",
    "b32.conv0": "convs.4.conv",
    "b32.conv1": "convs.5.conv",
    "b32.torgb": "to_rgbs.2.conv",
}


def rel_err(ours, ref) -> float:
    """max |ours - ref| / max |ref| (the conformance measure of shared/fixtures/README.md)."""
    a = ours.detach().cpu().double().numpy() if torch.is_tensor(ours) else np.asarray(ours, dtype=np.float64)
    b = ref.detach().cpu().double().numpy() if torch.is_tensor(ref) else np.asarray(ref, dtype=np.float64)
    assert a.shape == b.shape, f"shape {a.shape} != reference shape {b.shape}"
    scale = np.abs(b).max()
    assert scale > 0, "reference is all zeros: the comparison would mean nothing"
    return float(np.abs(a - b).max() / scale)


SMALL_CHANNELS = {4: 32, 8: 32, 16: 16, 32: 16, 64: 8}


def small_config(resolution: int = 32, **kw) -> StyleGAN2Config:
    channels = kw.pop("channels", {r: c for r, c in SMALL_CHANNELS.items() if r <= resolution})
    kw.setdefault("z_dim", 32)
    kw.setdefault("w_dim", 32)
    kw.setdefault("n_mlp", 2)
    return StyleGAN2Config(resolution=resolution, channels=channels, **kw)


def small_generator(resolution: int = 32, seed: int = 0, noise_strength: float = 0.3, **kw) -> StyleGAN2Generator:
    """A tiny random generator with non-zero noise strengths and non-trivial biases, in eval mode."""
    torch.manual_seed(seed)
    G = StyleGAN2Generator(small_config(resolution, **kw)).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(noise_strength)
            elif name.endswith(".bias") and "affine" not in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return G


def small_stylegan3(variant: str = "T", resolution: int = 16, seed: int = 0, **kw) -> StyleGAN3Generator:
    """A tiny random StyleGAN3 (T or R) in eval mode: 4 layers, narrow channels, the filters NVlabs designs,
    and trained-looking buffers (magnitude_ema far from 1, a non-zero input affine)."""
    torch.manual_seed(seed)
    shape = dict(z_dim=32, w_dim=32, n_mlp=2, num_layers=4, num_critical=1, margin_size=4,
                 channel_base=64 if variant == "T" else 128, channel_max=8 if variant == "T" else 16)
    if variant == "R":
        shape.update(conv_kernel=1, use_radial_filters=True)
    G = StyleGAN3Generator(StyleGAN3Config(resolution=resolution, **{**shape, **kw})).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, b in G.named_buffers():
            if name.endswith("magnitude_ema"):
                b.fill_(0.5 + torch.rand([], generator=gen).item())
        G.input.affine.weight.copy_(0.3 * torch.randn(G.input.affine.weight.shape, generator=gen))
        for name, p in G.named_parameters():
            if name.endswith(".bias") and "affine" not in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return G


def random_wplus(G: StyleGAN2Generator, batch: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(batch, G.n_latent, G.w_dim, generator=torch.Generator().manual_seed(seed))


def random_rosinality_state(resolution: int = 16, channels=None, style_dim: int = 32, n_mlp: int = 2, seed: int = 0):
    """A random state dict in rosinality/stylegan2-pytorch Generator layout, small enough for bad-input tests.

    Names and shapes follow rosinality's model.py (channels shrunk: the loader reads them from the shapes).
    """
    channels = channels or {r: c for r, c in {4: 16, 8: 16, 16: 8, 32: 8}.items() if r <= resolution}
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, base=0.0, scale=1.0):
        return base + scale * torch.randn(*shape, generator=g)

    fir = torch.outer(torch.tensor([1.0, 3.0, 3.0, 1.0]), torch.tensor([1.0, 3.0, 3.0, 1.0])) / 16  # kernel * 4
    sd: dict[str, torch.Tensor] = {}
    for i in range(1, n_mlp + 1):
        sd[f"style.{i}.weight"] = rnd(style_dim, style_dim, scale=100.0)
        sd[f"style.{i}.bias"] = rnd(style_dim, scale=10.0)
    sd["input.input"] = rnd(1, channels[4], 4, 4)

    def conv(name, cin, cout, up):
        sd[f"{name}.conv.weight"] = rnd(1, cout, cin, 3, 3)
        sd[f"{name}.conv.modulation.weight"] = rnd(cin, style_dim)
        sd[f"{name}.conv.modulation.bias"] = rnd(cin, base=1.0, scale=0.1)
        if up:
            sd[f"{name}.conv.blur.kernel"] = fir.clone()
        sd[f"{name}.noise.weight"] = rnd(1, scale=0.1)
        sd[f"{name}.activate.bias"] = rnd(cout, scale=0.1)

    def to_rgb(name, cin, up):
        sd[f"{name}.bias"] = rnd(1, 3, 1, 1, scale=0.1)
        sd[f"{name}.conv.weight"] = rnd(1, 3, cin, 1, 1)
        sd[f"{name}.conv.modulation.weight"] = rnd(cin, style_dim)
        sd[f"{name}.conv.modulation.bias"] = rnd(cin, base=1.0, scale=0.1)
        if up:
            sd[f"{name}.upsample.kernel"] = fir.clone()

    conv("conv1", channels[4], channels[4], up=False)
    to_rgb("to_rgb1", channels[4], up=False)
    resolutions = [2**k for k in range(3, int(np.log2(resolution)) + 1)]
    for j, res in enumerate(resolutions):
        conv(f"convs.{2 * j}", channels[res // 2], channels[res], up=True)
        conv(f"convs.{2 * j + 1}", channels[res], channels[res], up=False)
        to_rgb(f"to_rgbs.{j}", channels[res], up=True)
    sd["noises.noise_0"] = rnd(1, 1, 4, 4)
    for j, res in enumerate(resolutions):
        sd[f"noises.noise_{2 * j + 1}"] = rnd(1, 1, res, res)
        sd[f"noises.noise_{2 * j + 2}"] = rnd(1, 1, res, res)
    return sd


def write_rosinality_checkpoint(path: Path, state_dict: dict, **extra) -> Path:
    """A rosinality/stylegan2-pytorch checkpoint file: torch.save({'g_ema': state_dict, ...})."""
    torch.save({"g_ema": state_dict, **extra}, path)
    return path


def tiny_config(resolution: int = 32) -> StyleGAN2Config:
    channels = {4: 64, 8: 64, 16: 32, 32: 32, 64: 16, 128: 16}
    return StyleGAN2Config(resolution=resolution, channels={r: c for r, c in channels.items() if r <= resolution},
                           w_dim=64, z_dim=64, n_mlp=2)


def tiny_generator(resolution: int = 32, seed: int = 0) -> StyleGAN2Generator:
    """A small random StyleGAN2 (eval, frozen); 32px -> 8 W+ entries of 64."""
    torch.manual_seed(seed)
    return StyleGAN2Generator(tiny_config(resolution)).eval().requires_grad_(False)


def truncated_sources(G, n: int, seed: int, truncation: float = 0.7) -> torch.Tensor:
    """W+ sources drawn independently of the optimiser's own sampler: [n, n_latent, w_dim]."""
    z = torch.randn(n, G.z_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        w = G.mapping(z, truncation=truncation)
    return w[:, None, :].repeat(1, G.n_latent, 1)


def fitting_case(G) -> tuple:
    """(photo, guess) for the W+ fitting tests: a render of a known latent, and that latent plus noise (an encoder's
    guess to refine)."""
    true = random_wplus(G, 1, seed=1) * 0.7
    with torch.no_grad():
        photo = G.synthesis(true)
    return photo, true + 0.4 * torch.randn(true.shape, generator=torch.Generator().manual_seed(2))
