"""Tiny EG3D generators and official-layout EG3D pickles for the tests."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import torch

from helpers.nvlabs import build_network, fake_nvlabs_modules
from targetclip_core.generators.eg3d import EG3DConfig, EG3DGenerator
from targetclip_core.generators.stylegan2 import StyleGAN2Config

TINY_RENDERING = {
    "depth_resolution": 6, "depth_resolution_importance": 6, "ray_start": 2.25, "ray_end": 3.3, "box_warp": 1.0,
    "avg_camera_radius": 2.7, "avg_camera_pivot": [0.0, 0.0, 0.2], "superresolution_noise_mode": "none", "c_scale": 1.0,
}


def tiny_eg3d_config(**rendering) -> EG3DConfig:
    """A 16px backbone (96-channel planes), 8 rays a side, Hybrid2X up to 128px: fast on CPU."""
    backbone = StyleGAN2Config(resolution=16, channels={4: 16, 8: 16, 16: 8}, z_dim=16, w_dim=16, c_dim=25, n_mlp=2,
                               img_channels=96, source_format="test")
    return EG3DConfig(backbone=backbone, img_resolution=128, superresolution_module="SuperresolutionHybrid2X",
                      neural_rendering_resolution=8, rendering={**TINY_RENDERING, **rendering}, source_format="test")


def tiny_eg3d(seed: int = 0, **rendering) -> EG3DGenerator:
    torch.manual_seed(seed)
    G = EG3DGenerator(tiny_eg3d_config(**rendering))
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(0.1)
        G.backbone.mapping.w_avg.normal_(0, 0.1)
    G.backbone.mapping.has_w_avg = True
    return G.eval().requires_grad_(False)


def write_eg3d_pickle(path: Path, state: dict, init_kwargs: dict, neural_rendering_resolution: int) -> Path:
    """An EG3D network pickle as NVlabs writes it: dict(G, D, G_ema, ...), G_ema a persistent
    TriPlaneGenerator carrying init_kwargs, its parameters, `rendering_kwargs` and
    `neural_rendering_resolution` (nested kwargs as dnnlib.EasyDict)."""
    with fake_nvlabs_modules() as fake:
        def easy(d):
            return fake.EasyDict({k: easy(v) if isinstance(v, dict) else v for k, v in d.items()})

        kw = easy(init_kwargs)
        G = build_network(fake, state, dict(kw), "TriPlaneGenerator", "# training/triplane.py (never run)\n",
                          root_attrs={"rendering_kwargs": kw["rendering_kwargs"],
                                      "neural_rendering_resolution": neural_rendering_resolution})
        with open(path, "wb") as f:
            pickle.dump(dict(G=G, D=None, G_ema=G, augment_pipe=None, training_set_kwargs=None), f, protocol=4)
    assert "torch_utils" not in sys.modules
    return path
