"""Pieces every latent-optimisation method shares (TargetCLIP essences, SAT3D): frozen models made
ready for autograd, the cheapest render size a CLIP loss can use, and the checks that keep a run
from training on nonsense settings or returning a diverged (NaN) result as if it were one."""

from __future__ import annotations

import math

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


def check_run_settings(*, lr: float, steps: int, **positive_counts: int) -> None:
    """Refuse settings that cannot give a result: a learning rate that is not a finite number >= 0
    (a NaN learning rate trains a NaN result; 0 is allowed, it keeps the start), a negative step
    count, counts below 1."""
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr < 0:
        raise TargetCLIPError(f"the learning rate must be a finite number >= 0, got {lr!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise TargetCLIPError(f"steps must be a non-negative integer, got {steps!r}")
    for name, value in positive_counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise TargetCLIPError(f"{name} must be a positive integer, got {value!r}")


def check_converged(losses, what: str) -> None:
    """Raise a TargetCLIPError if a run's loss (a number or a tensor of them) is NaN or infinite:
    the run diverged, and what it learned is not a result."""
    finite = bool(torch.isfinite(losses).all()) if torch.is_tensor(losses) else math.isfinite(losses)
    if not finite:
        raise TargetCLIPError(f"{what} diverged: the loss became NaN or infinite. Lower the learning rate "
                              "(or check the inputs for NaN) and run again")
