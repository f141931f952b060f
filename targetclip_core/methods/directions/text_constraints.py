"""Text constraints on an essence: a CLIP term added to the TargetCLIP objective (methods/targetclip/optimize.py).

For each constraint text k with unit CLIP direction d_k (its text embedding, or normalised(text - neutral)
with `neutral`), the movement of edit i is m_ik = <f_i - e_i, d_k> = cos(f_i, d_k) - cos(e_i, d_k) for the
unit CLIP codes f_i of the edit and e_i of its source: how much the edit moved towards the text.
  avoid: penalise moving towards the text,    sum_k mean_i max(0,  m_ik)
  keep:  penalise moving away from the text,  sum_k mean_i max(0, -m_ik)
(`hinge=False`: the signed m, so moving away from an avoided text is rewarded too.) With no avoid and no
keep text the term is 0 and the paper's loss is unchanged. The texts are embedded once (TextConstraint);
the term is differentiable in the edit codes only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from targetclip_core.errors import TargetCLIPError
from targetclip_core.methods.directions.prompts import (
    PLAIN,
    check_prompt,
    text_embedding,
)


@dataclass
class TextConstraint:
    """Constraint directions [K, D] (unit rows) and their signs (+1 avoid, -1 keep), embedded once."""

    directions: torch.Tensor
    signs: torch.Tensor
    texts: list[str] = field(default_factory=list)
    hinge: bool = True

    def __bool__(self) -> bool:
        return len(self.signs) > 0

    def movement(self, edit_codes: torch.Tensor, source_codes: torch.Tensor) -> torch.Tensor:
        """[..., N, K]: m_ik for edit codes [..., N, D] and source codes [N, D]."""
        d = self.directions.to(edit_codes.device, edit_codes.dtype)
        return (edit_codes - source_codes.to(edit_codes.device, edit_codes.dtype)) @ d.t()

    def __call__(self, edit_codes: torch.Tensor, source_codes: torch.Tensor) -> torch.Tensor:
        """The term per target: [T] for edit codes [T, N, D], a scalar for [N, D]."""
        if edit_codes.dim() < 2 or edit_codes.shape[-1] != source_codes.shape[-1]:
            raise TargetCLIPError(f"edit codes {list(edit_codes.shape)} and source codes {list(source_codes.shape)} "
                                  "must be [..., N, D] and [N, D]")
        if not self:
            return edit_codes.new_zeros(edit_codes.shape[:-2])
        signed = self.movement(edit_codes, source_codes) * self.signs.to(edit_codes.device, edit_codes.dtype)
        per_text = F.relu(signed) if self.hinge else signed
        return per_text.mean(-2).sum(-1)


def text_constraint(C, avoid=(), keep=(), neutral: str | None = None, templates=PLAIN,
                    hinge: bool = True) -> TextConstraint:
    """Embed the constraint texts once. avoid / keep: a text, a list of texts, or directions [K, D] of one's own
    (normalised here); neutral: measure each text as a direction from this prompt (StyleCLIP's delta t) rather
    than as its own embedding; templates: prompts.PLAIN (the text as written) or e.g. IMAGENET_TEMPLATES."""
    rows, signs, texts = [], [], []
    for group, sign in ((avoid, 1.0), (keep, -1.0)):
        for name, row in _directions(C, group, neutral, templates):
            rows.append(row)
            signs.append(sign)
            texts.append(("avoid: " if sign > 0 else "keep: ") + name)
    if not rows:
        return TextConstraint(torch.zeros(0, 0), torch.zeros(0), [], hinge)
    dims = {len(r) for r in rows}
    if len(dims) != 1:
        raise TargetCLIPError(f"constraint directions of different sizes {sorted(dims)}")
    return TextConstraint(torch.stack(rows), torch.tensor(signs), texts, hinge)


def _directions(C, group, neutral, templates):
    """(label, unit direction [D]) for each entry of an avoid / keep argument."""
    if group is None:
        return []
    if torch.is_tensor(group):
        g = group.detach().float()
        g = g[None] if g.dim() == 1 else g
        if g.dim() != 2 or not bool((g.norm(dim=1) > 0).all()):
            raise TargetCLIPError(f"constraint directions must be non-zero rows [K, D], got shape {list(group.shape)}")
        return [(f"direction {i}", F.normalize(row, dim=0).cpu()) for i, row in enumerate(g)]
    group = [group] if isinstance(group, str) else list(group)
    if group and C is None:
        raise TargetCLIPError("text constraints need the CLIP model that scores the essence")
    base = text_embedding(C, check_prompt(neutral, "neutral prompt"), templates) if neutral is not None else None
    out = []
    for text in group:
        e = text_embedding(C, check_prompt(text, "constraint text"), templates)
        d = e if base is None else e - base
        if float(d.norm()) < 1e-6:
            raise TargetCLIPError(f"the constraint text {text!r} embeds like the neutral prompt {neutral!r}")
        out.append((text, F.normalize(d, dim=0).cpu()))
    return out


def text_constraint_loss(edit_codes: torch.Tensor, source_codes: torch.Tensor, C, avoid=(), keep=(),
                         neutral: str | None = None, templates=PLAIN, hinge: bool = True) -> torch.Tensor:
    """The constraint term in one call (embeds the texts each time: in a loop, build text_constraint once)."""
    return text_constraint(C, avoid, keep, neutral, templates, hinge)(edit_codes, source_codes)
