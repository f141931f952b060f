"""StyleGAN3 network pickles (NVlabs/stylegan3): our loader against the reference outputs of the shared
fixtures stylegan3_t_32, stylegan3_r_32 (StyleGAN3-T / -R) and stylegan3_sg2_32 (that code base's StyleGAN2).

The pickles are written by helpers.stylegan3_pickles exactly as each manifest describes (persistent records,
numpy 1.x names); every expectation is the reference implementation's output stored in the fixture's .npz,
or a hand-derived value. rel error = max|ours - ref| / max|ref| < 1e-4 (float32, CPU).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.paths import fixture_state_dict, require_shared
from helpers.stylegan3_pickles import (
    PAYLOAD_GLOBALS,
    SRC_STYLEGAN2,
    SRC_STYLEGAN3,
    STYLEGAN3_FIXTURES,
    TRAINING_COPY_SCALE,
    load_manifest,
    manifest_init_kwargs,
    payload_source,
    plain_pickle_load,
    write_stylegan3_fixture_pickle,
    write_stylegan3_payload_pickle,
)

from targetclip_core.errors import CheckpointError, UnsafePickleError
from targetclip_core.formats.network_pickle import load_network_pickle
from targetclip_core.formats.pickle_records import PersistentRecord

T, R, SG2 = STYLEGAN3_FIXTURES
SG3 = (T, R)
TOL = 1e-4


def rel_error(ours, ref) -> float:
    ours = torch.as_tensor(ours).detach().to("cpu", torch.float64)
    ref = torch.as_tensor(np.asarray(ref)).to(torch.float64)
    assert ours.shape == ref.shape, (list(ours.shape), list(ref.shape))
    return float((ours - ref).abs().max() / ref.abs().max())


# --------------------------------------------------------------------------- fixtures (written / loaded once)


@pytest.fixture(scope="module")
def fixtures() -> Path:
    return require_shared("fixtures")


@pytest.fixture(scope="module")
def pickle_paths(fixtures, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("sg3_pickles")
    return {name: write_stylegan3_fixture_pickle(out / f"{name}.pkl", fixtures, name) for name in STYLEGAN3_FIXTURES}


@pytest.fixture(scope="module")
def refs(fixtures) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for name in STYLEGAN3_FIXTURES:
        with np.load(fixtures / f"{name}.npz") as data:
            out[name] = {k: data[k] for k in data.files}
    return out


@pytest.fixture(scope="module")
def generators(pickle_paths):
    """name -> our generator loaded from the written pickle (loaded on first use)."""
    from targetclip_core.generators.load import load_generator

    cache: dict = {}

    def get(name: str):
        if name not in cache:
            cache[name] = load_generator(pickle_paths[name], device="cpu")
        return cache[name]

    return get


# --------------------------------------------------------------------------- the writer itself (our reader only)


@pytest.mark.parametrize("name", STYLEGAN3_FIXTURES)
def test_written_pickle_holds_the_manifest_layout(name, fixtures, pickle_paths):
    raw = pickle_paths[name].read_bytes()
    assert raw[:2] == b"\x80\x04"  # protocol 4
    assert b"numpy.core.multiarray" in raw and b"numpy._core" not in raw  # numpy 1.x names, as published
    stylegan3 = name != SG2
    # one shared module_src str per source module (pickle memo after the first)
    assert raw.count(SRC_STYLEGAN3.encode()) == (1 if stylegan3 else 0)
    assert raw.count(SRC_STYLEGAN2.encode()) == 1

    data = load_network_pickle(pickle_paths[name])
    assert list(data) == ["G", "D", "G_ema", "augment_pipe", "training_set_kwargs"]
    g_ema = data["G_ema"]
    assert isinstance(g_ema, PersistentRecord) and g_ema.class_name == "Generator" and g_ema.version == 6
    assert g_ema.module_src == (SRC_STYLEGAN3 if stylegan3 else SRC_STYLEGAN2)
    assert data["D"].class_name == "Discriminator" and data["D"].module_src == SRC_STYLEGAN2
    assert isinstance(data["training_set_kwargs"], dict)

    ref = fixture_state_dict(fixtures, name)
    sd = g_ema.state_dict()
    assert set(sd) == set(ref)
    for key, value in ref.items():
        assert sd[key].dtype == torch.float32 and torch.equal(sd[key], value), key
    training_copy = data["G"].state_dict()
    key = next(iter(ref))
    assert torch.equal(training_copy[key], ref[key] * TRAINING_COPY_SCALE)
    assert g_ema.init_kwargs == manifest_init_kwargs(fixtures, name)


def _module_state(record: PersistentRecord, path: str) -> dict:
    for part in path.split("."):
        record = record.state["_modules"][part]
    return record.state


@pytest.mark.parametrize("name", SG3)
def test_written_pickle_keeps_numpy_types_and_none_filters(name, fixtures, pickle_paths):
    manifest = load_manifest(fixtures, name)
    g_ema = load_network_pickle(pickle_paths[name])["G_ema"]
    layer0 = f"synthesis.{manifest['pickle']['modules'][1]['attributes']['layer_names'][0]}"
    state = _module_state(g_ema, layer0)
    assert isinstance(state["in_size"], np.ndarray) and state["in_size"].dtype == np.int64
    assert type(state["in_cutoff"]) is np.float64 and type(state["use_fp16"]) is np.bool_
    assert state["_init_args"] == () and isinstance(state["padding"], list)
    last = f"synthesis.{manifest['pickle']['modules'][1]['attributes']['layer_names'][-1]}"
    buffers = _module_state(g_ema, last)["_buffers"]
    assert "up_filter" in buffers and buffers["up_filter"] is None and buffers["down_filter"] is None
    assert type(_module_state(g_ema, "synthesis.input")["sampling_rate"]) is np.float64


def test_written_pickle_reads_with_the_stock_unpickler_and_numpy2_names(fixtures, pickle_paths, tmp_path):
    # An ordinary pickle that the stock unpickler (which real NVlabs code uses) reads too.
    plain = plain_pickle_load(pickle_paths[T])
    meta = plain["G_ema"]
    assert set(meta) == {"type", "version", "module_src", "class_name", "state"} and meta["type"] == "class"
    mapping = meta["state"]["_modules"]["mapping"]
    w_avg = fixture_state_dict(fixtures, T)["mapping.w_avg"]
    assert torch.equal(mapping["state"]["_buffers"]["w_avg"], w_avg)
    # The numpy 2 spelling reads the same.
    path2 = write_stylegan3_fixture_pickle(tmp_path / "np2.pkl", fixtures, T, numpy2_names=True)
    raw = path2.read_bytes()
    assert b"numpy._core.multiarray" in raw and b"numpy.core.multiarray" not in raw
    a = load_network_pickle(pickle_paths[T])["G_ema"]
    b = load_network_pickle(path2)["G_ema"]
    state_a, state_b = _module_state(a, "synthesis.input"), _module_state(b, "synthesis.input")
    assert np.array_equal(state_a["size"], state_b["size"]) and state_a["bandwidth"] == state_b["bandwidth"]
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


# --------------------------------------------------------------------------- StyleGAN3-T / -R conformance


@pytest.mark.parametrize("name", SG3)
def test_stylegan3_mapping_and_truncation(name, generators, refs):
    G, ref = generators(name), refs[name]
    assert re.search(rf"StyleGAN3\W?{'T' if name == T else 'R'}\b", G.describe()), G.describe()
    assert G.n_latent == 16 and G.resolution == 32
    z = torch.from_numpy(ref["z"])
    with torch.no_grad():
        assert rel_error(G.to_wplus(G.mapping(z)), ref["ws"]) < TOL
        assert rel_error(G.to_wplus(G.mapping(z, truncation=0.7)), ref["ws_trunc07"]) < TOL
    assert rel_error(G.mapping_network.w_avg, ref["w_avg"]) < TOL


@pytest.mark.parametrize("name", SG3)
@pytest.mark.parametrize("ws_key, image_key", [
    ("ws", "image"), ("ws_trunc07", "image_trunc07"), ("ws_large", "image_ws_large")])
def test_stylegan3_synthesis(name, ws_key, image_key, generators, refs):
    G, ref = generators(name), refs[name]
    if ws_key == "ws_large":
        assert float(ref["clamp_fraction"]) > 0  # the conv clamp acts on these
        assert np.allclose(ref["ws_large"], ref["ws"] * ref["ws_large_scale"], rtol=1e-6)
    with torch.no_grad():
        image = G.synthesis(torch.from_numpy(ref[ws_key]))  # the REFERENCE ws: errors do not compound
    assert rel_error(image, ref[image_key]) < TOL


@pytest.mark.parametrize("name", SG3)
def test_stylegan3_user_transform(name, generators, refs):
    from targetclip_core.generators.stylegan3 import user_transform

    G, ref = generators(name), refs[name]
    assert bool(ref["transform_in_state_dict"])
    tx, ty = (float(v) for v in ref["transform_translate"])
    angle = float(ref["transform_angle_deg"])
    m = user_transform(translate=(tx, ty), rotate=angle)
    assert m.dtype == torch.float32 and m.shape == (3, 3)
    assert float((m - torch.from_numpy(ref["transform_matrix"])).abs().max()) < 1e-6
    # Hand-derived: make_transform is [[c, s, tx], [-s, c, ty], [0, 0, 1]] (c, s of the angle); its inverse
    # is the transposed rotation with translation -R^T t.
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    expected = torch.tensor([[c, -s, -(c * tx - s * ty)], [s, c, -(s * tx + c * ty)], [0, 0, 1]], dtype=torch.float32)
    assert float((m - expected).abs().max()) < 1e-6
    stored = G.stored_transform
    assert torch.equal(torch.as_tensor(stored), torch.from_numpy(ref["stored_transform"]))
    with torch.no_grad():
        image = G.synthesis(torch.from_numpy(ref["ws"]), transform=torch.as_tensor(ref["transform_matrix"]))
        plain = G.synthesis(torch.from_numpy(ref["ws"][:1]))
    assert rel_error(image, ref["image_transform"]) < TOL
    assert torch.equal(torch.as_tensor(G.stored_transform), torch.from_numpy(ref["stored_transform"]))  # unchanged
    assert rel_error(plain, ref["image"][:1]) < TOL  # the transform was not left behind


@pytest.mark.parametrize("name", SG3)
def test_stylegan3_batch_independence(name, generators, refs):
    G, ws = generators(name), torch.from_numpy(refs[name]["ws"][:2])
    with torch.no_grad():
        both = G.synthesis(ws)
        alone = torch.cat([G.synthesis(ws[i : i + 1]) for i in range(2)])
    assert float((both - alone).abs().max()) <= 1e-6 * max(1.0, float(alone.abs().max()))


@pytest.mark.parametrize("name", SG3)
def test_stylegan3_safetensors_round_trip(name, generators, refs, tmp_path):
    from targetclip_core.generators.load import load_generator, save_generator

    G = generators(name)
    save_generator(G, tmp_path / "g.safetensors")
    G2 = load_generator(tmp_path / "g.safetensors", device="cpu")
    assert G2.describe() == G.describe() and G2.n_latent == G.n_latent
    ws = torch.from_numpy(refs[name]["ws"][:2])
    with torch.no_grad():
        assert torch.equal(G2.synthesis(ws), G.synthesis(ws))
    assert torch.equal(torch.as_tensor(G2.stored_transform), torch.as_tensor(G.stored_transform))


def test_stylegan3_numpy2_names_load_the_same(fixtures, generators, refs, tmp_path):
    from targetclip_core.generators.load import load_generator

    path = write_stylegan3_fixture_pickle(tmp_path / "np2.pkl", fixtures, T, numpy2_names=True)
    ws = torch.from_numpy(refs[T]["ws"][:1])
    with torch.no_grad():
        assert torch.equal(load_generator(path, device="cpu").synthesis(ws), generators(T).synthesis(ws))


# --------------------------------------------------------------------------- StyleGAN2 config of the stylegan3 code base


def test_sg2_config_loads_as_our_stylegan2(generators, refs):
    from targetclip_core.generators.stylegan2 import StyleGAN2Generator

    G, ref = generators(SG2), refs[SG2]
    assert isinstance(G, StyleGAN2Generator)
    assert G.n_latent == ref["ws"].shape[1] == 8 and G.resolution == 32
    z = torch.from_numpy(ref["z"])
    with torch.no_grad():
        assert rel_error(G.to_wplus(G.mapping(z)), ref["ws"]) < TOL
        assert rel_error(G.to_wplus(G.mapping(z, truncation=0.7)), ref["ws_trunc07"]) < TOL
    assert rel_error(G.mapping_network.w_avg, ref["w_avg"]) < TOL


@pytest.mark.parametrize("ws_key, image_key", [
    ("ws", "image"), ("ws_trunc07", "image_trunc07"), ("ws_large", "image_ws_large")])
def test_sg2_config_synthesis(ws_key, image_key, generators, refs):
    G, ref = generators(SG2), refs[SG2]
    if ws_key == "ws_large":
        assert float(ref["clamp_fraction"]) > 0
    with torch.no_grad():
        image = G.synthesis(torch.from_numpy(ref[ws_key]), noise_mode="const")
    assert rel_error(image, ref[image_key]) < TOL


# --------------------------------------------------------------------------- safety


@pytest.mark.parametrize("name", STYLEGAN3_FIXTURES)
def test_module_src_payload_never_runs(name, fixtures, tmp_path):
    from targetclip_core.generators.load import load_generator

    marker = tmp_path / "module_src_ran"
    path = write_stylegan3_fixture_pickle(tmp_path / "payload_src.pkl", fixtures, name, module_src=payload_source(marker))
    assert load_network_pickle(path)["G_ema"].module_src == payload_source(marker)  # it is in the file
    load_generator(path, device="cpu")
    assert not marker.exists()


@pytest.mark.parametrize("name, kind", [(T, "os.system"), (R, "exec"), (SG2, "os.system")])
def test_reduce_payload_is_refused(name, kind, fixtures, tmp_path):
    from targetclip_core.generators.load import load_generator

    marker = tmp_path / "reduce_ran"
    path = write_stylegan3_payload_pickle(tmp_path / "payload_reduce.pkl", fixtures, name, marker, kind)
    with pytest.raises(UnsafePickleError) as info:
        load_generator(path, device="cpu")
    message = str(info.value)
    assert PAYLOAD_GLOBALS[kind] in message and str(path) in message
    assert not marker.exists()


@pytest.mark.parametrize("name, missing", [
    (T, "synthesis.L5_52_32.affine.weight"), (R, "synthesis.L3_36_64.weight"), (SG2, "synthesis.b16.conv1.weight")])
def test_missing_parameter_is_named(name, missing, fixtures, tmp_path):
    from targetclip_core.generators.load import load_generator

    state = fixture_state_dict(fixtures, name)
    assert missing in state
    del state[missing]
    path = write_stylegan3_fixture_pickle(tmp_path / "missing.pkl", fixtures, name, g_ema_state=state)
    assert missing not in load_network_pickle(path)["G_ema"].state_dict()
    with pytest.raises(CheckpointError) as info:
        load_generator(path, device="cpu")
    assert str(path) in str(info.value)
    assert missing in str(info.value)  # the file's own key, as the user sees it in the pickle


@pytest.mark.parametrize("name", SG3)
def test_truncated_pickle_is_a_checkpoint_error(name, pickle_paths, tmp_path):
    from targetclip_core.generators.load import load_generator

    path = tmp_path / "truncated.pkl"
    raw = pickle_paths[name].read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        load_generator(path, device="cpu")
