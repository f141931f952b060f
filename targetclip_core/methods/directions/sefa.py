"""SeFa, closed-form factorisation (Shen & Zhou, CVPR 2021, Sec. 3): the eigenvectors of A^T A as directions.

A stacks (along the output dim) the modulation matrices of the chosen layers, the matrix that turns w into
each layer's style code with the equalised-lr gain applied as the network applies it (read off the network
by common.stylespace_affines). The unit vectors n maximising ||A n||^2 are the eigenvectors of A^T A with
the largest eigenvalues (paper Eq. 6); the top k are returned, signs fixed by common.fix_sign.

Layers are chosen by W+ entry (as GANSpace and essences choose them): every feature conv reading one of the
entries (toRGB with include_torgb). The official code (genforce/sefa, utils.factorize_weight) also scales
each output row of A to unit norm first; that variant is `unit_rows=True` (off: the paper's A).

Scale of the essence: a unit eigenvector says nothing about how far to move, so each essence is
n * std(<w, n>), the standard deviation of sampled W (no truncation) projected on n: strength 1 is one
standard deviation of the data along the direction, the same unit as a GANSpace essence. `scale=<number>`
gives a fixed length instead (the official demo moves w by up to 3 x the unit vector).
"""

from __future__ import annotations

import torch

from targetclip_core.errors import TargetCLIPError
from targetclip_core.methods.directions.common import (
    Direction,
    affines_on_entries,
    direction_essence,
    fix_sign,
    projected_std,
    span_name,
    stylespace_affines,
    wplus_entries,
    wplus_offset,
)

SCALE_SAMPLES = 10_000  # W samples behind the default scale (projected std converges fast)


def stacked_affines(G, layers=None, include_torgb: bool = False, unit_rows: bool = False
                    ) -> tuple[torch.Tensor, list[str], list[int]]:
    """(A [sum of channels, w_dim], the layer names stacked, the W+ entries) for a layer range."""
    entries = wplus_entries(G, layers)
    picked = affines_on_entries(stylespace_affines(G), entries, include_torgb)
    A = torch.cat([a.matrix for a in picked.values()])
    if unit_rows:
        A = A / A.norm(dim=1, keepdim=True).clamp(min=torch.finfo(A.dtype).tiny)
    return A, list(picked), entries


def sefa_factorization(G, layers=None, include_torgb: bool = False, unit_rows: bool = False
                       ) -> tuple[torch.Tensor, torch.Tensor, list[str], list[int]]:
    """(eigenvalues [w_dim] decreasing, eigenvectors [w_dim, w_dim] as unit rows, layers, W+ entries) of A^T A."""
    A, names, entries = stacked_affines(G, layers, include_torgb, unit_rows)
    gram = A.t() @ A
    values, vectors = torch.linalg.eigh(0.5 * (gram + gram.t()))  # ascending, eigenvectors as columns
    order = torch.argsort(values, descending=True)
    return values[order].clamp(min=0), fix_sign(vectors[:, order].t().contiguous()), names, entries


def sefa_directions(G, k: int = 5, layers=None, scale="std", include_torgb: bool = False, unit_rows: bool = False,
                    n_samples: int = SCALE_SAMPLES, seed: int = 0) -> list[Direction]:
    """The top-k SeFa directions of the layers reading the W+ entries `layers` (None/"all", "coarse", ...,
    indices), each an essence on those entries: n_k * scale_k with scale "std" (the std of sampled W along
    n_k, see the module docstring) or a fixed positive number.

    Each direction's info: method "sefa", component, layers (W+ indices), style_layers, eigenvalue,
    eigenvalue_ratio (its share of the trace), scale, unit_rows, include_torgb.
    """
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= G.w_dim:
        raise TargetCLIPError(f"k must be a whole number of directions in [1, {G.w_dim}], got {k!r}")
    values, vectors, names, entries = sefa_factorization(G, layers, include_torgb, unit_rows)
    if scale == "std":
        scales = projected_std(G, vectors[:k], n_samples, seed)
    elif isinstance(scale, (int, float)) and not isinstance(scale, bool) and float(scale) > 0:
        scales = torch.full((k,), float(scale))
    else:
        raise TargetCLIPError(f"scale must be 'std' or a positive number, got {scale!r}")
    trace = float(values.sum()) or 1.0
    span = span_name(entries, G.n_latent)
    out = []
    for i in range(k):
        info = {"method": "sefa", "component": i, "layers": entries, "style_layers": names,
                "eigenvalue": float(values[i]), "eigenvalue_ratio": float(values[i]) / trace,
                "scale": float(scales[i]), "scale_kind": "std" if scale == "std" else "fixed",
                "unit_rows": bool(unit_rows), "include_torgb": bool(include_torgb)}
        vector = wplus_offset(G, vectors[i] * scales[i], entries)
        out.append(Direction(direction_essence(G, vector, f"sefa_{i}_{span}", "sefa"), info))
    return out
