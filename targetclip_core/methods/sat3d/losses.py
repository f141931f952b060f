"""The SAT3D loss terms (Zhai et al. 2024, Sec. 3.2), as the paper defines them.

  L_ref  = sum_{t in Omega} sum_{phi in Phi_t} | D(I_edit, phi) - D(I_ref, phi) |_1
  L_src  = sum_{t not in Omega} sum_{phi in Phi_t} | D(I_edit, phi) - D(I_src, phi) |_1
  L_attr = L_ref + L_src
  L_bg   = (1 / sum B) * sum | I_edit * B - I_src * B |,  B = (not B_src) and (not B_edit)
           (binary masks of the target attributes' alterable region, from the face parser on
           the source and on the edit; the numerator sums over pixels and colour channels, sum B
           counts mask pixels)
  L_prob = (1/n) sum_i | 1 - max_rows softmax(M)^i |   (each channel belongs to one attribute)
  L      = 3.5 L_attr + 40 L_bg + 0.1 L_prob

D(I, phi) is the QMM's distribution over a descriptor group's phrases [B, K]. The paper writes the
losses for one pair; over a batch of pairs we take their mean (and L_bg's sums run over the whole
batch, so it is the mean absolute change of a background pixel's colour). Variants, off by default:
`reduction="mean"` averages over attributes and groups instead of summing (the weights then keep
their meaning when a user adds attributes or groups); lambdas with "ref" and/or "src" weight those
two terms apart instead of lambda_attr on their sum.
"""

from __future__ import annotations

import torch

from targetclip_core.errors import TargetCLIPError

LOSS_TERMS = ("total", "ref", "src", "bg", "prob")
DEFAULT_LAMBDAS = {"attr": 3.5, "bg": 40.0, "prob": 0.1}
REDUCTIONS = ("sum", "mean")


def attribute_distance(d_a: list[torch.Tensor], d_b: list[torch.Tensor], reduction: str = "sum") -> torch.Tensor:
    """The L1 distance of two measurements of one attribute, summed over its descriptor groups: [B]."""
    per_group = torch.stack([(p - q).abs().sum(-1) for p, q in zip(d_a, d_b)])
    return _reduce(per_group, reduction)


def loss_ref(d_edit: dict, d_ref: dict, target: list[str], reduction: str = "sum") -> torch.Tensor:
    """L_ref: the edit measures like the reference on the target attributes (mean over the batch)."""
    return _reduce(torch.stack([attribute_distance(d_edit[a], d_ref[a], reduction) for a in target]), reduction).mean()


def loss_src(d_edit: dict, d_src: dict, target: list[str], reduction: str = "sum") -> torch.Tensor:
    """L_src: the edit measures like the source on every other attribute (mean over the batch)."""
    others = [a for a in d_edit if a not in target]
    if not others:
        return next(iter(d_edit.values()))[0].new_zeros(())
    return _reduce(torch.stack([attribute_distance(d_edit[a], d_src[a], reduction) for a in others]), reduction).mean()


def background_mask(region_src: torch.Tensor, region_edit: torch.Tensor) -> torch.Tensor:
    """B = (not B_src) and (not B_edit) as 0/1 floats [B, H, W], from binary region masks [B, H, W]."""
    return (~region_src.bool() & ~region_edit.bool()).float()


def background_loss(image_edit: torch.Tensor, image_src: torch.Tensor, region_src: torch.Tensor,
                    region_edit: torch.Tensor, normaliser: torch.Tensor | None = None) -> torch.Tensor:
    """L_bg: sum over pixels and colours of |I_edit * B - I_src * B|, divided by the number of mask pixels.

    images [B, 3, H, W]; regions: binary [B, H, W] (the target attributes' region on the source
    and on the edit). A batch without background pixels gives 0. normaliser: the pixel count to
    divide by instead of this batch's own; data-parallel training passes the global batch's count
    / processes, so the processes' mean loss is the global batch's (see train_sat3d).
    """
    mask = background_mask(region_src, region_edit)[:, None].to(image_edit.dtype)
    changed = (image_edit * mask - image_src * mask).abs().sum()
    count = mask.sum() if normaliser is None else normaliser
    return changed / count.clamp(min=1.0)


def probability_loss(logits: torch.Tensor) -> torch.Tensor:
    """L_prob = (1/n) sum_i |1 - max over the rows of softmax(M)[:, i]|; logits [m+1, n] -> scalar."""
    return (1 - logits.softmax(dim=0).amax(dim=0)).abs().mean()


def total_loss(terms: dict, lambdas: dict) -> torch.Tensor:
    """L = lambda_attr (L_ref + L_src) + lambda_bg L_bg + lambda_prob L_prob; "ref" / "src" in
    `lambdas` (a variant) weight those two terms apart."""
    attr = lambdas.get("attr", DEFAULT_LAMBDAS["attr"])
    return (lambdas.get("ref", attr) * terms["ref"] + lambdas.get("src", attr) * terms["src"]
            + lambdas["bg"] * terms["bg"] + lambdas["prob"] * terms["prob"])


def objective_info(lambdas: dict, reduction: str = "sum", background: bool = True) -> dict:
    """What a matrix file records about the losses that trained it (SAT3DMatrix.objective)."""
    weights = {k: float(v) for k, v in lambdas.items()}
    attr = weights.get("attr", DEFAULT_LAMBDAS["attr"])
    ref, src = weights.get("ref", attr), weights.get("src", attr)
    attr_text = f"{attr:g} (L_ref + L_src)" if ref == src == attr else f"{ref:g} L_ref + {src:g} L_src"
    bg = f" + {weights['bg']:g} L_bg (binary parse, L1)" if background and weights.get("bg") else " (no L_bg)"
    return {
        "name": "paper" if reduction == "sum" else "paper, means over attributes and groups",
        "lambdas": weights, "reduction": reduction, "background": bool(background and weights.get("bg")),
        "summary": f"{attr_text}{bg} + {weights['prob']:g} L_prob (one attribute per channel); "
                   f"{'sums' if reduction == 'sum' else 'means'} over attributes and groups",
    }


def check_lambdas(lambdas: dict | None, reduction: str = "sum") -> dict:
    """The paper's weights updated by `lambdas`, refused when a key or the reduction is unknown."""
    known = {"attr", "ref", "src", "bg", "prob"}
    unknown = set(lambdas or {}) - known
    if unknown:
        raise TargetCLIPError(f"unknown SAT3D loss weight(s) {sorted(unknown)}; known: {sorted(known)}")
    if reduction not in REDUCTIONS:
        raise TargetCLIPError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return {**DEFAULT_LAMBDAS, **(lambdas or {})}


def _reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    """Sum (the paper) or mean (a variant) over the first dimension."""
    return values.sum(0) if reduction == "sum" else values.mean(0)
