"""TensorFlow-era NVlabs/stylegan2 pickles (`(G, D, Gs)` of dnnlib.tflib.network.Network), read as data.

Conformance against shared/fixtures/stylegan2_tf_32 (NVlabs' legacy.py conversion of its Gs), refusals by
name, payloads that must never run, and the numpy 1 / numpy 2 spellings of the arrays inside.
"""

from __future__ import annotations

import copyreg
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.generators import rel_err
from helpers.nvlabs import write_nvlabs_pickle
from helpers.paths import require_shared
from helpers.tf_pickles import (
    TF_FIXTURE,
    fixture_manifest,
    network_state,
    tf_value,
    write_networks,
    write_random_tf_pickle,
    write_tf_fixture_pickle,
)
from targetclip_core.errors import CheckpointError, UnsafePickleError
from targetclip_core.formats.network_pickle import load_network_pickle
from targetclip_core.formats.pickle_records import TFNetworkRecord
from targetclip_core.generators.convert.tf_stylegan2 import tf_stylegan2_config
from targetclip_core.generators.load import load_generator, save_generator

TOL = 1e-4


@pytest.fixture(scope="module")
def tf_fixtures() -> Path:
    return require_shared("fixtures")


@pytest.fixture(scope="module")
def tf_ref(tf_fixtures) -> dict[str, np.ndarray]:
    with np.load(tf_fixtures / f"{TF_FIXTURE}.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def marker(tf_fixtures) -> Path:
    path = Path(tempfile.gettempdir()) / fixture_manifest(tf_fixtures)["marker_file"]
    path.unlink(missing_ok=True)
    return path


@pytest.fixture(scope="module")
def tf32(tmp_path_factory, tf_fixtures, marker) -> Path:
    return write_tf_fixture_pickle(tmp_path_factory.mktemp("tf") / "stylegan2-tf-32.pkl", tf_fixtures)


@pytest.fixture(scope="module")
def G_tf32(tf32, marker):
    G = load_generator(tf32, device="cpu")
    assert not marker.exists(), "build_module_src was executed"
    return G


def _images(G, ws: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        return G.synthesis(torch.from_numpy(ws), noise_mode="const")


# --------------------------------------------------------------------------- conformance


def test_config_from_static_kwargs(G_tf32):
    cfg = G_tf32.config
    assert (cfg.resolution, cfg.z_dim, cfg.w_dim, cfg.n_mlp, cfg.c_dim) == (32, 512, 512, 8, 0)
    # fmap_base 256 -> channel_base 512, fmap_max 64: min(512 // r, 64)
    assert cfg.channels == {4: 64, 8: 64, 16: 32, 32: 16}
    assert cfg.conv_clamp is None and cfg.mapping_lr_mul == pytest.approx(0.01)
    assert cfg.source_format == "nvlabs-tf-pkl" and G_tf32.mapping_network.has_w_avg


def test_mapping_and_truncation_match_the_reference(G_tf32, tf_ref):
    z = torch.from_numpy(tf_ref["z"])
    with torch.no_grad():
        assert rel_err(G_tf32.to_wplus(G_tf32.mapping(z)), tf_ref["ws"]) < TOL
        assert rel_err(G_tf32.to_wplus(G_tf32.mapping(z, truncation=0.7)), tf_ref["ws_trunc07"]) < TOL
        assert rel_err(G_tf32.mapping.truncation_latent().reshape(-1), tf_ref["w_avg"]) < TOL


@pytest.mark.parametrize("ws_key, image_key", [("ws", "image"), ("ws_trunc07", "image_trunc07"),
                                               ("ws_large", "image_ws_large")])
def test_images_match_the_reference(G_tf32, tf_ref, ws_key, image_key):
    assert rel_err(_images(G_tf32, tf_ref[ws_key]), tf_ref[image_key]) < TOL


def test_end_to_end_from_z(G_tf32, tf_ref):
    with torch.no_grad():
        wp = G_tf32.to_wplus(G_tf32.mapping(torch.from_numpy(tf_ref["z"])))
        assert rel_err(G_tf32.synthesis(wp, noise_mode="const"), tf_ref["image"]) < TOL


# --------------------------------------------------------------------------- the records


def test_records_hold_the_networks_as_data(tf32, tf_fixtures):
    manifest = fixture_manifest(tf_fixtures)
    G, D, Gs = load_network_pickle(tf32)
    assert all(isinstance(n, TFNetworkRecord) for n in (G, D, Gs))
    assert [n.name for n in (G, D, Gs)] == ["G", "D", "Gs"] and Gs.version == 4
    assert Gs.build_module_src == manifest["build_module_src"] and Gs.source == str(tf32)
    syn = Gs.components["synthesis"]
    assert list(syn.variables) == [v[0] for v in manifest["networks"]["Gs/synthesis"]["variables"]]
    assert syn.variables["4x4/Conv/noise_strength"].shape == () and Gs.variables["lod"] == 0.0
    assert Gs.static_kwargs == manifest["networks"]["Gs"]["static_kwargs"]


def test_numpy1_and_numpy2_spellings_both_load(tmp_path, tf32, tf_fixtures, G_tf32, tf_ref):
    assert b"numpy.core.multiarray" in tf32.read_bytes() and b"numpy._core" not in tf32.read_bytes()
    np2 = write_tf_fixture_pickle(tmp_path / "np2.pkl", tf_fixtures, numpy1_names=False)
    if np.lib.NumpyVersion(np.__version__) >= "2.0.0":
        assert b"numpy._core.multiarray" in np2.read_bytes()
    H = load_generator(np2, device="cpu")
    assert torch.equal(_images(H, tf_ref["ws"]), _images(G_tf32, tf_ref["ws"]))


def _one_network(tmp_path, state_edit) -> Path:
    def make(Network):
        state = network_state("Gs", "G_main", {}, {}, [("lod", tf_value(0, ())), ("dlatent_avg", np.zeros(4, np.float32))])
        state_edit(state)
        return (Network(state),)
    return write_networks(tmp_path / "one.pkl", make)


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.update(version=9), "version"),
    (lambda s: s.update(variables=[("lod", np.float32(0)), ("lod", np.float32(1))]), "'lod' appears twice"),
    (lambda s: s.update(variables=[("lod", "text")]), "'lod' is a str"),
    (lambda s: s.update(static_kwargs=[1]), "static_kwargs"),
    (lambda s: s.update(extra=1), "unknown"),
])
def test_bad_network_state_is_named(tmp_path, edit, message):
    path = _one_network(tmp_path, edit)
    with pytest.raises(CheckpointError, match=message) as info:
        load_network_pickle(path)
    assert "one.pkl" in str(info.value)


# --------------------------------------------------------------------------- never run anything


class _Call:
    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


@pytest.mark.parametrize("where", ["static_kwargs", "variables"])
def test_payload_inside_the_state_is_refused_and_never_run(tmp_path, tf_fixtures, marker, where):
    target = tmp_path / "payload_ran"
    payload = _Call(os.system, (f"touch {target}",))
    src = f"import os\nos.system('touch {target}')\n"
    kwargs = ({"extra_static_kwargs": {"Gs": {"truncation_psi": payload}}} if where == "static_kwargs"
              else {"variable_override": {"Gs:dlatent_avg": payload}})
    path = write_tf_fixture_pickle(tmp_path / "evil.pkl", tf_fixtures, build_module_src=src, **kwargs)
    marker.unlink(missing_ok=True)
    with pytest.raises(UnsafePickleError, match="system") as info:
        load_generator(path, device="cpu")
    assert "evil.pkl" in str(info.value)
    assert not target.exists() and not marker.exists()


def test_build_module_src_is_never_run(tmp_path, tf_fixtures, marker):
    src = f"open({str(tmp_path / 'src_ran')!r}, 'w').close()\n"
    path = write_tf_fixture_pickle(tmp_path / "src.pkl", tf_fixtures, build_module_src=src)
    marker.unlink(missing_ok=True)
    load_generator(path, device="cpu")
    assert not (tmp_path / "src_ran").exists() and not marker.exists()


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("funcs, extra, message", [
    ({"Gs": "G_style"}, {}, "StyleGAN \\(1\\) generator \\('G_style'\\)"),
    ({"Gs/synthesis": "G_synthesis_stylegan_revised"}, {}, "revised StyleGAN synthesis.*G_synthesis_stylegan_revised"),
    ({"Gs/synthesis": "G_synthesis_stylegan"}, {}, "StyleGAN \\(1\\) synthesis"),
    ({"Gs/mapping": "G_mapping_fancy"}, {}, "unknown network kind \\('G_mapping_fancy'\\)"),
    ({}, {"Gs": {"architecture": "resnet"}}, "architecture='resnet'"),
    ({}, {"Gs": {"architecture": "orig"}}, "architecture='orig'"),
    ({}, {k: {"label_size": 4} for k in ("Gs", "Gs/mapping", "Gs/synthesis")}, "conditional.*label_size 4"),
    ({}, {"Gs": {"brand_new_option": 1}}, "brand_new_option"),
    ({}, {"Gs": {"resolution": 64}}, "disagree on 'resolution'"),
    ({}, {"Gs": {"fmap_base": -1}, "Gs/mapping": {"fmap_base": -1}, "Gs/synthesis": {"fmap_base": -1}}, "fmap_base"),
])
def test_other_network_kinds_are_refused_by_name(tmp_path, tf_fixtures, funcs, extra, message):
    path = write_tf_fixture_pickle(tmp_path / "other.pkl", tf_fixtures, build_func_name=funcs, extra_static_kwargs=extra)
    with pytest.raises(CheckpointError, match=message) as info:
        load_generator(path, device="cpu")
    assert "other.pkl" in str(info.value)


def test_wrong_variable_shape_is_named(tmp_path, tf_fixtures):
    path = write_tf_fixture_pickle(tmp_path / "shape.pkl", tf_fixtures,
                                   variable_override={"Gs/synthesis:8x8/Conv1/bias": np.zeros(63, np.float32)})
    with pytest.raises(CheckpointError, match=r"8x8/Conv1/bias has shape \[63\], expected \[64\]") as info:
        load_generator(path, device="cpu")
    assert "shape.pkl" in str(info.value)


def test_missing_and_non_finite_variables_are_named(tmp_path, tf_fixtures):
    bad = np.full((64,), np.nan, np.float32)
    path = write_tf_fixture_pickle(tmp_path / "nan.pkl", tf_fixtures, variable_override={"Gs/synthesis:8x8/Conv1/bias": bad})
    with pytest.raises(CheckpointError, match="8x8/Conv1/bias holds non-finite"):
        load_generator(path, device="cpu")


def test_tuple_without_a_generator(tmp_path):
    path = write_networks(tmp_path / "d.pkl", lambda Network: (Network(network_state("D", "D_stylegan2", {}, {}, [])),))
    with pytest.raises(CheckpointError, match=r"without a generator Gs \(found: D \(D_stylegan2\)\)"):
        load_generator(path, device="cpu")


def test_network_that_contains_itself_is_refused(tmp_path):
    def make(Network):
        state = network_state("Gs", "G_main", {}, {}, [])
        net = Network(state)
        state["components"]["mapping"] = net
        return (net,)

    with pytest.raises(CheckpointError, match="cycle"):
        load_generator(write_networks(tmp_path / "cycle.pkl", make), device="cpu")


def test_network_without_state_is_refused(tmp_path):
    def make(Network):  # NEWOBJ with no BUILD: a reduction without state
        Network.__reduce_ex__ = lambda self, protocol: (copyreg.__newobj__, (type(self),))
        return (Network({}),)

    with pytest.raises(CheckpointError, match="without its state"):
        load_generator(write_networks(tmp_path / "bare.pkl", make), device="cpu")


def test_truncated_file_names_the_file(tmp_path, tf32):
    path = tmp_path / "cut.pkl"
    path.write_bytes(tf32.read_bytes()[: tf32.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="cut.pkl"):
        load_generator(path, device="cpu")


# --------------------------------------------------------------------------- published configurations


def _plan(fmap_base, resolution, fmap_max=512):
    return {2**k: min(2 * fmap_base // 2**k, fmap_max) for k in range(2, int(math.log2(resolution)) + 1)}


@pytest.mark.parametrize("static_kwargs, channels", [
    # stylegan2-ffhq-config-f.pkl: only these three entries; fmap_base 16384, fmap_max 512 apply
    ({"num_channels": 3, "resolution": 1024, "label_size": 0},
     {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128, 512: 64, 1024: 32}),
    ({"num_channels": 3, "resolution": 256, "label_size": 0},  # cat, church, horse
     {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128}),
    ({"num_channels": 3, "resolution": 512, "label_size": 0},  # car (512 x 384 padded to 512)
     {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128, 512: 64}),
    # config-e: run_training.py halves fmap_base (8 << 10)
    ({"num_channels": 3, "resolution": 1024, "label_size": 0, "fmap_base": 8192},
     {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64, 512: 32, 1024: 16}),
])
def test_published_configurations(static_kwargs, channels):
    cfg = tf_stylegan2_config(static_kwargs, "x.pkl")
    assert cfg.channels == channels == _plan(static_kwargs.get("fmap_base", 16384), cfg.resolution)
    assert (cfg.z_dim, cfg.w_dim, cfg.n_mlp, cfg.n_latent) == (512, 512, 8, 2 * int(math.log2(cfg.resolution)) - 2)


# --------------------------------------------------------------------------- other sizes


def _legacy_state(v: dict, resolution: int, mapping_layers: int) -> dict:
    """legacy.py's convert_tf_generator, written out here as an independent path to NVlabs names."""
    m, s, g = (dict(v[k]) for k in ("mapping", "synthesis", "main"))
    sd = {}
    for i in range(mapping_layers):
        sd[f"mapping.fc{i}.weight"] = m[f"Dense{i}/weight"].T
        sd[f"mapping.fc{i}.bias"] = m[f"Dense{i}/bias"]
    sd["mapping.w_avg"] = g["dlatent_avg"]
    sd["synthesis.b4.const"] = s["4x4/Const/const"][0]
    for r in (2**k for k in range(2, int(math.log2(resolution)) + 1)):
        k = int(math.log2(r))
        for ours, tf, noise in ([("conv1", "Conv", 0)] if r == 4 else
                                [("conv0", "Conv0_up", 2 * k - 5), ("conv1", "Conv1", 2 * k - 4)]):
            w = s[f"{r}x{r}/{tf}/weight"]
            sd[f"synthesis.b{r}.{ours}.weight"] = (w[::-1, ::-1] if tf == "Conv0_up" else w).transpose(3, 2, 0, 1)
            sd[f"synthesis.b{r}.{ours}.noise_strength"] = s[f"{r}x{r}/{tf}/noise_strength"]
            sd[f"synthesis.b{r}.{ours}.noise_const"] = s[f"noise{noise}"][0, 0]
            for name, key in (("bias", "bias"), ("affine.weight", "mod_weight"), ("affine.bias", "mod_bias")):
                sd[f"synthesis.b{r}.{ours}.{name}"] = s[f"{r}x{r}/{tf}/{key}"]
        for name, key in (("weight", "weight"), ("bias", "bias"), ("affine.weight", "mod_weight"),
                          ("affine.bias", "mod_bias")):
            sd[f"synthesis.b{r}.torgb.{name}"] = s[f"{r}x{r}/ToRGB/{key}"]
        sd[f"synthesis.b{r}.torgb.weight"] = s[f"{r}x{r}/ToRGB/weight"].transpose(3, 2, 0, 1)
    out = {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in sd.items()}
    for k in out:
        if k.endswith("affine.weight"):
            out[k] = out[k].T.contiguous()
        if k.endswith("affine.bias"):
            out[k] = out[k] + 1
    return out


def test_a_64px_pickle_matches_its_pytorch_conversion(tmp_path):
    path, variables = write_random_tf_pickle(tmp_path / "tf64.pkl", resolution=64, fmap_base=128, fmap_max=32,
                                             latent_size=24, dlatent_size=32, mapping_layers=2, seed=3)
    G = load_generator(path, device="cpu")
    assert G.config.channels == {4: 32, 8: 32, 16: 16, 32: 8, 64: 4}  # min(256 // r, 32)
    assert (G.config.z_dim, G.config.w_dim, G.config.n_mlp, G.n_latent) == (24, 32, 2, 10)
    ref_pkl = write_nvlabs_pickle(tmp_path / "ada64.pkl", _legacy_state(variables, 64, 2), resolution=64,
                                  z_dim=24, w_dim=32, n_mlp=2, channel_base=256, channel_max=32)
    H = load_generator(ref_pkl, device="cpu")
    z = torch.randn(2, 24, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        wp, wp_ref = G.to_wplus(G.mapping(z, truncation=0.8)), H.to_wplus(H.mapping(z, truncation=0.8))
        assert rel_err(wp, wp_ref) < TOL
        assert rel_err(G.synthesis(wp, noise_mode="const"), H.synthesis(wp_ref, noise_mode="const")) < TOL


# --------------------------------------------------------------------------- our format, the CLI


def test_saves_to_safetensors_and_reloads_identically(tmp_path, G_tf32, tf_ref):
    out = tmp_path / "tf32.safetensors"
    save_generator(G_tf32, out)
    H = load_generator(out, device="cpu")
    assert H.config == G_tf32.config
    assert torch.equal(_images(H, tf_ref["ws"]), _images(G_tf32, tf_ref["ws"]))


def test_cli_convert(tmp_path, tf32, tf_ref, capsys):
    from targetclip_core.cli.main import main

    out = tmp_path / "converted.safetensors"
    assert main(["convert", str(tf32), str(out)]) == 0
    assert "nvlabs-tf-pkl" in capsys.readouterr().out
    assert rel_err(_images(load_generator(out, device="cpu"), tf_ref["ws"]), tf_ref["image"]) < TOL
