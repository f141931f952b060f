"""Pieces every latent-optimisation method shares (TargetCLIP essences, SAT3D): frozen models made
ready for autograd, and the cheapest render size a CLIP loss can use."""

from __future__ import annotations

import torch

from targetclip_core.errors import TargetCLIPError


def make_autograd_ready(module) -> None:
    """Weights created under inference_mode cannot take part in autograd: copy them out once."""
    for sub in module.modules():
        for key, p in sub._parameters.items():
            if p is not None and p.is_inference():
                sub._parameters[key] = torch.nn.Parameter(p.clone(), requires_grad=p.requires_grad)
        for key, b in sub._buffers.items():
            if b is not None and b.is_inference():
                sub._buffers[key] = b.clone()


def smallest_render_for(G, encoder) -> int:
    """Smallest size G renders natively that is >= what the image encoder sees (CLIP: 224 px,
    not 1024), else G's full size: the cheap render the CLIP losses need."""
    need = getattr(encoder, "input_size", 224)
    return next((r for r in G.output_resolutions if r >= need), G.resolution)


def loss_resolution(G, C, out_resolution) -> int:
    """The render size of a CLIP loss: "auto" (or None) = smallest_render_for, else a size G renders natively."""
    if out_resolution == "auto" or out_resolution is None:
        return smallest_render_for(G, C)
    r = int(out_resolution)
    if r not in G.output_resolutions:
        raise TargetCLIPError(f"out_resolution must be one of {G.output_resolutions}, got {out_resolution}")
    return r
