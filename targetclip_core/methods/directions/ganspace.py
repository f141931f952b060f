"""GANSpace (Härkönen et al., NeurIPS 2020, Sec. 2): principal components of W as edit directions.

W is sampled from the mapping network (z ~ N(0, I), no truncation; the paper uses 10^6 samples, the default
here is 10^5: the variances of a covariance from that many are within about sqrt(2/n) = 0.5%), PCA gives unit
components v_k ordered by explained variance and their standard deviations sigma_k = sqrt(lambda_k).
An edit moves w by x * sigma_k * v_k on a chosen range of W+ entries (the paper's "layerwise edits": e.g.
entries 0-5), so one essence of strength 1 is one standard deviation along the component.

The covariance is accumulated batch by batch in float32 (sums shifted by the first batch's mean, so no
cancellation), the eigen-decomposition is torch.linalg.eigh in float32; signs are fixed with common.fix_sign.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from targetclip_core.errors import TargetCLIPError
from targetclip_core.methods.directions.common import (
    Direction,
    direction_essence,
    fix_sign,
    iter_w,
    span_name,
    wplus_entries,
    wplus_offset,
)

DEFAULT_SAMPLES = 100_000


@dataclass
class WPCA:
    """PCA of sampled W: components [w_dim, w_dim] (rows, unit, by decreasing variance) and their variances."""

    mean: torch.Tensor  # [w_dim]
    components: torch.Tensor  # [w_dim, w_dim], row k = v_k
    variances: torch.Tensor  # [w_dim], lambda_k (unbiased sample variance along v_k), decreasing
    n_samples: int
    seed: int

    @property
    def stds(self) -> torch.Tensor:
        return self.variances.clamp(min=0).sqrt()

    @property
    def explained_variance_ratio(self) -> torch.Tensor:
        return self.variances / self.variances.sum().clamp(min=torch.finfo(torch.float32).tiny)


def w_pca(G, n_samples: int = DEFAULT_SAMPLES, seed: int = 0, class_idx: int | None = None) -> WPCA:
    """PCA over `n_samples` W from the mapping network (common.iter_w: the same samples for a seed)."""
    if n_samples < 2:
        raise TargetCLIPError(f"PCA needs at least 2 samples, got {n_samples}")
    d = G.w_dim
    shift = s1 = s2 = None
    count = 0
    for w in iter_w(G, n_samples, seed, class_idx=class_idx):
        if shift is None:
            shift = w.mean(0)
            s1, s2 = torch.zeros(d, device=w.device), torch.zeros(d, d, device=w.device)
        x = w - shift
        s1 += x.sum(0)
        s2 += x.t() @ x
        count += len(x)
    mean = shift + s1 / count
    cov = (s2 - torch.outer(s1, s1) / count) / (count - 1)
    cov = 0.5 * (cov + cov.t())  # symmetric to the last bit, as eigh assumes
    variances, vectors = torch.linalg.eigh(cov.cpu())  # ascending; columns are the eigenvectors
    order = torch.argsort(variances, descending=True)
    return WPCA(mean.cpu(), fix_sign(vectors[:, order].t().contiguous()), variances[order].clamp(min=0), count, seed)


def ganspace_directions(G, k: int = 10, n_samples: int = DEFAULT_SAMPLES, seed: int = 0, layers=None,
                        class_idx: int | None = None, pca: WPCA | None = None) -> list[Direction]:
    """The first `k` principal components of W as directions: essence k = sigma_k * v_k on the W+ entries of
    `layers` (None/"all", "coarse", "middle", "fine", or indices such as range(0, 6)), zeros elsewhere.

    Each direction's info: method "ganspace", component, layers (the W+ indices), variance, std,
    explained_variance (the component's share of the total), n_samples, seed. Pass `pca` (w_pca's result)
    to cut several layer ranges from one PCA.
    """
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= G.w_dim:
        raise TargetCLIPError(f"k must be a whole number of components in [1, {G.w_dim}], got {k!r}")
    entries = wplus_entries(G, layers)
    pca = pca if pca is not None else w_pca(G, n_samples, seed, class_idx)
    if pca.components.shape != (G.w_dim, G.w_dim):
        raise TargetCLIPError(f"a PCA of {pca.components.shape[1]}-dimensional W does not fit this generator "
                              f"(w_dim {G.w_dim})")
    ratio, stds = pca.explained_variance_ratio, pca.stds
    span = span_name(entries, G.n_latent)
    out = []
    for i in range(k):
        vector = wplus_offset(G, pca.components[i] * stds[i], entries)
        info = {"method": "ganspace", "component": i, "layers": entries, "variance": float(pca.variances[i]),
                "std": float(stds[i]), "explained_variance": float(ratio[i]), "n_samples": pca.n_samples,
                "seed": pca.seed}
        out.append(Direction(direction_essence(G, vector, f"ganspace_pc{i}_{span}", "ganspace"), info))
    return out
