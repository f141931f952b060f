"""GANSpace directions (methods.directions.ganspace): PCA of sampled W against numpy float64 PCA of the same
samples, orthonormal components ordered by variance, essences on a W+ layer range, and their files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.generators import small_generator, tiny_generator

from targetclip_core.errors import LatentError, TargetCLIPError
from targetclip_core.methods.directions import (
    ganspace_directions,
    iter_w,
    load_direction,
    sample_w,
    save_direction,
    w_pca,
)
from targetclip_core.methods.targetclip.essence import apply_essence, load_essence

torch.set_num_threads(1)  # tiny tensors: threads only add contention
N = 4096


@pytest.fixture(scope="module")
def G():
    return tiny_generator(32)


@pytest.fixture(scope="module")
def pca(G):
    return w_pca(G, N, seed=3)


@pytest.fixture(scope="module")
def numpy_pca(G):
    """PCA by hand: float64 covariance (ddof 1) of the same samples, numpy's symmetric eigen-solver."""
    x = sample_w(G, N, seed=3).double().numpy()
    values, vectors = np.linalg.eigh(np.cov(x, rowvar=False))
    order = np.argsort(values)[::-1]
    return x, values[order], vectors[:, order].T


def test_samples_are_the_seeds_and_a_prefix_of_larger_draws(G):
    a = sample_w(G, 1500, seed=5)
    assert a.shape == (1500, G.w_dim)
    assert torch.equal(a, sample_w(G, 1500, seed=5))
    assert torch.equal(a, sample_w(G, 3000, seed=5)[:1500])  # z drawn in fixed blocks
    assert not torch.equal(a, sample_w(G, 1500, seed=6))
    z = torch.randn(1024, G.z_dim, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.allclose(a[:1024], G.mapping(z))
    assert [len(b) for b in iter_w(G, 2500, 0)] == [1024, 1024, 452]


def test_components_are_orthonormal_and_ordered_by_variance(pca, G):
    v = pca.components.double()
    assert torch.allclose(v @ v.t(), torch.eye(G.w_dim, dtype=torch.float64), atol=1e-5)
    assert bool((pca.variances[:-1] >= pca.variances[1:]).all())
    assert pca.explained_variance_ratio.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert torch.allclose(pca.stds, pca.variances.sqrt())


def test_pca_matches_numpy_float64_of_the_same_samples(pca, numpy_pca):
    x, values, vectors = numpy_pca
    assert np.allclose(pca.mean.double().numpy(), x.mean(0), atol=1e-5)
    assert np.abs(pca.variances.double().numpy() - values).max() <= 1e-4 * values.max()
    # eigenvectors are defined where the eigenvalue stands apart from its neighbours
    gaps = np.minimum(np.r_[np.inf, values[:-1] - values[1:]], np.r_[values[:-1] - values[1:], np.inf]) / values[0]
    separated = [i for i in range(len(values)) if gaps[i] > 2e-2]
    assert len(separated) >= 3, "the test generator's W has too few well-separated components to compare"
    ours = pca.components.double().numpy()
    for i in separated:
        assert abs(float(ours[i] @ vectors[i])) > 1 - 1e-4, f"component {i}"
        assert ours[i][np.abs(ours[i]).argmax()] > 0  # the sign convention: largest coordinate positive
    # the std of the samples projected on each component is its sigma, by hand
    for i in separated[:3]:
        assert float(np.std(x @ ours[i], ddof=1)) == pytest.approx(float(pca.stds[i]), rel=1e-4)


def test_directions_are_sigma_times_component_on_the_chosen_entries(G, pca):
    dirs = ganspace_directions(G, k=4, layers=range(6), pca=pca)
    assert [d.info["component"] for d in dirs] == [0, 1, 2, 3]
    for i, d in enumerate(dirs):
        v = d.vector[0]
        assert d.vector.shape == (1, G.n_latent, G.w_dim)
        assert torch.allclose(v[:6], (pca.components[i] * pca.stds[i]).expand(6, -1))
        assert torch.equal(v[6:], torch.zeros_like(v[6:]))
        assert d.info["layers"] == [0, 1, 2, 3, 4, 5] and d.info["method"] == "ganspace"
        assert d.info["explained_variance"] == pytest.approx(float(pca.explained_variance_ratio[i]))
        assert d.info["std"] == pytest.approx(float(v[0].norm()), rel=1e-5)
        assert d.essence.source == "ganspace" and d.essence.generator == G.identity
        assert d.name == f"ganspace_pc{i}_L0-5"
    ratios = [d.info["explained_variance"] for d in dirs]
    assert ratios == sorted(ratios, reverse=True)


def test_direction_file_is_an_essence_file_with_its_info(G, pca, tmp_path):
    d = ganspace_directions(G, k=2, layers="coarse", pca=pca)[1]
    path = save_direction(tmp_path / "pc1.safetensors", d)
    e = load_essence(path, G)  # an ordinary essence file
    assert torch.equal(e.vector, d.vector) and e.name == d.name and e.source == "ganspace"
    back = load_direction(path, G)
    assert back.info == d.info and back.info["layers"] == [0, 1, 2, 3]
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind
    wp = sample_w(G, 2, seed=9)[:, None].expand(-1, G.n_latent, -1)
    with torch.no_grad():
        assert torch.allclose(apply_essence(G, wp, back.essence, strength=2.0), G.synthesis(wp + 2.0 * d.vector))


def test_default_layers_are_all_entries(G, pca):
    d = ganspace_directions(G, k=1, pca=pca)[0]
    assert d.info["layers"] == list(range(G.n_latent)) and d.name == "ganspace_pc0_all"
    assert torch.allclose(d.vector[0], (pca.components[0] * pca.stds[0]).expand(G.n_latent, -1))


def test_bad_requests_are_named(G, pca):
    with pytest.raises(TargetCLIPError, match="k must be"):
        ganspace_directions(G, k=0, pca=pca)
    with pytest.raises(TargetCLIPError, match="out of range"):
        ganspace_directions(G, k=1, layers=[0, 99], pca=pca)
    with pytest.raises(TargetCLIPError, match="at least 2 samples"):
        w_pca(G, 1)
    other = small_generator(32)  # w_dim 32: a PCA of 64-dimensional W does not fit
    with pytest.raises(TargetCLIPError, match="does not fit"):
        ganspace_directions(other, k=1, pca=pca)


def test_class_conditional_generators_need_a_class():
    G = small_generator(16, c_dim=3)
    with pytest.raises(LatentError, match="class-conditional"):
        w_pca(G, 64)
    assert w_pca(G, 64, class_idx=1).components.shape == (G.w_dim, G.w_dim)
