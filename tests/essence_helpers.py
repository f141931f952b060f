"""Helpers shared by the essence-transfer tests (test_clip, test_essence, test_optimize,
test_cli_essence): the tiny CLIP, tiny generators, and the paper's losses written out by
hand with plain loops, so expectations never come from the code under test.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch

from targetclip_core.generators.stylegan2 import StyleGAN2Config, StyleGAN2Generator

TESTS_DIR = Path(__file__).resolve().parent
CLIP_CONFIG_DIR = TESTS_DIR / "data" / "clip_configs"
TINY_CLIP = "TargetCLIP-Tiny"  # embed_dim 32, 32px input, random weights: no download
TINY_CLIP_DIM = 32
TINY_CLIP_INPUT = 32
SHARED_ENV = "TARGETCLIP_SHARED"


def shared_root() -> Path:
    override = os.environ.get(SHARED_ENV, "").strip()
    return Path(override).expanduser() if override else TESTS_DIR.parents[1] / "shared"


def require_shared(*parts: str) -> Path:
    path = shared_root().joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared test data not found: {path} is missing (set {SHARED_ENV} to the shared folder)")
    return path


def register_tiny_clip() -> None:
    import open_clip

    if TINY_CLIP not in open_clip.list_models():
        open_clip.add_model_config(CLIP_CONFIG_DIR)


def tiny_clip(seed: int = 1):
    """The tiny open_clip model with random weights drawn under `seed`, on CPU."""
    from targetclip_core.encoders.clip import load_clip

    register_tiny_clip()
    torch.manual_seed(seed)
    return load_clip(TINY_CLIP, None, device="cpu")


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


# --------------------------------------------------------------------------- losses by hand


def dot(a, b) -> float:
    return sum(float(x) * float(y) for x, y in zip(a.tolist(), b.tolist()))


def unit(v):
    n = math.sqrt(dot(v, v))
    return [float(x) / n for x in v.tolist()] if n > 0 else [0.0] * len(v)


def hand_similarity(t, f) -> float:
    """mean_i (1 - <t, f_i>); t [D], f [N, D] (already normalised)."""
    return sum(1.0 - dot(t, f[i]) for i in range(f.shape[0])) / f.shape[0]


def hand_consistency(f, e) -> float:
    """mean over ordered pairs i != j of 1 - cos(f_i - e_i, f_j - e_j)."""
    n = f.shape[0]
    d = [unit(f[i] - e[i]) for i in range(n)]
    total = 0.0
    for i in range(n):
        for j in range(n):
            if i != j:
                total += 1.0 - sum(x * y for x, y in zip(d[i], d[j]))
    return total / (n * n - n)


def hand_l2(b) -> float:
    return math.sqrt(sum(float(x) ** 2 for x in b.flatten().tolist()))


def hand_total(t, f, e, b, lambdas=(1.0, 0.5, 0.003)) -> dict:
    sim, cons, l2 = hand_similarity(t, f), hand_consistency(f, e), hand_l2(b)
    return {"similarity": sim, "consistency": cons, "l2": l2,
            "total": lambdas[0] * sim + lambdas[1] * cons + lambdas[2] * l2}


def normalised(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)
