"""`refine_inversion`: optimise W+ from an encoder's latent toward the aligned photo, as NVlabs'
projector optimises W (Adam, pixel + perceptual distance), starting where e4e/pSp left off.

The generator stays frozen (its fast frozen-weight synthesis path is the one used); only the latent
moves.  EG3D renders from the camera the photo was taken with (`camera`, a [B, 25] label; default the
frontal one), so the refined latent fits the 3D scene, not one view's image only.  The noise inputs
are not optimised (the projector's noise regularisation is therefore not needed); W+ carries the fit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from targetclip_core.devices import autocast, resolve_precision, widened
from targetclip_core.errors import TargetCLIPError
from targetclip_core.methods.optimization import check_converged, check_run_settings, make_autograd_ready
from targetclip_core.methods.reconstruction.losses import ReconstructionLoss, ReconstructionTerms, to_size

REFINE_STEPS = 200
REFINE_LR = 0.01  # Adam on W+ from e4e (PTI's own W projection uses 5e-3 from w_avg, the projector 0.1 in W)


@dataclass
class FitStep:
    """What a per-step callback of refine_inversion / pivotal_tuning receives."""

    step: int
    steps: int
    loss: torch.Tensor  # [B] weighted total of this step
    parts: dict  # term -> [B]
    images: torch.Tensor  # [B, 3, H, W] this step's renders (detached)


@dataclass
class FitResult:
    wplus: torch.Tensor  # [B, n_latent, w_dim]: the best step's latents
    history: dict = field(default_factory=dict)  # term -> [B, steps run] ("total" included)
    steps_run: int = 0


def renderer(G, camera: torch.Tensor | None = None, precision: str = "fp32"):
    """W+ -> fp32 images of `G`, rendered in `precision` (devices.PRECISIONS): for EG3D from `camera` (labels
    [B, 25] or [1, 25]; None = G's frontal camera)."""
    if not G.is_3d and camera is not None:
        raise TargetCLIPError(f"a camera is for 3D-aware generators; this is a {G.describe()}")
    extra = {"c": None if camera is None else camera.to(G.device)} if G.is_3d else {}
    resolve_precision(precision, G.device)  # refused here, before any step

    def render(wp):
        with autocast(precision, G.device):
            return widened(G.synthesis(wp, noise_mode="const", **extra))
    return render


def fit_target(G, target: torch.Tensor) -> torch.Tensor:
    """The photo as the generator renders: [B, 3, R, R] at G's resolution, in [-1, 1], on G's device."""
    if not torch.is_tensor(target) or target.dim() not in (3, 4):
        raise TargetCLIPError("the photo must be an image tensor [B, 3, H, W] in [-1, 1]")
    target = target[None] if target.dim() == 3 else target
    return to_size(target.detach().to(G.device, torch.float32).clone(), G.resolution)


def prepare_fit(G, target: torch.Tensor, wplus: torch.Tensor, *, lr: float, steps: int, models=()
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """What a fit to photos checks and readies first: the settings, the networks for autograd (ComfyUI loads
    them in inference mode), the photos at G's size and one W+ [B, n_latent, w_dim] per photo."""
    check_run_settings(lr=lr, steps=steps)
    for model in (G, *models):
        if model is not None:
            make_autograd_ready(model)
    target = fit_target(G, target)
    wp = G.to_wplus(wplus.detach().to(G.device).float()).clone()
    if wp.shape[0] != target.shape[0]:
        raise TargetCLIPError(f"{wp.shape[0]} latents for {target.shape[0]} photos")
    return target, wp


# callers may sit inside no_grad or inference_mode (ComfyUI runs every node in inference mode)
@torch.inference_mode(False)
@torch.enable_grad()
def refine_inversion(G, target: torch.Tensor, wplus: torch.Tensor, *, steps: int = REFINE_STEPS, lr: float = REFINE_LR,
                     terms: ReconstructionTerms = ReconstructionTerms(), lpips=None, arcface=None,
                     camera: torch.Tensor | None = None, callback: Callable[[FitStep], bool | None] | None = None,
                     precision: str = "fp32") -> FitResult:
    """Optimise W+ `wplus` [B, n_latent, w_dim] (e.g. e4e's) so that G renders the aligned photo `target`.

    terms: the weights of pixel L2, LPIPS (needs `lpips`, encoders.perceptual) and ArcFace identity (needs
    `arcface`). callback(FitStep) runs every step; returning True stops. Returns the best step's W+.
    precision: the renders' (devices.PRECISIONS); the losses stay fp32.
    """
    target, start = prepare_fit(G, target, wplus, lr=lr, steps=steps, models=(lpips, arcface))
    loss_fn = ReconstructionLoss(target, terms, lpips=lpips, arcface=arcface)
    render = renderer(G, camera, precision)
    wp = start.clone().requires_grad_(True)
    opt = torch.optim.Adam([wp], lr=lr)
    best_loss, best = None, start.clone()
    history: dict[str, list] = {}
    run = 0
    for step in range(steps):
        images = render(wp)
        total, parts = loss_fn(images)
        with torch.no_grad():  # keep the latent that gave this loss (the one before the step)
            cur = total.detach()
            better = torch.ones_like(cur, dtype=torch.bool) if best_loss is None else cur < best_loss
            best[better] = wp.detach()[better]
            best_loss = cur.clone() if best_loss is None else torch.where(better, cur, best_loss)
            for k, v in {"total": total, **parts}.items():
                history.setdefault(k, []).append(v.detach())  # on the device: no wait per step
        opt.zero_grad(set_to_none=True)
        total.sum().backward()
        opt.step()
        run = step + 1
        if callback is not None and callback(FitStep(step, steps, total.detach(), {k: v.detach() for k, v in parts.items()},
                                                     images.detach())):
            break
    if best_loss is not None:
        check_converged(best_loss, "the inversion refinement")
    return FitResult(best.detach(), {k: torch.stack(v, dim=1).cpu() for k, v in history.items()}, run)
