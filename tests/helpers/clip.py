"""The tiny open_clip model of the tests (a config in tests/data/clip_configs, random weights: no download)."""

from __future__ import annotations

import torch

from helpers.paths import DATA_DIR

CLIP_CONFIG_DIR = DATA_DIR / "clip_configs"
TINY_CLIP = "TargetCLIP-Tiny"  # embed_dim 32, 32px input, random weights: no download
TINY_CLIP_DIM = 32
TINY_CLIP_INPUT = 32


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
