"""How far a rendering is from the photo it should reproduce: pixel L2, LPIPS and ArcFace identity,
the terms of the NVlabs projector (LPIPS), PTI (L2 + LPIPS) and pSp/e4e's identity loss.

`ReconstructionLoss(target, terms, lpips=..., arcface=...)` is built once per photo (the target's
features are computed once) and called on renders; each term is a [B] tensor so a batch of photos is
optimised and reported separately.  The perceptual network is optional: without it the LPIPS term is
off with one warning (never an error), as is the identity term without ArcFace.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from targetclip_core.errors import TargetCLIPError

LPIPS_SIZE = 256  # the NVlabs projector and PTI compare features at 256 px (the size LPIPS was trained at)


@dataclass(frozen=True)
class ReconstructionTerms:
    """Weights of the loss terms (0 turns one off)."""

    l2: float = 1.0
    lpips: float = 1.0
    identity: float = 0.0  # 1 - cos(ArcFace(render), ArcFace(photo)); pSp/e4e weigh it 0.1-1

    def __post_init__(self):
        for name in ("l2", "lpips", "identity"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or value == float("inf"):
                raise TargetCLIPError(f"the {name} weight must be a finite number >= 0, got {value!r}")


def to_size(images: torch.Tensor, size: int) -> torch.Tensor:
    """Area-resize a batch to size x size (antialiased down, bilinear up); unchanged when it already is."""
    if images.shape[-2:] == (size, size):
        return images
    if images.shape[-1] > size:
        return F.interpolate(images, size=(size, size), mode="area")
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=False)


class ReconstructionLoss:
    """The weighted sum of the enabled terms between renders and the target photo."""

    def __init__(self, target: torch.Tensor, terms: ReconstructionTerms = ReconstructionTerms(), *, lpips=None,
                 arcface=None, lpips_size: int = LPIPS_SIZE):
        if not torch.is_tensor(target) or target.dim() != 4 or target.shape[1] != 3:
            raise TargetCLIPError(f"the target photo must be a [B, 3, H, W] tensor, got {getattr(target, 'shape', type(target))}")
        if not torch.isfinite(target).all():
            raise TargetCLIPError("the target photo contains NaN or infinite values")
        self.target = target.detach().float()
        self.lpips = lpips if terms.lpips > 0 else None
        self.arcface = arcface if terms.identity > 0 else None
        if terms.lpips > 0 and lpips is None:
            warnings.warn("no LPIPS network: the perceptual term is off (see `targetclip download lpips-alex-backbone`)",
                          stacklevel=2)
        if terms.identity > 0 and arcface is None:
            warnings.warn("no ArcFace network: the identity term is off", stacklevel=2)
        self.terms = terms
        self.lpips_size = int(lpips_size)
        with torch.no_grad():
            self._target_small = to_size(self.target, self.lpips_size)
            self._target_id = self.arcface.embed(self.target) if self.arcface is not None else None

    @property
    def active(self) -> tuple[str, ...]:
        out = []
        if self.terms.l2 > 0:
            out.append("l2")
        if self.lpips is not None:
            out.append("lpips")
        if self.arcface is not None:
            out.append("identity")
        return tuple(out)

    def parts(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every enabled term, unweighted, per image [B]."""
        target = self.target.to(images.device)
        if images.shape != target.shape:
            target = to_size(target, images.shape[-1])
        out = {}
        if self.terms.l2 > 0:
            out["l2"] = (images - target).square().mean(dim=(1, 2, 3))
        if self.lpips is not None:
            out["lpips"] = self.lpips(to_size(images, self.lpips_size), self._target_small.to(images.device)).reshape(-1)
        if self.arcface is not None:
            emb = self.arcface.embed(images)
            out["identity"] = 1 - (emb * self._target_id.to(emb.device)).sum(dim=1)
        return out

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(weighted total [B], the unweighted terms)."""
        parts = self.parts(images)
        weights = {"l2": self.terms.l2, "lpips": self.terms.lpips, "identity": self.terms.identity}
        total = sum(weights[k] * v for k, v in parts.items())
        if not torch.is_tensor(total):  # every term off
            raise TargetCLIPError("every reconstruction term is off: nothing to optimise")
        return total, parts
