"""Pivotal tuning (PTI, Roich et al. 2022): tune a copy of the generator's weights around a pivot latent
(e4e's or a refined one) until it renders the photo, with a locality regulariser that keeps the rest of
the latent space where it was, so edits learned on the original network still work.

Defaults are PTI's (configs/hyperparameters.py of danielroich/PTI): Adam, lr 3e-4, 350 steps, L2 + LPIPS
(weight 1 each), stop once LPIPS is below 0.07; locality: one latent drawn from the mapping network at
truncation 0.5, moved to distance 30 from the pivot along its direction, rendered by both networks and
compared with L2 and LPIPS (weight 0.1 each).  The issue this was built for gives "every 10 steps" for the
regulariser (`locality_every`); PTI's released config applies it every step (`locality_every=1`).

Only the synthesis is tuned (the mapping network gets no gradient from a fixed pivot), and the tuned copy
uses autograd; the original generator is untouched and keeps its fast frozen-weight path.  The result is a
generator of the same class, usable everywhere (essences, SAT3D, rendering), that remembers the network it
was tuned from (`tuned_from`).  `save_tuned_generator` writes only the tuned weights plus that network's
fingerprint; `load_tuned_generator` applies them on top of the same network only.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from targetclip_core.errors import CheckpointError, TargetCLIPError, malformed_file
from targetclip_core.formats.checkpoints import check_state_matches
from targetclip_core.generators.fingerprint import cached_fingerprint
from targetclip_core.io.safetensors_files import meta_str, read_safetensors, save_safetensors
from targetclip_core.methods.optimization import check_converged
from targetclip_core.methods.reconstruction.losses import LPIPS_SIZE, ReconstructionLoss, ReconstructionTerms, to_size
from targetclip_core.methods.reconstruction.refine import FitStep, prepare_fit, renderer

TUNED_FORMAT = "targetclip.tuned-generator"
PTI_STEPS = 350
PTI_LR = 3e-4
PTI_LPIPS_STOP = 0.07


@dataclass(frozen=True)
class Locality:
    """PTI's locality regulariser."""

    every: int = 10  # steps between two regulariser terms (0: off); PTI's config: 1
    alpha: float = 30.0  # distance of the probed latent from the pivot
    samples: int = 1
    truncation: float = 0.5
    l2: float = 0.1
    lpips: float = 0.1


@dataclass
class TunedResult:
    generator: torch.nn.Module  # the tuned copy, frozen, in eval mode
    history: dict = field(default_factory=dict)  # term -> [B, steps run]
    steps_run: int = 0


def tunable_parameters(G) -> list[tuple[str, torch.nn.Parameter]]:
    """The parameters PTI moves: all but the mapping network's."""
    mapping = {id(p) for p in G.mapping_network.parameters()}
    return [(n, p) for n, p in G.named_parameters() if id(p) not in mapping]


# callers may sit inside no_grad or inference_mode (ComfyUI runs every node in inference mode)
@torch.inference_mode(False)
@torch.enable_grad()
def pivotal_tuning(G, target: torch.Tensor, pivot: torch.Tensor, *, steps: int = PTI_STEPS, lr: float = PTI_LR,
                   terms: ReconstructionTerms = ReconstructionTerms(l2=1.0, lpips=1.0), lpips=None, arcface=None,
                   locality: Locality = Locality(), stop_below_lpips: float | None = PTI_LPIPS_STOP,
                   camera: torch.Tensor | None = None, seed: int = 0,
                   callback: Callable[[FitStep], bool | None] | None = None, precision: str = "fp32") -> TunedResult:
    """Tune a copy of `G` so that it renders the photo `target` from the pivot W+ `pivot` [B, n_latent, w_dim].
    precision: the renders' (devices.PRECISIONS; the weights and their updates stay fp32)."""
    if locality.every < 0 or locality.samples < 1:
        raise TargetCLIPError("locality.every must be >= 0 and locality.samples >= 1")
    target, pivot = prepare_fit(G, target, pivot, lr=lr, steps=steps, models=(lpips, arcface))
    tuned = copy.deepcopy(G).train(False)
    params = tunable_parameters(tuned)
    for _, p in params:
        p.requires_grad_(True)
    loss_fn = ReconstructionLoss(target, terms, lpips=lpips, arcface=arcface)
    render, render_original = renderer(tuned, camera, precision), renderer(G, camera, precision)
    opt = torch.optim.Adam([p for _, p in params], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    history: dict[str, list] = {}
    run = 0
    for step in range(steps):
        images = render(pivot)
        total, parts = loss_fn(images)
        if "lpips" in parts and stop_below_lpips is not None and bool((parts["lpips"] <= stop_below_lpips).all()):
            break  # PTI's stopping rule: the photo is reproduced closely enough
        loss = total.sum()
        if locality.every and step % locality.every == 0:
            parts["locality"] = _locality_term(G, pivot, locality, loss_fn.lpips, gen, render, render_original).expand_as(total)
            loss = loss + parts["locality"][0]
        for k, v in {"total": total, **parts}.items():
            history.setdefault(k, []).append(v.detach())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        run = step + 1
        if callback is not None and callback(FitStep(step, steps, total.detach(), {k: v.detach() for k, v in parts.items()},
                                                     images.detach())):
            break
    if history:
        check_converged(torch.stack(history["total"][-1:]), "the pivotal tuning")
    tuned.eval().requires_grad_(False)
    tuned.mapping_network.has_w_avg = G.mapping_network.has_w_avg
    tuned.tuned_from = {"fingerprint": cached_fingerprint(G), "describe": G.describe(), "identity": dict(G.identity)}
    tuned.tuned_names = [n for n, _ in params]
    return TunedResult(tuned, {k: torch.stack(v, dim=1).cpu() for k, v in history.items()}, run)


def _locality_term(G, pivot, locality: Locality, lpips, gen, render_new, render_old) -> torch.Tensor:
    """PTI's `ball_holder_loss_lazy`: renders of latents away from the pivot must stay the original's."""
    z = torch.randn(locality.samples, G.z_dim, generator=gen).to(G.device)
    with torch.no_grad():
        w = G.to_wplus(G.mapping(z, truncation=locality.truncation))
    loss = pivot.new_zeros(())
    for i in range(locality.samples):
        direction = w[i : i + 1] - pivot[:1]
        probe = pivot[:1] + locality.alpha * direction / direction.norm()
        new = render_new(probe)
        with torch.no_grad():
            old = render_old(probe)
        if locality.l2 > 0:
            loss = loss + locality.l2 * (new - old).square().mean()
        if locality.lpips > 0 and lpips is not None:
            loss = loss + locality.lpips * lpips(to_size(old, LPIPS_SIZE), to_size(new, LPIPS_SIZE)).mean()
    return loss / locality.samples


# --------------------------------------------------------------------------- tuned-weights files


def save_tuned_generator(tuned, path) -> None:
    """Write the tuned weights only (safetensors), with the fingerprint of the network they apply to."""
    info = getattr(tuned, "tuned_from", None)
    names = getattr(tuned, "tuned_names", None)
    if not info or not names:
        raise TargetCLIPError("this generator was not made by pivotal_tuning (no tuned_from / tuned_names)")
    state = tuned.state_dict()
    tensors = {n: state[n].detach().to("cpu", torch.float32).contiguous() for n in names}
    meta = {"format": TUNED_FORMAT, "format_version": "1", "base_fingerprint": info["fingerprint"],
            "base_describe": info["describe"], "base_identity": json.dumps(info["identity"], sort_keys=True)}
    save_safetensors(tensors, path, metadata=meta)


def load_tuned_generator(path, base):
    """The generator `base` with the tuned weights of `path` (save_tuned_generator) applied to a copy.

    Refused (naming both networks) unless `base` is the very network the weights were tuned from."""
    what = "tuned generator weights"
    tensors, meta = read_safetensors(path, what, CheckpointError)
    with malformed_file(path, what):
        if meta.get("format") != TUNED_FORMAT:
            raise CheckpointError(f"{path}: not a tuned-generator file (metadata format={meta.get('format')!r})")
        fingerprint = meta_str(meta, "base_fingerprint", path, what, error=CheckpointError)
        theirs = cached_fingerprint(base)
        if fingerprint != theirs:
            raise TargetCLIPError(
                f"{path}: these weights were tuned from another network ({meta.get('base_describe', '?')}, weights "
                f"{fingerprint[:12]}), not this {base.describe()} (weights {theirs[:12]}); load the generator it was "
                "tuned from")
        state = base.state_dict()
        unknown = [k for k in tensors if k not in state]
        if unknown:
            raise CheckpointError(f"{path}: weights {unknown[:4]} are not part of {base.describe()}")
        check_state_matches({k: state[k] for k in tensors}, tensors, path)
    tuned = copy.deepcopy(base)
    with torch.no_grad():
        own = dict(tuned.named_parameters())
        for name, value in tensors.items():
            (own[name] if name in own else tuned.get_buffer(name)).copy_(value)
    tuned.eval().requires_grad_(False)
    tuned.tuned_from = {"fingerprint": fingerprint, "describe": meta.get("base_describe", ""),
                        "identity": dict(base.identity)}
    tuned.tuned_names = sorted(tensors)
    return tuned
