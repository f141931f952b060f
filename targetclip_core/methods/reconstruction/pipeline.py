"""The photo path after the encoder, as the CLI and the nodes run it: e4e's latent, then optionally W+
refinement, then optionally pivotal tuning, each stage measured against the photo (pixel MSE and PSNR,
LPIPS, ArcFace identity) and laid out as a sheet photo | e4e | refined | PTI."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from targetclip_core.methods.reconstruction.losses import LPIPS_SIZE, ReconstructionTerms, to_size
from targetclip_core.methods.reconstruction.pivotal import Locality, pivotal_tuning
from targetclip_core.methods.reconstruction.refine import FitStep, fit_target, refine_inversion, renderer


@dataclass
class Stage:
    name: str  # "e4e" (or the start's name), "refined", "PTI"
    wplus: torch.Tensor  # [B, n_latent, w_dim]
    generator: torch.nn.Module  # the network this stage renders with (PTI: the tuned copy)
    images: torch.Tensor  # [B, 3, R, R] its reconstruction of the photo
    metrics: dict = field(default_factory=dict)  # name -> [B] (mse, psnr, lpips, identity)


@dataclass
class Reconstruction:
    photo: torch.Tensor  # [B, 3, R, R] the aligned photo at the generator's size
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def sheet(self) -> torch.Tensor:
        """[B, 3, R, R * (1 + stages)]: the photo, then each stage's reconstruction, side by side."""
        return torch.cat([self.photo.to(self.final.images.device)] + [s.images for s in self.stages], dim=-1)

    def table(self) -> list[dict]:
        """One row per photo and stage: {"photo": i, "stage": name, metric: value}."""
        rows = []
        for i in range(self.photo.shape[0]):
            for s in self.stages:
                rows.append({"photo": i, "stage": s.name, **{k: float(v[i]) for k, v in s.metrics.items()}})
        return rows


@torch.no_grad()
def reconstruction_metrics(images: torch.Tensor, photo: torch.Tensor, *, lpips=None, arcface=None) -> dict:
    """Per image [B]: pixel MSE (images in [-1, 1]), PSNR in dB (on [0, 1]), LPIPS at 256 px, ArcFace cosine."""
    photo = photo.to(images.device).clamp(-1, 1)  # what the image files show
    mse = (images.clamp(-1, 1) - photo).square().mean(dim=(1, 2, 3))
    out = {"mse": mse, "psnr": 10 * torch.log10(4.0 / mse.clamp_min(1e-12))}  # peak-to-peak 2 in [-1, 1]
    if lpips is not None:
        out["lpips"] = lpips(to_size(images, LPIPS_SIZE), to_size(photo, LPIPS_SIZE)).reshape(-1)
    if arcface is not None:
        out["identity"] = (arcface.embed(images) * arcface.embed(photo)).sum(dim=1)
    return out


def reconstruct_photo(G, photo: torch.Tensor, wplus: torch.Tensor, *, refine_steps: int = 0, refine_lr: float = 0.01,
                      refine_terms: ReconstructionTerms = ReconstructionTerms(), pti_steps: int = 0,
                      pti_lr: float = 3e-4, pti_terms: ReconstructionTerms = ReconstructionTerms(),
                      locality: Locality = Locality(), lpips=None, arcface=None, camera: torch.Tensor | None = None,
                      on_step: Callable[[str, FitStep], bool | None] | None = None, start: str = "e4e",
                      precision: str = "fp32") -> Reconstruction:
    """e4e's `wplus` for the aligned `photo`, then `refine_steps` of W+ refinement, then `pti_steps` of PTI around
    the result; on_step(stage name, FitStep) after every step (True stops that stage). `start` names the first
    stage (e.g. "average" for the mean latent, the NVlabs projector's start). `precision`: the fitting steps'
    renders (devices.PRECISIONS); each stage is measured from an fp32 render."""
    target = fit_target(G, photo)
    render = renderer(G, camera)

    def measured(name, wp, net, draw):
        with torch.no_grad():
            images = draw(wp)
        return Stage(name, wp, net, images, reconstruction_metrics(images, target, lpips=lpips, arcface=arcface))

    wp = G.to_wplus(wplus.to(G.device).float())
    stages = [measured(start, wp, G, render)]
    if refine_steps:
        fit = refine_inversion(G, target, wp, steps=refine_steps, lr=refine_lr, terms=refine_terms, lpips=lpips,
                               arcface=arcface, camera=camera, precision=precision,
                               callback=None if on_step is None else (lambda info: on_step("refine", info)))
        wp = fit.wplus
        stages.append(measured("refined", wp, G, render))
    if pti_steps:
        tuned = pivotal_tuning(G, target, wp, steps=pti_steps, lr=pti_lr, terms=pti_terms, lpips=lpips, arcface=arcface,
                               locality=locality, camera=camera, precision=precision,
                               callback=None if on_step is None else (lambda info: on_step("PTI", info))).generator
        stages.append(measured("PTI", wp, tuned, renderer(tuned, camera)))
    return Reconstruction(target, stages)
