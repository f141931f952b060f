"""StyleCLIP global directions, part 2 (Patashnik et al., ICCV 2021, Sec. 6): a text becomes a StyleSpace edit.

As the StyleCLIP code does it (global_directions/MapTS.py: GetDt, GetBoundary, SplitS; manipulate.MSCode):
  delta_t = normalised(CLIP(target) - CLIP(neutral)), prompts through the ImageNet templates (prompts.py);
  r_c = <delta_i(c), delta_t> per channel (global_statistics); channels with |r_c| < beta are zeroed
  (beta, the disentanglement threshold: 0.15), the rest divided by max |r|, times std_c;
  s_edit = s + alpha * that (alpha, the manipulation strength: 4.1), toRGB codes untouched.
The defaults are those of the StyleCLIP demo (cog_predict.py: strength 4.1, threshold 0.15, its range
0.08-0.3). `normalize=False` / `scale_by_std=False` give the bare alpha * r of the paper's text.

The edit is exact in StyleSpace (`apply_global_direction`, codes as SAT3D's {layer: [B, C]}). As an essence it
is an approximation: every layer's style is an affine map of one W+ entry, so `global_direction_essence`
solves, entry by entry, the least-squares W+ offset whose styles best match the edit (weighted by 1/std_c:
the edit is defined in stds); its relative residual is in the direction's info, and the toRGB codes that a
W+ offset moves as well are not part of the fit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from targetclip_core.errors import TargetCLIPError
from targetclip_core.generators.stylespace import StyleLayout, as_styles
from targetclip_core.methods.directions.common import (
    Direction,
    direction_essence,
    span_name,
    stylespace_affines,
)
from targetclip_core.methods.directions.global_statistics import GlobalStatistics
from targetclip_core.methods.directions.prompts import (
    DEFAULT_NEUTRAL,
    IMAGENET_TEMPLATES,
    text_direction,
)

ALPHA = 4.1  # manipulation strength
BETA = 0.15  # disentanglement threshold


@dataclass
class GlobalDirection:
    """A text's StyleSpace edit per unit strength, and what chose it."""

    layout: StyleLayout
    edit: torch.Tensor  # [n] flat style offset of strength 1 (zero off the selected channels)
    relevance: torch.Tensor  # [n] r_c = <delta_i(c), delta_t>
    std: torch.Tensor  # [n] the channels' stds (the unit of the edit)
    target: str
    neutral: str
    beta: float
    alpha: float  # recommended strength
    generator: dict
    fingerprint: str
    clip: dict

    @property
    def selected(self) -> torch.Tensor:
        """Flat indices of the channels the edit moves."""
        return (self.edit != 0).nonzero().flatten()

    @property
    def name(self) -> str:
        return f"{self.target} (from {self.neutral})"


def channel_relevance(stats: GlobalStatistics, delta_t: torch.Tensor) -> torch.Tensor:
    """[n]: r_c = <delta_i(c), delta_t> for every flat channel (0 for channels not measured)."""
    if delta_t.dim() != 1 or delta_t.shape[0] != stats.deltas.shape[1]:
        raise TargetCLIPError(f"a text direction of shape {list(delta_t.shape)} does not fit statistics of "
                              f"{stats.deltas.shape[1]}-dimensional CLIP embeddings")
    return stats.deltas @ delta_t.float().cpu()


def global_direction(stats: GlobalStatistics, C, target: str, neutral: str = DEFAULT_NEUTRAL, beta: float = BETA,
                     alpha: float = ALPHA, templates=IMAGENET_TEMPLATES, normalize: bool = True,
                     scale_by_std: bool = True, delta_t: torch.Tensor | None = None) -> GlobalDirection:
    """The StyleSpace edit of `target` (relative to `neutral`) from complete statistics.

    C: the CLIP the statistics were measured with (checked), used for the prompts; or pass `delta_t` [D]
    (a text direction of one's own) and C=None. beta: channels with |r_c| below it are left alone.
    """
    if not stats.complete:
        raise TargetCLIPError(f"the global-direction statistics are incomplete ({stats.done} of {stats.total} "
                              "channels): finish them with compute_global_statistics on the same file")
    beta = float(beta)
    if not 0 <= beta < 1:
        raise TargetCLIPError(f"beta (the disentanglement threshold) must be in [0, 1), got {beta}")
    if delta_t is None:
        if C is None:
            raise TargetCLIPError("give the CLIP the statistics were measured with, or a text direction delta_t")
        stats.check_pair(C=C)
        delta_t = text_direction(C, target, neutral, templates)
    r = channel_relevance(stats, delta_t)
    keep = r.abs() >= beta
    if beta == 0:
        keep &= r != 0
    if not bool(keep.any()):
        raise TargetCLIPError(f"no channel reaches the threshold beta={beta:g} for {target!r} (the largest |r| is "
                              f"{float(r.abs().max()):.3f}): lower beta")
    edit = torch.where(keep, r, torch.zeros_like(r))
    if normalize:
        edit = edit / edit.abs().max()
    if scale_by_std:
        edit = edit * stats.std
    return GlobalDirection(stats.layout, edit, r, stats.std.clone(), str(target), str(neutral), beta, float(alpha),
                           dict(stats.generator), stats.fingerprint, dict(stats.clip))


def apply_global_direction(G, source, direction: GlobalDirection, alpha: float | None = None):
    """Edited StyleSpace codes {layer: [B, C]} (toRGB codes the source's): s + alpha * edit.

    source: W [B, w_dim], W+ [B, n_latent, w_dim] or StyleSpace codes; alpha: the direction's own by default
    (negative moves away from the text). Render with G.synthesis_from_styles."""
    styles = as_styles(G, source)
    flat = direction.layout.flatten(styles)  # refuses codes of another layout
    a = direction.alpha if alpha is None else float(alpha)
    return direction.layout.unflatten(flat + a * direction.edit.to(flat.device, flat.dtype), styles)


def global_direction_essence(G, direction: GlobalDirection, weighted: bool = True) -> Direction:
    """The least-squares W+ offset (per unit strength; the essence's strength is the direction's alpha) whose
    edited-layer styles best match the StyleSpace edit; info: method "styleclip-global", target, neutral, beta,
    alpha, channels, layers (W+ entries moved), residual (||A b - edit|| / ||edit||, weighted as fitted)."""
    if StyleLayout.from_generator(G) != direction.layout:
        raise TargetCLIPError("this global direction was made for a generator of another StyleSpace layout")
    affines = stylespace_affines(G)
    edits = dict(zip([name for name, _ in direction.layout.layers],
                     direction.edit.split([c for _, c in direction.layout.layers]), strict=True))
    stds = dict(zip(edits, direction.std.split([c for _, c in direction.layout.layers]), strict=True))
    vector = torch.zeros(1, G.n_latent, G.w_dim)
    err = norm = 0.0
    for entry in range(G.n_latent):
        names = [name for name in edits if affines[name].entry == entry]
        if not names or not any(bool(edits[name].any()) for name in names):
            continue
        A = torch.cat([affines[name].matrix for name in names])
        t = torch.cat([edits[name] for name in names]).float()
        if weighted:  # residuals in stds: a dead channel (std 0) has a zero edit and weighs as little as possible
            s = torch.cat([stds[name] for name in names]).float()
            wgt = 1 / s.clamp(min=max(float(s.max()), 1e-12) * 1e-6)
            A, t = A * wgt[:, None], t * wgt
        x = torch.linalg.lstsq(A, t[:, None], driver="gelsd").solution[:, 0]
        vector[0, entry] = x
        err += float((A @ x - t).square().sum())
        norm += float(t.square().sum())
    entries = [int(e) for e in (vector[0].abs().sum(1) > 0).nonzero().flatten()]
    info = {"method": "styleclip-global", "target": direction.target, "neutral": direction.neutral,
            "beta": direction.beta, "alpha": direction.alpha, "channels": len(direction.selected),
            "layers": entries, "residual": (err / norm) ** 0.5 if norm > 0 else 0.0, "weighted": bool(weighted)}
    slug = "_".join(direction.target.split())[:40]
    name = f"global_{slug}_{span_name(entries, G.n_latent)}" if entries else f"global_{slug}"
    essence = direction_essence(G, vector, name, "styleclip-global", strength=direction.alpha, clip=direction.clip)
    return Direction(essence, info)
