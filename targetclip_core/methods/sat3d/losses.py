"""The SAT3D loss terms (Zhai et al. 2024, Eqs. 4-7), on QMM measurements and images.

  Eq. 4  L_ref = mean_{a in Omega} mean_{phi in Phi_a} || D(I_edit, phi) - D(I_ref, phi) ||_1
  Eq. 5  L_src = mean_{a not in Omega} mean_{phi in Phi_a} || D(I_edit, phi) - D(I_src, phi) ||_1
  Eq. 6  L_bg  = sum(B * (I_edit - I_src)^2) / sum(B * 3),  B = 1 - max(R(I_src), R(I_edit)),
         R the parser's soft region of the target attribute (background = outside it)
  Eq. 7  L_prob = mean_c m_Omega(c);  L = L_ref + 3.5 L_src + 40 L_bg + 0.1 L_prob

Decisions where the paper leaves room:
  - Weights: the paper lists 3.5 / 40 / 0.1 for L_src / L_bg / L_prob with L_ref at weight 1.
  - Means, not sums, over attributes and groups, so the weights do not change meaning when a
    user adds descriptor groups or attributes.
  - L_prob is read as a sparsity term on the control probabilities of the target set (the
    mean of m_Omega): it makes the mask concentrate on the few channels the attribute needs.
  - L_bg is a masked MSE on images in [-1, 1].
"""

from __future__ import annotations

import torch

LOSS_TERMS = ("total", "ref", "src", "bg", "prob")


def attribute_distance(d_a: list[torch.Tensor], d_b: list[torch.Tensor]) -> torch.Tensor:
    """Mean over an attribute's groups of the L1 distance of two distributions: [B]."""
    return torch.stack([(p - q).abs().sum(-1) for p, q in zip(d_a, d_b)]).mean(0)


def loss_ref(d_edit: dict, d_ref: dict, target: list[str]) -> torch.Tensor:
    """Eq. 4: the edit should measure like the reference on the target attributes."""
    return torch.stack([attribute_distance(d_edit[a], d_ref[a]) for a in target]).mean(0).mean()


def loss_src(d_edit: dict, d_src: dict, target: list[str]) -> torch.Tensor:
    """Eq. 5: the edit should measure like the source on every other attribute."""
    others = [a for a in d_edit if a not in target]
    if not others:
        return next(iter(d_edit.values()))[0].new_zeros(())
    return torch.stack([attribute_distance(d_edit[a], d_src[a]) for a in others]).mean(0).mean()


def loss_bg(img_edit: torch.Tensor, img_src: torch.Tensor, background: torch.Tensor, eps: float = 1e-8,
            normaliser: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 6: mean squared change over background pixels; background [B, H, W] or [B,1,H,W] in [0,1].

    normaliser: what the summed weighted change is divided by, instead of this batch's own
      background weight (+ eps).  Data-parallel training passes (the global batch's weight + eps)
      / processes, so that the processes' mean loss is the global batch's (see train_sat3d).
    """
    weight = background_weight(img_edit, background)
    if normaliser is None:
        normaliser = weight.sum() + eps
    return (weight * (img_edit - img_src) ** 2).sum() / normaliser


def background_weight(img: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """The per-pixel weight of Eq. 6: background [B, H, W] or [B,1,H,W] spread over img's channels."""
    if background.dim() == 3:
        background = background[:, None]
    return background.expand_as(img)


def loss_prob(mask: torch.Tensor) -> torch.Tensor:
    """Eq. 7 (regulariser): mean control probability of the target set over the channels."""
    return mask.mean()


def total_loss(terms: dict, lambdas: dict) -> torch.Tensor:
    """Eq. 7: the weighted sum of the ref, src, bg and prob terms."""
    return sum(lambdas[k] * terms[k] for k in ("ref", "src", "bg", "prob"))


DEFAULT_LAMBDAS = {"ref": 1.0, "src": 3.5, "bg": 40.0, "prob": 0.1}
