"""SeFa directions (methods.directions.sefa) against the eigen-decomposition computed by hand in numpy float64
from the generator's own affine weights (times their equalised-lr gain), and the StyleSpace affines that the
engine reads off a network by probing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.generators import small_generator, tiny_generator

from targetclip_core.errors import TargetCLIPError
from targetclip_core.methods.directions import (
    load_direction,
    sample_w,
    save_direction,
    sefa_directions,
    sefa_factorization,
    stylespace_affines,
)
from targetclip_core.methods.targetclip.essence import load_essence

torch.set_num_threads(1)

FEATURE_CONVS = ["b4.conv1", "b8.conv0", "b8.conv1", "b16.conv0", "b16.conv1", "b32.conv0", "b32.conv1"]


@pytest.fixture(scope="module")
def G():
    return tiny_generator(32)


def module_of(G, name):
    block, layer = name.split(".")
    return getattr(G.synthesis_blocks[block], layer)


def hand_matrix(G, names, unit_rows=False):
    """A by hand: the rows of each affine's weight times its gain, float64, stacked in the given order."""
    parts = []
    for name in names:
        affine = module_of(G, name).affine
        parts.append(affine.weight.detach().double().numpy() * affine.weight_gain)
    A = np.concatenate(parts)
    return A / np.linalg.norm(A, axis=1, keepdims=True) if unit_rows else A


def hand_eig(A):
    values, vectors = np.linalg.eigh(A.T @ A)
    order = np.argsort(values)[::-1]
    return values[order], vectors[:, order].T


def separated(values, rel=1e-2):
    gaps = np.minimum(np.r_[np.inf, values[:-1] - values[1:]], np.r_[values[:-1] - values[1:], np.inf]) / values[0]
    return [i for i in range(len(values)) if gaps[i] > rel]


def assert_same_eig(ours_values, ours_vectors, values, vectors):
    assert np.abs(ours_values.double().numpy() - values).max() <= 1e-5 * values.max()
    picked = separated(values)
    assert len(picked) >= 3
    ours = ours_vectors.double().numpy()
    for i in picked:
        assert abs(float(ours[i] @ vectors[i])) > 1 - 1e-5, f"eigenvector {i}"
        assert ours[i][np.abs(ours[i]).argmax()] > 0


def test_probed_affines_are_the_weights_times_their_gain(G):
    affines = stylespace_affines(G)
    assert list(affines) == G.layer_names()
    assert {name: a.entry for name, a in affines.items()} == G.layer_wplus_index()
    for name, a in affines.items():
        assert np.abs(a.matrix.double().numpy() - hand_matrix(G, [name])).max() < 1e-6
        assert torch.allclose(a.bias, module_of(G, name).affine.bias)


def test_sefa_on_all_layers_is_the_hand_eigen_decomposition(G):
    values, vectors, names, entries = sefa_factorization(G)
    assert names == FEATURE_CONVS and entries == list(range(G.n_latent))
    assert_same_eig(values, vectors, *hand_eig(hand_matrix(G, FEATURE_CONVS)))
    assert torch.allclose(vectors.double() @ vectors.double().t(), torch.eye(G.w_dim, dtype=torch.float64), atol=1e-5)


@pytest.mark.parametrize("layers, include_torgb, names", [
    ([0, 1], False, ["b4.conv1", "b8.conv0"]),
    ([0, 1], True, ["b4.conv1", "b4.torgb", "b8.conv0"]),
    ([6, 7], False, ["b32.conv1"]),  # entry 7 drives b32.torgb only
    ("middle", False, ["b16.conv1", "b32.conv0", "b32.conv1"]),  # entries 4-7 of 8
])
def test_layer_ranges_pick_the_layers_reading_those_entries(G, layers, include_torgb, names):
    values, vectors, got, _ = sefa_factorization(G, layers, include_torgb=include_torgb)
    assert got == names
    assert_same_eig(values, vectors, *hand_eig(hand_matrix(G, names)))


def test_unit_rows_is_the_official_normalisation(G):
    values, vectors, names, _ = sefa_factorization(G, unit_rows=True)
    assert_same_eig(values, vectors, *hand_eig(hand_matrix(G, names, unit_rows=True)))


def test_first_direction_maximises_the_style_change(G):
    """SeFa's objective: ||A n|| over unit n is largest at n_1, by a wide margin over random directions."""
    A = torch.from_numpy(hand_matrix(G, FEATURE_CONVS)).float()
    _, vectors, _, _ = sefa_factorization(G)
    best = float((A @ vectors[0]).norm())
    rand = torch.nn.functional.normalize(torch.randn(256, G.w_dim, generator=torch.Generator().manual_seed(0)), dim=1)
    assert best >= float((rand @ A.t()).norm(dim=1).max())
    assert best >= float((A @ vectors[1]).norm())


def test_essences_scale_unit_directions_by_the_projected_std(G, tmp_path):
    dirs = sefa_directions(G, k=3, layers=[0, 1, 2], n_samples=2048, seed=1)
    _, vectors, _, _ = sefa_factorization(G, [0, 1, 2])
    x = sample_w(G, 2048, seed=1).double().numpy()
    for i, d in enumerate(dirs):
        hand_std = float(np.std(x @ vectors[i].double().numpy(), ddof=1))
        assert d.info["scale"] == pytest.approx(hand_std, rel=1e-4)
        assert torch.allclose(d.vector[0, :3], (vectors[i] * d.info["scale"]).expand(3, -1), atol=1e-6)
        assert torch.equal(d.vector[0, 3:], torch.zeros_like(d.vector[0, 3:]))
        assert d.info["style_layers"] == ["b4.conv1", "b8.conv0", "b8.conv1"] and d.info["layers"] == [0, 1, 2]
    assert [d.info["eigenvalue"] for d in dirs] == sorted((d.info["eigenvalue"] for d in dirs), reverse=True)
    path = save_direction(tmp_path / "sefa0.safetensors", dirs[0])
    assert torch.equal(load_essence(path, G).vector, dirs[0].vector)
    assert load_direction(path).info == dirs[0].info


def test_fixed_scale_and_bad_requests(G):
    d = sefa_directions(G, k=1, scale=3.0)[0]
    assert float(d.vector[0, 0].norm()) == pytest.approx(3.0, rel=1e-5) and d.info["scale_kind"] == "fixed"
    with pytest.raises(TargetCLIPError, match="scale must be"):
        sefa_directions(G, k=1, scale=-1)
    with pytest.raises(TargetCLIPError, match="k must be"):
        sefa_directions(G, k=G.w_dim + 1)
    with pytest.raises(TargetCLIPError, match="drive no StyleSpace layer"):
        sefa_factorization(small_generator(8), [3])  # entry 3 of an 8 px generator is read by toRGB only


def test_eg3d_affines_and_factorisation_leave_superresolution_out():
    from helpers.eg3d import tiny_eg3d

    G = tiny_eg3d()
    affines = stylespace_affines(G)
    backbone = G.backbone.layer_wplus_index()
    for name, a in affines.items():  # the backbone's own W+ map; the super-resolution reads the last entry
        assert a.entry == (G.n_latent - 1 if name.startswith("superresolution.") else backbone[name]), name
    _, vectors, names, _ = sefa_factorization(G)
    assert names and not any(n.startswith("superresolution.") or n.endswith("torgb") for n in names)
    assert torch.allclose(vectors @ vectors.t(), torch.eye(G.w_dim), atol=1e-5)
