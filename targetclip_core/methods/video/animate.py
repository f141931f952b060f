"""Clips made from latents: an edit's strength ramped 0 -> s -> 0 (an essence, or a SAT3D delta),
interpolation between essences, and EG3D turntables (an orbit, optionally with the edit ramping while the
camera turns). Each returns frames [T, 3, H, W] in [-1, 1]; `io.video.write_clip` makes the file.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from targetclip_core.errors import TargetCLIPError

OnFrame = Callable[[int, int, torch.Tensor], None]  # (done, total, frames of this batch); may raise to cancel


def ramp(frames: int, peak: float = 1.0, shape: str = "cosine") -> list[float]:
    """Strengths 0 -> peak -> 0 over `frames` frames: "cosine" (eases in and out) or "linear" (a triangle).
    The last frame is 0 again, so the clip loops."""
    if frames < 2:
        raise TargetCLIPError(f"a ramp needs at least 2 frames, got {frames}")
    ts = [k / (frames - 1) for k in range(frames)]
    if shape == "cosine":
        return [peak * 0.5 * (1 - math.cos(2 * math.pi * t)) for t in ts]
    if shape == "linear":
        return [peak * (1 - abs(2 * t - 1)) for t in ts]
    raise TargetCLIPError(f"ramp shape must be 'cosine' or 'linear', got {shape!r}")


def _render(codes: list, render: Callable, batch_size: int, on_frame: OnFrame | None) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for start in range(0, len(codes), batch_size):
            images = render(codes[start : start + batch_size])
            out.append(images)
            if on_frame is not None:
                on_frame(min(start + batch_size, len(codes)), len(codes), images)
    return torch.cat(out)


def essence_ramp(G, wp: torch.Tensor, essence, strengths: list[float], layers=None, batch_size: int = 4,
                 on_frame: OnFrame | None = None) -> torch.Tensor:
    """One latent [1, n_latent, w_dim] edited with `essence` at each strength: frames [T, 3, H, W]."""
    return _edited_frames(G, wp, [(essence, s) for s in strengths], layers, batch_size, on_frame)


def essence_interpolation(G, wp: torch.Tensor, essences: list, frames_per_step: int, strength: float = 1.0,
                          layers=None, batch_size: int = 4, on_frame: OnFrame | None = None) -> torch.Tensor:
    """One latent moving from essence to essence (linear in the essence vectors), `frames_per_step` frames each."""
    from targetclip_core.methods.targetclip.essence import mix_essences

    if len(essences) < 2 or frames_per_step < 1:
        raise TargetCLIPError("interpolation needs two essences or more and at least one frame per step")
    mixes = []
    for a, b in zip(essences, essences[1:]):
        mixes += [mix_essences([a, b], [1 - k / frames_per_step, k / frames_per_step]) for k in range(frames_per_step)]
    mixes.append(essences[-1])
    return _edited_frames(G, wp, [(m, strength) for m in mixes], layers, batch_size, on_frame)


def _edited_frames(G, wp, pairs: list, layers, batch_size: int, on_frame) -> torch.Tensor:
    """Frame t: the latent edited with essence pairs[t][0] at strength pairs[t][1]."""
    from targetclip_core.methods.targetclip.essence import edit_latents

    for e in {id(e): e for e, _ in pairs}.values():
        e.check_compatible(G)
    wp = G.to_wplus(wp.to(G.device))[:1]

    def render(batch):
        return G.synthesis(torch.cat([edit_latents(wp, e.to(G.device), s, layers) for e, s in batch]))

    return _render(pairs, render, batch_size, on_frame)


def sat3d_ramp(G, source: torch.Tensor, reference: torch.Tensor, matrix, attributes, deltas: list[float],
               batch_size: int = 4, on_frame: OnFrame | None = None) -> torch.Tensor:
    """A SAT3D transfer with its delta ramped (e.g. ramp(T, 1.5)): frames [T, 3, H, W] (EG3D: frontal view)."""
    from targetclip_core.methods.sat3d import transfer_styles

    src, ref = G.to_wplus(source.to(G.device))[:1], G.to_wplus(reference.to(G.device))[:1]

    def render(ds):
        styles = [transfer_styles(G, src, ref, matrix, attributes, d) for d in ds]
        return G.synthesis_from_styles({k: torch.cat([s[k] for s in styles]) for k in styles[0]})

    return _render(list(deltas), render, batch_size, on_frame)


def turntable(G, wp: torch.Tensor, frames: int, *, yaw_range: float = 30.0, pitch_range: float = 10.0,
              essence=None, strengths: list[float] | None = None, layers=None, on_frame: OnFrame | None = None
              ) -> torch.Tensor:
    """An EG3D orbit of one latent (EG3D's gen_videos ellipse, loopable); with `essence`, its strength follows
    `strengths` (one per frame, e.g. ramp(frames, 1.0)) while the camera turns. Frames [T, 3, H, W]."""
    from targetclip_core.generators.cameras import orbit
    from targetclip_core.methods.targetclip.essence import edit_latents

    if not G.is_3d:
        raise TargetCLIPError(f"a turntable needs a 3D-aware generator (EG3D); this is a {G.describe()}")
    yaws, pitches = orbit(frames, yaw_range, pitch_range)
    cameras = G.camera(yaw=yaws, pitch=pitches)
    wp = G.to_wplus(wp.to(G.device))[:1]
    if essence is not None:
        essence.check_compatible(G)
        strengths = list(strengths) if strengths is not None else [float(essence.strength or 1.0)] * frames
        if len(strengths) != frames:
            raise TargetCLIPError(f"{len(strengths)} strengths for {frames} frames")
        e = essence.to(G.device)
        codes = [edit_latents(wp, e, s, layers) for s in strengths]
    else:
        codes = [wp] * frames
    out = []
    with torch.no_grad():
        for k in range(frames):
            out.append(G.render(codes[k], cameras[k : k + 1])["image"])
            if on_frame is not None:
                on_frame(k + 1, frames, out[-1])
    return torch.cat(out)
