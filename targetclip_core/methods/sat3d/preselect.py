"""SAT3D channel pre-selection (Zhai et al. 2024, Sec. 3.2) and the region parser it takes.

For attributes marked "complex" in the descriptor file, channel pre-selection sets M[a, c] = 1
and M[others, c] = 0 on channels whose gradient maps fall inside the attribute's region: per
channel c the image change |G(s + eps_c e_c) - G(s)| (a finite-difference gradient map) is
measured, its in-region fraction averaged over a few samples, and the channels with fraction
>= d_t (default 0.5), at most top_k of them per region, are selected.  Without a parser
pre-selection is skipped and the matrix records "preselection: skipped (no region parser)".

A region parser is a callable `parser(images, region_name) -> [B, H, W]` in [0, 1];
faces.parsing.load_face_parser gives one for faces (BiSeNet on CelebAMask-HQ classes); a parser
with `check_regions` has the descriptor set's region names checked before training starts.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import torch

from targetclip_core.generators.stylespace import StyleLayout
from targetclip_core.methods.sat3d.regions import RegionParser



@torch.no_grad()
def preselect_channels(G, layout: StyleLayout, latent_bank: torch.Tensor, parser: RegionParser, regions: dict,
                       n_samples: int = 4, top_k: int = 64, d_t: float = 0.5, fd_scale: float = 0.5,
                       chunk: int = 64, seed: int = 0, out_resolution: int | None = None,
                       progress: Callable[[int, int], None] | None = None) -> dict:
    """Channels whose gradient maps fall inside each attribute's region: {attribute: LongTensor}.

    For every channel c the finite-difference gradient map |G(s + eps_c e_c) - G(s)| (eps_c =
    fd_scale * std of the channel over the bank) is summed over colour; its fraction inside
    the parser's region, averaged over n_samples codes, scores the channel.  Channels scoring
    >= d_t are kept, the top_k best per region.  Costs n_channels * n_samples renders, so
    `progress(done, total)` is called after every chunk of them (a UI raises from it to cancel).
    """
    pick = torch.randperm(len(latent_bank), generator=torch.Generator().manual_seed(seed))[:n_samples]
    styles = G.styles(G.to_wplus(latent_bank[pick]))
    flat = layout.flatten(styles)
    bank_styles = layout.flatten(G.styles(G.to_wplus(latent_bank[: min(len(latent_bank), 256)])))
    eps = fd_scale * bank_styles.std(0).clamp(min=1e-3)
    names = sorted(set(regions.values()))
    inside = {r: torch.zeros(layout.n_channels, device=flat.device) for r in names}
    for i in range(len(pick)):
        base_styles = OrderedDict((k, v[i : i + 1]) for k, v in styles.items())
        base = G.synthesis_from_styles(base_styles, out_resolution=out_resolution)
        masks = {r: parser(base, r)[0] for r in names}  # [H, W]
        for start in range(0, layout.n_channels, chunk):
            idx = torch.arange(start, min(start + chunk, layout.n_channels), device=flat.device)
            probe = flat[i : i + 1].repeat(len(idx), 1)
            probe[torch.arange(len(idx)), idx] += eps[idx]
            img = G.synthesis_from_styles(layout.unflatten(probe, base_styles), out_resolution=out_resolution)
            change = (img - base).abs().sum(1)  # [k, H, W]
            total = change.sum((1, 2)).clamp(min=1e-12)
            for r in names:
                inside[r][idx] += (change * masks[r]).sum((1, 2)) / total
            if progress is not None:
                progress(i * layout.n_channels + int(idx[-1]) + 1, len(pick) * layout.n_channels)
    out = {}
    for attr, r in regions.items():
        score = inside[r] / len(pick)
        keep = (score >= d_t).nonzero().flatten()
        keep = keep[score[keep].argsort(descending=True)][:top_k]
        out[attr] = keep.sort().values.cpu()
    return out
