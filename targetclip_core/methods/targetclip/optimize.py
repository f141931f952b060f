"""TargetCLIP essence optimisation (Chefer et al., ECCV 2022, Sec. 4): find b such that
G(w + b) carries the target's look for any source w.

Loss per target (paper Eqs. 5-7), with f_i = C(G(w_i + c_i b)), e_i = C(G(w_i)), t = C(I_t),
all L2-normalised CLIP codes:
    L_similarity  = mean_i (1 - cos(t, f_i))
    L_consistency = mean over ordered pairs i != j of (1 - cos(d_i, d_j)),  d_i = f_i - e_i
    L_l2          = ||b||_2
    L = lambda_similarity * L_similarity + lambda_consistency * L_consistency + lambda_l2 * L_l2
Adam (lr 0.2) with the official learning-rate ramp, 1000 steps, N = 4 sources.

Where the official loop spends its time, this one does not: the sources and their CLIP
codes are constant and computed once; all edits of all targets render in one batch,
at a reduced `out_resolution` (CLIP sees 224 pixels); the best b (by loss, before its
step) is kept; several targets optimise side by side in one batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from targetclip_core.devices import Compiled, autocast
from targetclip_core.errors import LatentError, TargetCLIPError
from targetclip_core.generators.latents import wplus_from_z
from targetclip_core.methods.directions.text_constraints import text_constraint
from targetclip_core.methods.optimization import check_converged, check_run_settings, loss_resolution, make_autograd_ready
from targetclip_core.methods.targetclip.essence import Essence, target_thumbnails

LOSS_TERMS = ("total", "similarity", "consistency", "l2")
# on a GPU, reading the early-stop counter makes the host wait for the step: it is read every this many steps
EARLY_STOP_CHECK_EVERY = 10


def official_lr(step: int, steps: int, lr: float, rampdown: float = 0.75, rampup: float = 0.005) -> float:
    """The official schedule: linear warm-up over the first 0.5%, flat, cosine to 0 over the last 75%."""
    t = step / steps
    ramp = min(1.0, (1.0 - t) / rampdown)
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    return lr * ramp * min(1.0, t / rampup)


@dataclass
class StepInfo:
    """What the per-step callback receives."""

    step: int
    steps: int
    lr: float
    losses: dict  # term -> [T] tensor (per target) of this step's values
    images: torch.Tensor  # [T, N, 3, r, r] the edits rendered this step (detached)
    essence_vectors: torch.Tensor  # [T, n_latent, w_dim] b after this step (a copy: safe to keep)


@dataclass
class _Best:
    loss: torch.Tensor
    vector: torch.Tensor
    coefficients: torch.Tensor | None


def sample_sources(G, n: int, truncation: float = 0.7, seed: int = 0) -> torch.Tensor:
    """N source latents from the mapping network, truncated toward w_avg: [N, n_latent, w_dim]."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, G.z_dim, generator=gen).to(G.device)
    with torch.no_grad():
        return wplus_from_z(G, z, truncation=truncation)


def consistency_loss(d: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Mean over ordered pairs i != j of 1 - cos(d_i, d_j); d: [..., N, D] -> [...].

    A delta below `eps` (e.g. b = 0 at the start, where it is pure float noise between two
    renders of the same image) has no direction: pairs with it count as agreeing, so
    noise cannot steer the first steps.
    """
    n = d.shape[-2]
    if n < 2:
        return d.new_zeros(d.shape[:-2])
    norm = d.norm(dim=-1, keepdim=True)
    valid = (norm > eps).to(d.dtype)  # [..., N, 1]
    dn = d / norm.clamp(min=eps) * valid
    cos = dn @ dn.transpose(-1, -2)  # [..., N, N], diagonal contributes 0
    pair_valid = valid @ valid.transpose(-1, -2)
    cos = cos * pair_valid + (1 - pair_valid)  # pairs with a directionless delta: no loss
    return (1 - cos).sum(dim=(-1, -2)) / (n * n - n)


def essence_losses(target_codes, source_codes, edit_codes, vectors, lambdas) -> dict:
    """All loss terms per target. target [T,D], source [N,D], edit [T,N,D], vectors [T,n,w]."""
    sim = (1 - (edit_codes * target_codes[:, None, :]).sum(-1)).mean(-1)
    cons = consistency_loss(edit_codes - source_codes[None])
    l2 = vectors.flatten(1).norm(dim=1)
    total = lambdas[0] * sim + lambdas[1] * cons + lambdas[2] * l2
    return {"total": total, "similarity": sim, "consistency": cons, "l2": l2}


def _target_batch(target_image, device) -> torch.Tensor:
    from pathlib import Path

    from targetclip_core.io.images import EMBEDDING_MAX_SIDE, load_image, rgb_from_pil

    if isinstance(target_image, (str, Path)):
        target_image = load_image(target_image, max_side=EMBEDDING_MAX_SIDE)  # only CLIP reads it
    elif isinstance(target_image, (list, tuple)):
        return torch.cat([_target_batch(t, device) for t in target_image])
    elif not torch.is_tensor(target_image):  # a PIL image: converted as the file reader converts files
        arr = rgb_from_pil(target_image, "the target image", max_side=EMBEDDING_MAX_SIDE, as_float=True)
        target_image = torch.from_numpy(arr).permute(2, 0, 1)[None] / 127.5 - 1
    if target_image.dim() == 3:
        target_image = target_image[None]
    if target_image.dim() != 4 or target_image.shape[1] != 3:
        raise TargetCLIPError(f"target image must be [T, 3, H, W] in [-1, 1], got {list(target_image.shape)}")
    if not torch.isfinite(target_image).all():
        raise TargetCLIPError("target image contains NaN or infinite values")
    return target_image.to(device).float()


def _initial_vectors(G, init, n_targets, truncation, seed) -> torch.Tensor:
    shape = (n_targets, G.n_latent, G.w_dim)
    if isinstance(init, Essence):
        init.check_compatible(G)
        return init.vector.to(G.device).expand(shape).clone()
    if torch.is_tensor(init):
        v = init.to(G.device).float()
        v = v[None] if v.dim() == 2 else v
        if v.shape[1:] != shape[1:] or v.shape[0] not in (1, n_targets):
            raise LatentError(f"init latent of shape {list(init.shape)} does not fit [T, {G.n_latent}, {G.w_dim}]")
        return v.expand(shape).clone()
    if init == "zeros":
        return torch.zeros(shape, device=G.device)
    if init == "random":  # as the official code: a truncated sample, the same w on every entry
        return sample_sources(G, n_targets, truncation, seed + 7919)
    raise TargetCLIPError(f"init must be 'random', 'zeros', a W+ tensor or an Essence, got {init!r}")


# callers may sit inside no_grad or inference_mode (ComfyUI runs every node in inference mode)
@torch.inference_mode(False)
@torch.enable_grad()
def optimize_essence(
    G,
    C,
    target_image,
    *,
    steps: int = 1000,
    lr: float = 0.2,
    n_sources: int = 4,
    sources: torch.Tensor | None = None,
    truncation: float = 0.7,
    seed: int = 0,
    lambda_similarity: float = 1.0,
    lambda_consistency: float = 0.5,
    lambda_l2: float = 0.003,
    init="random",
    learn_coefficients: bool = False,
    out_resolution="auto",
    preprocess: str | None = None,
    callback: Callable[[StepInfo], bool | None] | None = None,
    early_stop_patience: int | None = None,
    early_stop_tolerance: float = 1e-4,
    name: str = "",
    avoid=(),
    keep=(),
    lambda_text: float = 1.0,
    text_neutral: str | None = None,
    precision: str = "auto",
    compile: bool = False,
):
    """Optimise one essence per target image. Returns an Essence, or a list for several targets.

    target_image: a path, PIL image, [3,H,W] / [T,3,H,W] tensor in [-1,1], or a list of them.
    sources: W+ latents [N, n_latent, w_dim] to train on (default: N seeds from the mapping
      network with `truncation`, drawn with `seed`).
    init: "random" (a truncated sample, as the official code), "zeros", a W+ tensor (e.g. the
      e4e inversion of the target, paper Sec. 4) or an existing Essence.
    learn_coefficients: learn one scale c_i per source (init 1) jointly with b, as the
      official optimiser does (its Adam, weight decay 0.01).
    out_resolution: render resolution for the loss; "auto" = the smallest generator
      resolution >= CLIP's input size.
    callback: called every step with a StepInfo; returning True stops the run.
    early_stop_patience: stop once the best total loss has not improved by a relative
      `early_stop_tolerance` for this many steps (off by default); on GPUs it is read every
      min(EARLY_STOP_CHECK_EVERY, patience) steps, so a run stops at the first check after it ran out.
    avoid / keep: texts the edits must not move towards / away from in CLIP space (a variant, off by
      default: methods.directions.text_constraints), added as lambda_text * that term ("text" in the
      loss history); text_neutral measures each text from that prompt. With neither, the paper's loss
      is unchanged.
    precision: the generator's renders, one of devices.PRECISIONS. "auto" (the default) is bf16 on CPUs with
      bf16 units and recent GPUs (about 2x the fp32 step on an AMX-BF16 Xeon: `targetclip bench optimize`),
      fp16 on older GPUs, else fp32, the paper's. CLIP, the losses and the update stay fp32: CLIP codes rounded
      to bf16 move the similarity by about 1e-3, as much as a planted essence moves it on the tiny test
      networks. The sources render in the same precision as the edits, so b = 0 is each source exactly. A
      200-step run in bf16 ends within 5% of fp32's loss reduction (tests/generators/test_precision.py).
    compile: run CLIP's image encoder through torch.compile (off by default: on a CPU it does not pay, see the
      README's speed section; not yet measured on a GPU). Where compilation is unsupported (Windows, MPS, torch
      < 2.1) or fails, the run goes on uncompiled with one warning (devices.Compiled). The generator is not
      compiled: its frozen layers are one hand-written autograd Function each, already fused by hand.
    """
    if steps < 1:
        raise TargetCLIPError("steps must be >= 1")
    check_run_settings(lr=lr, steps=steps, n_sources=n_sources)
    make_autograd_ready(G)
    make_autograd_ready(C)
    if torch.is_tensor(target_image):
        target_image = target_image.clone()  # inference-mode tensors cannot enter autograd
    if torch.is_tensor(init):
        init = init.clone()
    device = G.device
    targets = _target_batch(target_image, device)
    n_targets = targets.shape[0]
    if sources is None:
        sources = sample_sources(G, n_sources, truncation, seed)
    else:
        sources = G.to_wplus(sources.to(device).float().clone())
    n = sources.shape[0]
    res = loss_resolution(G, C, out_resolution)
    lambdas = (lambda_similarity, lambda_consistency, lambda_l2)
    constraint = text_constraint(C, avoid, keep, neutral=text_neutral)  # texts embedded once; empty: no term

    with torch.no_grad():  # constant through the run: computed once
        target_codes = C.encode_image(targets, preprocess="default")  # a photo: CLIP's own preprocessing
        with autocast(precision, device):  # as the edits render, so b = 0 gives each source's own code exactly
            source_images = G.synthesis(sources, out_resolution=res)
        source_codes = C.encode_image(source_images.float(), preprocess)

    encode_edits = Compiled(C.encode_image, device, "CLIP's image encoder") if compile else C.encode_image
    torch.manual_seed(seed)
    vectors = _initial_vectors(G, init, n_targets, truncation, seed).requires_grad_(True)
    groups = [{"params": [vectors], "lr": lr}]
    coefficients = None
    if learn_coefficients:
        coefficients = torch.ones(n_targets, n, device=device, requires_grad=True)
        groups.append({"params": [coefficients], "lr": lr, "weight_decay": 0.01})
    opt = torch.optim.Adam(groups)

    history = {k: [] for k in LOSS_TERMS + (("text",) if constraint else ())}
    best = None
    since_improved = torch.zeros((), dtype=torch.long, device=device)
    # on the CPU a read costs nothing, so the patience is exact there
    check_every = 1 if device.type == "cpu" or early_stop_patience is None else min(EARLY_STOP_CHECK_EVERY, early_stop_patience)
    for step in range(steps):
        opt.param_groups[0]["lr"] = official_lr(step, steps, lr)
        scale = coefficients[..., None, None] if coefficients is not None else 1.0
        edits = sources[None] + scale * vectors[:, None]  # [T, N, n_latent, w_dim]
        with autocast(precision, device):
            images = G.synthesis(edits.flatten(0, 1), out_resolution=res)
        images = images.float()
        edit_codes = encode_edits(images, preprocess).view(n_targets, n, -1)
        losses = essence_losses(target_codes, source_codes, edit_codes, vectors, lambdas)
        if constraint:
            losses["text"] = constraint(edit_codes, source_codes)
            losses["total"] = losses["total"] + lambda_text * losses["text"]

        # bookkeeping stays on the device: nothing here waits for the step to finish (no .item(), no .cpu())
        with torch.no_grad():  # keep the b that gave this loss: it is the one before the step
            cur = losses["total"].detach()
            if best is None:
                best = _Best(cur.clone(), vectors.detach().clone(), None if coefficients is None else coefficients.detach().clone())
            else:
                better = (cur < best.loss)[:, None, None]
                best.vector = torch.where(better, vectors.detach(), best.vector)
                if coefficients is not None:
                    best.coefficients = torch.where(better[:, :, 0], coefficients.detach(), best.coefficients)
                improved = ((best.loss - cur) > early_stop_tolerance * best.loss.abs()).any()
                best.loss = torch.minimum(cur, best.loss)
                since_improved = torch.where(improved, 0, since_improved + 1)
            for k in history:
                history[k].append(losses[k].detach())

        opt.zero_grad(set_to_none=True)
        losses["total"].sum().backward()
        opt.step()

        if callback is not None:
            info = StepInfo(step, steps, opt.param_groups[0]["lr"], {k: v.detach() for k, v in losses.items()},
                            images.detach().view(n_targets, n, *images.shape[1:]), vectors.detach().clone())
            if callback(info):
                break
        if early_stop_patience is not None and (step + 1) % check_every == 0 and since_improved >= early_stop_patience:
            break

    stacked = {k: torch.stack(v, dim=1).cpu() for k, v in history.items()}  # [T, steps_run], one copy at the end
    # the essence kept is the best step's, so a run that diverged late still returns what it had
    check_converged(best.loss, "the essence optimisation")
    thumbs = target_thumbnails(targets)
    result = []
    for t in range(n_targets):
        result.append(Essence(
            vector=best.vector[t : t + 1].detach().clone(),
            generator=G.identity,
            clip=C.identity,
            thumbnail=torch.from_numpy(thumbs[t]),
            losses={k: v[t].tolist() for k, v in stacked.items()},
            steps=len(history["total"]),
            strength=float(best.coefficients[t].mean()) if best.coefficients is not None else 1.0,
            name=name if n_targets == 1 else f"{name or 'target'}_{t}",
            source="optimized",
            coefficients=None if best.coefficients is None else best.coefficients[t].clone(),
        ))
    return result[0] if n_targets == 1 else result
