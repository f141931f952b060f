"""Edit the face through a clip: track it (landmarks smoothed over time, so the crop does not jitter), align
every frame the FFHQ way, invert with e4e (optionally refined), smooth the latents over time, apply one edit
(an essence, a SAT3D transfer or any W+ edit) and paste the edited face back into each frame with a feathered
mask that follows the face. Frames where no face is found pass through unchanged and are counted.

The frames stay uint8 [T, H, W, 3] in and out (the clip's own pixels outside the mask, bit for bit);
reading and writing files, frame rate and audio are `io.video`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from targetclip_core.errors import TargetCLIPError
from targetclip_core.faces.alignment import DEFAULT_FEATHER, ffhq_quad, paste_back
from targetclip_core.faces.tracking import (
    DEFAULT_SIGMA,
    align_frames,
    crop_jitter,
    smooth_landmarks,
    smooth_series,
    track_landmarks,
)
from targetclip_core.io.images import to_uint8

LANDMARK_SIGMA = DEFAULT_SIGMA  # frames; see faces.tracking.smooth_landmarks
LATENT_SIGMA = 1.0  # frames: e4e's per-frame codes flicker less, motion is kept

Edit = Callable[[torch.Tensor], torch.Tensor]  # W+ [B, n_latent, w_dim] -> aligned images [B, 3, R, R] in [-1, 1]
OnFrame = Callable[[str, int, int], None]  # (stage, done, total); may raise to cancel


@dataclass
class EditedClip:
    frames: torch.Tensor  # uint8 [T, H, W, 3]
    faces: list[bool]  # a face was found (and edited) in frame t
    jitter_raw: float = float("nan")  # faces.tracking.crop_jitter of the crops from the raw landmarks
    jitter: float = float("nan")  # ... and from the smoothed landmarks that were used
    latents: torch.Tensor | None = None  # [F, n_latent, w_dim] of the F frames with a face
    info: dict = field(default_factory=dict)

    @property
    def frames_without_face(self) -> int:
        return sum(1 for f in self.faces if not f)

    def report(self) -> str:
        n = len(self.faces)
        return (f"{n - self.frames_without_face} of {n} frames edited, {self.frames_without_face} without a face passed "
                f"through; crop jitter {self.jitter:.3g} px (raw landmarks: {self.jitter_raw:.3g})")


def _runs(present: list[bool]) -> list[tuple[int, int]]:
    """[start, end) of each run of consecutive frames with a face."""
    runs, start = [], None
    for i, p in enumerate(present + [False]):
        if p and start is None:
            start = i
        elif not p and start is not None:
            runs.append((start, i))
            start = None
    return runs


def edit_clip(frames: torch.Tensor, inverter, edit: Edit, *, resolution: int, landmark_sigma: float = LANDMARK_SIGMA,
              latent_sigma: float = LATENT_SIGMA, feather: float = DEFAULT_FEATHER, refine: Callable | None = None,
              detector: str = "mtcnn", batch_size: int = 4, device=None, on_frame: OnFrame | None = None) -> EditedClip:
    """Edit every frame's face of `frames` (uint8 [T, H, W, 3]).

    inverter: encoders.inversion.Inverter (images -> W+); edit: W+ -> the edited aligned faces at `resolution`;
    refine: optional `(aligned images, wp) -> wp` run on each batch (e.g. a few refine_inversion steps).
    on_frame(stage, done, total) reports "track", "invert" and "edit" progress and may raise to cancel.
    """
    if not torch.is_tensor(frames) or frames.dim() != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
        raise TargetCLIPError(f"frames must be a uint8 [T, H, W, 3] tensor, got {getattr(frames, 'shape', type(frames))}")
    total = frames.shape[0]
    if total == 0:
        raise TargetCLIPError("the clip has no frames")
    report = (lambda stage: (lambda done, n: on_frame(stage, done, n))) if on_frame is not None else (lambda stage: None)
    raw = track_landmarks(frames, detector=detector, device=device, on_frame=report("track"))
    smoothed = smooth_landmarks(raw, sigma=landmark_sigma) if landmark_sigma > 0 else raw
    aligned = align_frames(frames, smoothed, output_size=resolution)
    present = [a is not None for a in aligned]
    # the crops' corners straight from the landmarks (the FFHQ quad): no second warp of every frame
    jitter_raw = crop_jitter([None if lm is None else ffhq_quad(lm)[0] for lm in raw])
    jitter = crop_jitter([None if lm is None else ffhq_quad(lm)[0] for lm in smoothed])
    out = frames.clone()
    idx = [i for i, p in enumerate(present) if p]
    if not idx:
        return EditedClip(out, present, jitter_raw, jitter, None, {"runs": []})

    latents = []
    for start in range(0, len(idx), batch_size):
        chunk = idx[start : start + batch_size]
        images = torch.cat([aligned[i].image for i in chunk]).to(inverter.device)
        wp = inverter.invert(images)
        if refine is not None:
            wp = refine(images, wp)
        latents.append(wp.detach())
        if on_frame is not None:
            on_frame("invert", min(start + batch_size, len(idx)), len(idx))
    latents = torch.cat(latents)
    position = {frame: k for k, frame in enumerate(idx)}
    for a, b in _runs(present):  # smoothing never crosses a frame without a face
        ks = [position[i] for i in range(a, b)]
        run = latents[ks[0] : ks[-1] + 1]
        latents[ks[0] : ks[-1] + 1] = torch.from_numpy(smooth_series(run.cpu().numpy(), latent_sigma)).to(run)

    for start in range(0, len(idx), batch_size):
        chunk = idx[start : start + batch_size]
        with torch.no_grad():
            edited = edit(latents[[position[i] for i in chunk]])
        for frame, face in zip(chunk, edited):
            photo = out[frame].permute(2, 0, 1)[None].float() / 127.5 - 1
            pasted = paste_back(photo, face[None], aligned[frame], feather=feather).image[0]
            out[frame] = torch.from_numpy(to_uint8(pasted[None])[0])  # outside the mask: the frame's own values
        if on_frame is not None:
            on_frame("edit", min(start + batch_size, len(idx)), len(idx))
    return EditedClip(out, present, jitter_raw, jitter, latents, {"runs": _runs(present)})


def essence_edit(G, essence, strength: float = 1.0, layers=None) -> Edit:
    """The W+ edit of an essence, rendered: an `edit` for edit_clip."""
    from targetclip_core.methods.targetclip.essence import edit_latents

    essence.check_compatible(G)
    vector = essence.to(G.device)
    return lambda wp: G.synthesis(edit_latents(wp.to(G.device), vector, strength, layers), noise_mode="const")


def sat3d_edit(G, reference: torch.Tensor, matrix, attributes, delta=1.0) -> Edit:
    """SAT3D: the reference face's `attributes` moved onto every frame's face (StyleSpace), rendered."""
    from targetclip_core.methods.sat3d import transfer_styles

    ref = reference.to(G.device)
    return lambda wp: G.synthesis_from_styles(transfer_styles(G, wp.to(G.device), ref, matrix, attributes, delta))
