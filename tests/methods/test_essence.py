"""Essences (targetclip_core.essence): applying them, layer ranges, arithmetic, files, and the
official TargetCLIP directions in ../shared/data/targetclip/directions."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.paths import require_shared
from helpers.generators import tiny_generator

from targetclip_core.errors import LatentError, TargetCLIPError
from targetclip_core.methods.targetclip.essence import (
    Essence,
    apply_essence,
    edit_latents,
    layer_mask,
    load_essence,
    mix_essences,
    save_essence,
)

FFHQ = {"arch": "stylegan2", "resolution": 1024, "n_latent": 18, "w_dim": 512}


@pytest.fixture(scope="module")
def G():
    return tiny_generator(32)


def vec(n_latent, w_dim, seed):
    return torch.randn(1, n_latent, w_dim, generator=torch.Generator().manual_seed(seed))


def essence_for(G, seed=0, **kw):
    return Essence(vector=vec(G.n_latent, G.w_dim, seed), generator=G.identity, **kw)


def ffhq_essence(seed=0, **kw):
    return Essence(vector=vec(18, 512, seed), generator=dict(FFHQ), **kw)


def wplus(G, b=2, seed=7):
    return torch.randn(b, G.n_latent, G.w_dim, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- applying


@pytest.mark.parametrize("strength", [1.0, 0.5, -1.2, 0.0])
def test_apply_essence_is_synthesis_of_w_plus_strength_b(G, strength):
    E = essence_for(G)
    wp = wplus(G)
    with torch.no_grad():
        ours = apply_essence(G, wp, E, strength=strength)
        ref = G.synthesis(wp + strength * E.vector)
    assert ours.shape == (2, 3, 32, 32)
    assert torch.allclose(ours, ref, atol=1e-6)


def test_apply_essence_out_resolution(G):
    E = essence_for(G)
    wp = wplus(G)
    with torch.no_grad():
        ours = apply_essence(G, wp, E, out_resolution=16)
        ref = G.synthesis(wp + E.vector, out_resolution=16)
    assert ours.shape == (2, 3, 16, 16) and torch.allclose(ours, ref, atol=1e-6)


def changed_entries(wp, edited):
    return [i for i in range(wp.shape[1]) if not torch.equal(wp[:, i], edited[:, i])]


@pytest.mark.parametrize("layers,expected", [
    (None, list(range(18))),
    ("all", list(range(18))),
    ("coarse", [0, 1, 2, 3]),
    ("middle", [4, 5, 6, 7]),
    ("fine", list(range(8, 18))),
    ("coarse,fine", [0, 1, 2, 3] + list(range(8, 18))),
    (" middle , coarse ", list(range(8))),
    ([1, 5, 17], [1, 5, 17]),
    (range(2, 4), [2, 3]),
    ((0,), [0]),
])
def test_edit_latents_layer_ranges(layers, expected):
    E = ffhq_essence()
    wp = torch.randn(3, 18, 512, generator=torch.Generator().manual_seed(1))
    out = edit_latents(wp, E, strength=0.7, layers=layers)
    assert changed_entries(wp, out) == expected
    for i in expected:
        assert torch.allclose(out[:, i], wp[:, i] + 0.7 * E.vector[:, i], atol=1e-6)


def test_layer_mask_by_hand():
    assert layer_mask(18, "coarse").tolist() == [1.0] * 4 + [0.0] * 14
    assert layer_mask(18, "fine").tolist() == [0.0] * 8 + [1.0] * 10
    assert layer_mask(8, "middle").tolist() == [0.0] * 4 + [1.0] * 4
    assert layer_mask(6, [0, 5]).tolist() == [1.0, 0, 0, 0, 0, 1.0]


def test_apply_essence_on_a_layer_range_is_synthesis_of_the_masked_edit(G):
    E = essence_for(G)
    wp = wplus(G)
    masked = E.vector.clone()
    masked[:, 4:] = 0  # coarse = entries 0-3
    with torch.no_grad():
        assert torch.allclose(apply_essence(G, wp, E, strength=0.8, layers="coarse"), G.synthesis(wp + 0.8 * masked), atol=1e-6)
        only = torch.zeros_like(E.vector)
        only[:, [2, 6]] = E.vector[:, [2, 6]]
        assert torch.allclose(apply_essence(G, wp, E, layers=[2, 6]), G.synthesis(wp + only), atol=1e-6)


@pytest.mark.parametrize("layers", ["hair", "coarse,bogus", "0-3", [18], [-1], [0, 99]])
def test_invalid_layers_are_targetclip_errors(layers):
    E = ffhq_essence()
    wp = torch.zeros(1, 18, 512)
    with pytest.raises(TargetCLIPError):
        edit_latents(wp, E, layers=layers)


def test_latents_of_another_layout_are_refused(G):
    E = essence_for(G)
    with pytest.raises(LatentError):
        edit_latents(torch.zeros(1, 18, 512), E)
    with pytest.raises(LatentError):
        edit_latents(torch.zeros(G.n_latent, G.w_dim), E)  # missing batch dim
    with pytest.raises(LatentError, match="1024px"):
        apply_essence(G, wplus(G), ffhq_essence())


def test_essence_vector_is_validated():
    with pytest.raises(LatentError):
        Essence(vector=torch.zeros(18, 512), generator=dict(FFHQ))
    with pytest.raises(LatentError):
        Essence(vector=torch.zeros(2, 18, 512), generator=dict(FFHQ))
    bad = torch.zeros(1, 18, 512)
    bad[0, 3, 4] = float("nan")
    with pytest.raises(LatentError, match="NaN"):
        Essence(vector=bad, generator=dict(FFHQ))


# --------------------------------------------------------------------------- arithmetic


def test_mix_essences_weighted_sum():
    a, b, c = ffhq_essence(1, name="a"), ffhq_essence(2, name="b"), ffhq_essence(3, name="c")
    m = mix_essences([a, b, c], [0.5, -1.25, 2.0])
    assert torch.allclose(m.vector, 0.5 * a.vector - 1.25 * b.vector + 2.0 * c.vector, atol=1e-6)
    assert m.generator == FFHQ and m.source == "mix"
    plain = mix_essences([a, b])
    assert torch.allclose(plain.vector, a.vector + b.vector, atol=1e-6)
    assert torch.allclose((a + b).vector, a.vector + b.vector, atol=1e-6)
    assert torch.equal((-a).vector, -a.vector)
    assert torch.allclose((2.5 * a).vector, 2.5 * a.vector) and torch.allclose((a * 2.5).vector, 2.5 * a.vector)
    assert torch.allclose((a + -b).vector, a.vector - b.vector, atol=1e-6)
    # inputs untouched
    assert torch.equal(a.vector, vec(18, 512, 1))


def test_mix_strength_is_the_weighted_mean_of_strengths():
    a, b = ffhq_essence(1, strength=0.5), ffhq_essence(2, strength=1.5)
    assert mix_essences([a, b], [1.0, -3.0]).strength == pytest.approx((1 * 0.5 + 3 * 1.5) / 4)


def test_mixing_essences_of_different_generators_is_a_latent_error(G):
    with pytest.raises(LatentError):
        mix_essences([ffhq_essence(), essence_for(G)])
    with pytest.raises(LatentError):
        ffhq_essence() + essence_for(G)
    same_shape_other_res = Essence(vector=vec(18, 512, 4), generator={**FFHQ, "resolution": 512})
    with pytest.raises(LatentError):
        mix_essences([ffhq_essence(), same_shape_other_res])


def test_mix_argument_errors():
    with pytest.raises(TargetCLIPError):
        mix_essences([])
    with pytest.raises(TargetCLIPError):
        mix_essences([ffhq_essence(), ffhq_essence(1)], [1.0])


# --------------------------------------------------------------------------- files


def full_essence(G):
    return Essence(
        vector=vec(G.n_latent, G.w_dim, 5),
        generator=G.identity,
        clip={"name": "TargetCLIP-Tiny", "pretrained": ""},
        thumbnail=torch.randint(0, 256, (64, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(6)),
        losses={"total": [0.7, 0.31234567890123, 1e-7], "similarity": [0.5, 0.25, 0.125], "consistency": [1.0, 0.1, 0.0],
                "l2": [0.0, 2.5, 3.75]},
        steps=3,
        strength=0.85,
        name="joker ünïcode",
        source="optimized",
        coefficients=torch.tensor([1.0, 0.9, 1.1, 1.2]),
    )


def test_save_load_round_trip_is_bit_identical(G, tmp_path):
    E = full_essence(G)
    path = save_essence(tmp_path / "sub" / "joker.safetensors", E)
    assert path == tmp_path / "sub" / "joker.safetensors" and path.is_file()
    L = load_essence(path)
    assert torch.equal(L.vector, E.vector) and L.vector.dtype == torch.float32
    assert torch.equal(L.thumbnail, E.thumbnail) and L.thumbnail.dtype == torch.uint8
    assert torch.equal(L.coefficients, E.coefficients)
    assert L.losses == E.losses
    assert (L.steps, L.strength, L.name, L.source) == (3, 0.85, "joker ünïcode", "optimized")
    assert L.generator == G.identity
    assert L.clip == {"name": "TargetCLIP-Tiny", "pretrained": ""}
    # and it is usable on its generator
    assert load_essence(path, generator=G).n_latent == G.n_latent
    assert sorted(p.name for p in path.parent.iterdir()) == ["joker.safetensors"]


def test_save_load_minimal_essence(G, tmp_path):
    E = Essence(vector=vec(G.n_latent, G.w_dim, 8), generator=G.identity)
    L = load_essence(save_essence(tmp_path / "e.safetensors", E))
    assert torch.equal(L.vector, E.vector)
    assert L.thumbnail is None and L.coefficients is None and L.clip is None
    assert L.losses == {} and L.steps == 0 and L.strength == 1.0


def test_the_file_is_a_plain_safetensors_with_metadata(G, tmp_path):
    from safetensors import safe_open

    path = save_essence(tmp_path / "e.safetensors", full_essence(G))
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        assert meta["format"] == "targetclip.essence"
        assert json.loads(meta["generator"]) == G.identity
        assert f.get_tensor("essence").shape == (1, G.n_latent, G.w_dim)


def official_directions():
    d = require_shared("data", "targetclip", "directions")
    files = sorted(d.glob("*.npy"))
    if not files:
        pytest.skip(f"no official directions in {d}")
    return files


def test_official_npy_directions_load():
    files = official_directions()
    for f in files:
        E = load_essence(f)
        ref = np.load(f)
        assert E.vector.shape == (1, 18, 512) and ref.shape == (1, 18, 512)
        assert E.vector.dtype == torch.float32
        assert np.array_equal(E.vector.numpy(), ref)
        assert E.generator["resolution"] == 1024 and E.generator["n_latent"] == 18 and E.generator["w_dim"] == 512
        assert E.name == f.stem and E.source == "official-npy"
    # real vectors: distinct, not all zero
    a, b = load_essence(files[0]).vector, load_essence(files[1]).vector
    assert a.abs().sum() > 0 and not torch.equal(a, b)


def test_official_directions_arithmetic_and_edit():
    files = official_directions()
    a, b = load_essence(files[0]), load_essence(files[1])
    m = mix_essences([a, b], [0.6, 0.4])
    assert torch.allclose(m.vector, torch.from_numpy(0.6 * np.load(files[0]) + 0.4 * np.load(files[1])), atol=1e-6)
    wp = torch.zeros(2, 18, 512)
    out = edit_latents(wp, a, strength=1.2, layers="fine")
    assert torch.equal(out[:, :8], wp[:, :8])
    assert torch.allclose(out[:, 8:], 1.2 * torch.from_numpy(np.load(files[0]))[:, 8:].expand(2, -1, -1), atol=1e-6)


def test_official_direction_on_a_small_generator_names_both_layouts(G):
    f = official_directions()[0]
    with pytest.raises(LatentError) as info:
        load_essence(f, generator=G)
    msg = str(info.value)
    assert "1024px, 18x512" in msg and "32px, 8x64" in msg


def test_our_file_for_another_layout_is_refused(G, tmp_path):
    path = save_essence(tmp_path / "ffhq.safetensors", ffhq_essence(name="ffhq"))
    with pytest.raises(LatentError) as info:
        load_essence(path, generator=G)
    assert "1024px, 18x512" in str(info.value) and "32px, 8x64" in str(info.value)
    # same W+ shape, other resolution recorded: also refused
    G64 = tiny_generator(64)
    other = Essence(vector=vec(G64.n_latent, G64.w_dim, 1), generator={**G64.identity, "resolution": 128})
    with pytest.raises(LatentError, match="128px"):
        load_essence(save_essence(tmp_path / "x.safetensors", other), generator=G64)


# ---- corrupt and foreign files: clear errors, never numpy/safetensors tracebacks, never pickle


class _Boom:
    """Unpickling this would create a marker file: it must never happen."""

    marker: Path | None = None

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _corrupt_files(tmp_path: Path, G) -> dict[str, Path]:
    files = {}
    good = save_essence(tmp_path / "good.safetensors", full_essence(G))
    data = good.read_bytes()
    for name, cut in [("truncated_half", len(data) // 2), ("truncated_header", 20), ("just_length", 8), ("empty", 0)]:
        files[name] = tmp_path / f"{name}.safetensors"
        files[name].write_bytes(data[:cut])
    files["random_safetensors"] = tmp_path / "random.safetensors"
    files["random_safetensors"].write_bytes(os.urandom(300))

    from safetensors.torch import save_file

    files["other_format"] = tmp_path / "generator.safetensors"
    save_file({"w": torch.zeros(2)}, str(files["other_format"]), metadata={"format": "targetclip.stylegan2"})
    files["no_metadata"] = tmp_path / "plain.safetensors"
    save_file({"essence": torch.zeros(1, 8, 64)}, str(files["no_metadata"]))
    files["no_vector"] = tmp_path / "novector.safetensors"
    save_file({"thumbnail": torch.zeros(4, 4, 3, dtype=torch.uint8)}, str(files["no_vector"]), metadata={"format": "targetclip.essence"})
    files["bad_json"] = tmp_path / "badjson.safetensors"
    save_file({"essence": torch.zeros(1, 8, 64)}, str(files["bad_json"]), metadata={"format": "targetclip.essence", "generator": "{oops"})
    files["bad_steps"] = tmp_path / "badsteps.safetensors"
    save_file({"essence": torch.zeros(1, 8, 64)}, str(files["bad_steps"]), metadata={"format": "targetclip.essence", "steps": "many"})
    files["nan_strength"] = tmp_path / "nanstrength.safetensors"
    save_file({"essence": torch.zeros(1, 8, 64)}, str(files["nan_strength"]), metadata={"format": "targetclip.essence", "strength": "nan"})
    files["nan_vector"] = tmp_path / "nanvector.safetensors"
    save_file({"essence": torch.full((1, 8, 64), float("nan"))}, str(files["nan_vector"]), metadata={"format": "targetclip.essence"})
    files["flat_vector"] = tmp_path / "flat.safetensors"
    save_file({"essence": torch.zeros(8, 64)}, str(files["flat_vector"]), metadata={"format": "targetclip.essence"})

    files["random_npy"] = tmp_path / "random.npy"
    files["random_npy"].write_bytes(os.urandom(500))
    npy = tmp_path / "tmp_good.npy"
    np.save(npy, np.zeros((1, 18, 512), np.float32))
    raw = npy.read_bytes()
    npy.unlink()
    files["truncated_npy"] = tmp_path / "truncated.npy"
    files["truncated_npy"].write_bytes(raw[: len(raw) // 2])
    files["bad_header_npy"] = tmp_path / "badheader.npy"
    files["bad_header_npy"].write_bytes(raw[:10] + b"{'descr': garbage}".ljust(len(raw[10:128]), b" ") + raw[128:])
    files["empty_npy"] = tmp_path / "empty.npy"
    files["empty_npy"].write_bytes(b"")
    files["wrong_shape_npy"] = tmp_path / "wrongshape.npy"
    np.save(files["wrong_shape_npy"], np.zeros((2, 18, 512), np.float32))
    files["vector_npy"] = tmp_path / "vector.npy"
    np.save(files["vector_npy"], np.zeros((512,), np.float32))
    files["int_npy"] = tmp_path / "ints.npy"
    np.save(files["int_npy"], np.zeros((1, 18, 512), np.int64))
    files["nan_npy"] = tmp_path / "nan.npy"
    np.save(files["nan_npy"], np.full((1, 18, 512), np.nan, np.float32))
    files["object_npy"] = tmp_path / "object.npy"
    np.save(files["object_npy"], np.array([_Boom()], dtype=object), allow_pickle=True)
    files["pickle_as_npy"] = tmp_path / "pickle.npy"
    files["pickle_as_npy"].write_bytes(pickle.dumps(_Boom()))
    files["other_suffix"] = tmp_path / "essence.pt"
    files["other_suffix"].write_bytes(b"whatever")
    return files


CORRUPT = ["truncated_half", "truncated_header", "just_length", "empty", "random_safetensors", "other_format",
           "no_metadata", "no_vector", "bad_json", "bad_steps", "nan_strength", "nan_vector", "flat_vector",
           "random_npy", "truncated_npy", "bad_header_npy", "empty_npy", "wrong_shape_npy", "vector_npy", "int_npy",
           "nan_npy", "object_npy", "pickle_as_npy", "other_suffix"]


@pytest.fixture
def corrupt(tmp_path, G):
    marker = tmp_path / "PICKLE_RAN"
    _Boom.marker = marker
    try:
        yield _corrupt_files(tmp_path, G), marker
    finally:
        _Boom.marker = None


@pytest.mark.parametrize("kind", CORRUPT)
def test_corrupt_or_foreign_files_give_clear_errors(corrupt, kind):
    files, marker = corrupt
    path = files[kind]
    with pytest.raises(TargetCLIPError) as info:
        load_essence(path)
    assert not marker.exists(), "a pickle payload was executed"
    msg = str(info.value)
    # (a NaN or mis-shaped vector is reported by the Essence check, which does not name the file)
    if kind not in ("nan_vector", "flat_vector", "nan_npy"):
        assert str(path) in msg, msg
    if kind in ("other_format", "no_metadata"):
        assert "not a TargetCLIP essence" in msg
    if kind in ("wrong_shape_npy", "int_npy"):
        assert isinstance(info.value, LatentError)


def test_missing_file_is_a_targetclip_error(tmp_path):
    with pytest.raises(TargetCLIPError, match="no such essence file"):
        load_essence(tmp_path / "nope.safetensors")


def test_two_dimensional_npy_is_accepted_as_one_direction(tmp_path):
    arr = np.random.default_rng(0).standard_normal((18, 512)).astype(np.float32)
    np.save(tmp_path / "d.npy", arr)
    E = load_essence(tmp_path / "d.npy")
    assert E.vector.shape == (1, 18, 512) and np.array_equal(E.vector[0].numpy(), arr)


# ---- atomic saves


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_failing_save_leaves_no_file(G, tmp_path, monkeypatch):
    import safetensors.torch

    def boom(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")  # fail half-way through the write
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    target = tmp_path / "out" / "e.safetensors"
    with pytest.raises(OSError, match="disk full"):
        save_essence(target, full_essence(G))
    assert not target.exists()
    assert _leftovers(target.parent) == []  # no .part left behind


def test_failing_save_keeps_the_previous_file(G, tmp_path, monkeypatch):
    import safetensors.torch

    target = save_essence(tmp_path / "e.safetensors", full_essence(G))
    before = target.read_bytes()

    def boom(tensors, filename, metadata=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(KeyboardInterrupt):
        save_essence(target, essence_for(G, 9))
    assert target.read_bytes() == before
    assert _leftovers(tmp_path) == ["e.safetensors"]


def test_a_layer_range_that_selects_nothing_is_refused():
    with pytest.raises(TargetCLIPError, match="selects no W\\+ entry"):
        layer_mask(8, "fine")  # a 32px generator has entries 0-7 only


def test_errors_about_an_essence_file_name_the_file(tmp_path):
    path = tmp_path / "broken.npy"
    arr = np.zeros((1, 18, 512), dtype=np.float32)
    arr[0, 2, 3] = np.nan
    np.save(path, arr)
    with pytest.raises(LatentError, match="broken.npy.*NaN"):
        load_essence(path)
