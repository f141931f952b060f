"""StyleGAN3 inside the engine: the alias-free resampling against a direct transcription of NVlabs'
reference ops (bench.stylegan3_reference, the benchmark's baseline), the layer plan and filter design against what NVlabs' code recorded in the conformance
fixtures, and the generator protocol (StyleSpace, essences, SAT3D's layout, the user transform, files).

Conformance of whole networks against NVlabs' outputs is in test_stylegan3.py."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers.generators import random_wplus, small_stylegan3

from targetclip_core.bench.stylegan3_reference import filtered_lrelu_reference
from targetclip_core.errors import CheckpointError, LatentError, TargetCLIPError
from targetclip_core.generators.alias_free import design_lowpass_filter, filtered_lrelu
from targetclip_core.generators.load import load_generator, save_generator
from targetclip_core.generators.stylegan3 import StyleGAN3Config, synthesis_plan, transform_for, user_transform
from targetclip_core.generators.stylespace import StyleLayout
from targetclip_core.methods.targetclip.essence import Essence, apply_essence

SQRT2 = math.sqrt(2)


# --------------------------------------------------------------------------- the resampling ops


@pytest.mark.parametrize("up, down, padding, radial", [
    (2, 2, (9, 8, 9, 8), False),   # a 'T' layer in the fixtures
    (2, 2, (9, 8, 9, 8), True),    # 'R': radially symmetric down filter
    (2, 1, (3, 2, 4, 1), False),   # asymmetric padding
    (4, 2, (-1, 5, 2, 0), False),  # cropping on one side
    (1, 2, (2, 3, 2, 3), False),
])
def test_filtered_lrelu_matches_the_reference_ops(up, down, padding, radial):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 11, 13, generator=g)
    b = torch.randn(3, generator=g)
    fu = design_lowpass_filter(6 * up, 2.0, 6.0, 16.0 * up) if up > 1 else None
    fd = design_lowpass_filter(6 * down, 2.0, 6.0, 16.0 * down, radial=radial) if down > 1 else None
    ours = filtered_lrelu(x, fu, fd, b, up=up, down=down, padding=padding, gain=SQRT2, slope=0.2, clamp=1.5)
    ref = filtered_lrelu_reference(x, fu, fd, b, up, down, padding, SQRT2, 0.2, 1.5)
    assert ours.shape == ref.shape
    assert torch.allclose(ours, ref, atol=1e-5, rtol=1e-5)


def test_torgb_is_bias_and_clamp_only():
    x = torch.randn(1, 3, 5, 5) * 400
    b = torch.tensor([1.0, -2.0, 3.0])
    out = filtered_lrelu(x, None, None, b, up=1, down=1, padding=(0, 0, 0, 0), gain=1.0, slope=1.0, clamp=256.0)
    assert torch.equal(out, (x + b[None, :, None, None]).clamp(-256, 256))


# --------------------------------------------------------------------------- plan and filters vs NVlabs


def _fixture(fixtures_dir, name):
    return json.loads((fixtures_dir / f"{name}.json").read_text(encoding="utf-8"))


def _config_of(manifest) -> StyleGAN3Config:
    kw = dict(manifest["init_kwargs"])
    mapping = kw.pop("mapping_kwargs")["__EasyDict__"]
    for key in ("z_dim", "w_dim", "c_dim", "img_channels", "magnitude_ema_beta"):
        kw.pop(key)
    return StyleGAN3Config(resolution=kw.pop("img_resolution"), n_mlp=mapping["num_layers"], **kw)


def _plain(value):
    if isinstance(value, dict) and "__ndarray__" in value:
        return value["__ndarray__"]
    if isinstance(value, dict) and "__numpy_scalar__" in value:
        return value["__numpy_scalar__"]
    return value


@pytest.mark.parametrize("name", ["stylegan3_t_32", "stylegan3_r_32"])
def test_layer_plan_is_the_one_nvlabs_recorded(fixtures_dir, name):
    manifest = _fixture(fixtures_dir, name)
    recorded = {m["path"]: m["attributes"] for m in manifest["pickle"]["modules"]}
    first, plan = synthesis_plan(_config_of(manifest))
    assert [spec.name for spec in plan] == recorded["synthesis"]["layer_names"]
    inp = recorded["synthesis.input"]
    assert (first.channels, [first.size] * 2) == (inp["channels"], _plain(inp["size"]))
    assert (first.sampling_rate, first.bandwidth) == (_plain(inp["sampling_rate"]), _plain(inp["bandwidth"]))
    for spec in plan:
        attrs = {k: _plain(v) for k, v in recorded[f"synthesis.{spec.name}"].items()}
        assert list(spec.padding) == attrs["padding"], spec.name
        assert [spec.in_size] * 2 == attrs["in_size"] and [spec.out_size] * 2 == attrs["out_size"]
        for key in ("in_channels", "out_channels", "in_sampling_rate", "out_sampling_rate", "tmp_sampling_rate",
                    "up_factor", "down_factor", "up_taps", "down_taps", "down_radial", "conv_kernel",
                    "is_torgb", "is_critically_sampled"):
            assert getattr(spec, key) == attrs[key], (spec.name, key)
        for key in ("in_cutoff", "out_cutoff", "in_half_width", "out_half_width"):
            assert getattr(spec, key) == pytest.approx(attrs[key], rel=1e-12), (spec.name, key)


@pytest.mark.parametrize("name", ["stylegan3_t_32", "stylegan3_r_32"])
def test_designed_filters_equal_the_stored_ones(fixtures_dir, name):
    """scipy's firwin (and NVlabs' jinc) as NVlabs' code stored them, against our numpy design."""
    manifest = _fixture(fixtures_dir, name)
    _, plan = synthesis_plan(_config_of(manifest))
    constants = manifest["constants"]
    checked = 0
    for spec in plan:
        for which, taps, cutoff, width, radial in (
            ("up_filter", spec.up_taps, spec.in_cutoff, spec.in_half_width * 2, False),
            ("down_filter", spec.down_taps, spec.out_cutoff, spec.out_half_width * 2, spec.down_radial),
        ):
            ours = design_lowpass_filter(taps, cutoff, width, spec.tmp_sampling_rate, radial=radial)
            stored = constants.get(f"synthesis.{spec.name}.{which}")
            if stored is None:
                assert ours is None
                continue
            stored = torch.tensor(stored)
            assert ours.shape == stored.shape
            assert (ours - stored).abs().max() <= 1e-6 * stored.abs().max()
            checked += 1
    assert checked >= 2 * (len(plan) - 1)


# --------------------------------------------------------------------------- the generator protocol


@pytest.fixture(scope="module", params=["T", "R"])
def G3(request):
    return small_stylegan3(request.param)


def test_styles_render_like_wplus_and_name_the_layers(G3):
    wp = random_wplus(G3, 2, seed=3)
    styles = G3.styles(wp)
    assert list(styles) == G3.layer_names() and G3.layer_names()[0] == "input" and G3.layer_names()[-1] == "torgb"
    assert torch.equal(G3.synthesis_from_styles(styles), G3.synthesis(wp))
    assert G3.synthesis(wp).shape == (2, 3, G3.resolution, G3.resolution)


def test_stylespace_layout_leaves_out_the_input_transform_and_torgb(G3):
    layout = StyleLayout.from_generator(G3)
    names = [name for name, _ in layout.layers]
    assert "input" not in names and "torgb" not in names
    assert names == G3.layer_names()[1:-1]


def test_each_wplus_entry_drives_its_own_layer(G3):
    """w[0] moves only the input's transform code, w[i + 1] only layer i's style."""
    wp = random_wplus(G3, 1, seed=1)
    base = G3.styles(wp)
    for i, name in enumerate(G3.layer_names()):
        moved = wp.clone()
        moved[:, i] += 1.0
        changed = [n for n, s in G3.styles(moved).items() if not torch.equal(s, base[n])]
        assert changed == [name]


def test_essence_is_a_wplus_offset(G3):
    wp = random_wplus(G3, 2, seed=2)
    vector = 0.3 * torch.randn(1, G3.n_latent, G3.w_dim, generator=torch.Generator().manual_seed(5))
    essence = Essence(vector=vector, generator=G3.identity, name="t")
    assert torch.allclose(apply_essence(G3, wp, essence, strength=0.5), G3.synthesis(wp + 0.5 * vector), atol=1e-6)


def test_a_stylegan2_latent_is_refused_by_name(G3):
    with pytest.raises(LatentError, match="StyleGAN3"):
        G3.synthesis(torch.zeros(1, G3.n_latent + 1, G3.w_dim))


def test_user_transform_identity_and_motion(G3):
    wp = random_wplus(G3, 1, seed=4)
    image = G3.synthesis(wp)
    assert torch.allclose(G3.synthesis(wp, transform=user_transform()), image, atol=1e-6)
    assert transform_for(G3, (0.0, 0.0), 0.0) is None  # nothing moves: the checkpoint's own transform
    moved = G3.synthesis(wp, transform=transform_for(G3, (0.25, 0.0), 0.0))
    assert (moved - image).abs().mean() > 0.05 * image.abs().mean()
    # a full turn is no turn
    assert torch.allclose(G3.synthesis(wp, transform=user_transform(rotate=360.0)), image, atol=1e-5)
    with pytest.raises(ValueError, match="3x3"):
        G3.synthesis(wp, transform=torch.eye(2))


def test_translate_needs_stylegan3(tiny_G):
    with pytest.raises(TargetCLIPError, match="StyleGAN3"):
        transform_for(tiny_G, (0.1, 0.0), 0.0)
    assert transform_for(tiny_G, (0.0, 0.0), 0.0) is None


def test_only_the_native_resolution_renders(G3):
    wp = random_wplus(G3, 1)
    assert G3.output_resolutions == [G3.resolution]
    with pytest.raises(ValueError, match="only"):
        G3.synthesis(wp, out_resolution=G3.resolution // 2)


def test_safetensors_round_trip_is_bit_identical(G3, tmp_path):
    path = tmp_path / "g3.safetensors"
    save_generator(G3, path)
    again = load_generator(path, device="cpu")
    assert type(again) is type(G3) and again.config == G3.config and again.describe() == G3.describe()
    wp = random_wplus(G3, 2, seed=6)
    assert torch.equal(again.synthesis(wp), G3.synthesis(wp))
    first = path.read_bytes()
    save_generator(again, tmp_path / "again.safetensors")
    assert (tmp_path / "again.safetensors").read_bytes() == first  # same model, same bytes


def test_gradients_match_nvlabs_reference_path(G3):
    """Our backward (resampling recomputed, GEMM resampling) against autograd through a transcription of
    NVlabs' reference ops (per-sample weights, zero-stuffed upfirdn2d)."""
    from targetclip_core.bench.stylegan3_reference import nvlabs_stylegan3_synthesis

    target = torch.randn(2, 3, G3.resolution, G3.resolution, generator=torch.Generator().manual_seed(9))
    grads = []
    for synthesis in (G3.synthesis, lambda x: nvlabs_stylegan3_synthesis(G3, x)):
        wp = random_wplus(G3, 2, seed=8).requires_grad_(True)
        (synthesis(wp) - target).square().mean().backward()
        grads.append(wp.grad)
    ours, ref = grads
    assert torch.isfinite(ours).all() and ref.abs().max() > 0
    assert (ours - ref).abs().max() <= 1e-4 * ref.abs().max()


@pytest.mark.parametrize("field, value, message", [
    ("num_layers", 10_000, "num_layers"),
    ("channel_max", 10**6, "channel_max"),
    ("resolution", 48, "power of two"),
    ("num_critical", 4, "num_critical"),
    ("use_radial_filters", "yes", "use_radial_filters"),
])
def test_absurd_configs_are_refused_before_building(field, value, message):
    kw = dict(resolution=16, num_layers=4, num_critical=1, channel_base=64, channel_max=8)
    kw[field] = value
    with pytest.raises(ValueError, match=message):
        StyleGAN3Config(**kw)


def test_edited_config_in_a_safetensors_file_is_refused(G3, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = tmp_path / "g3.safetensors"
    save_generator(G3, path)
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    config = json.loads(meta["config"])
    config["num_layers"] = 5  # more layers than the file has weights for
    meta["config"] = json.dumps(config)
    save_file(tensors, str(tmp_path / "edited.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match="edited.safetensors"):
        load_generator(tmp_path / "edited.safetensors", device="cpu")


def test_magnitude_ema_scales_the_layer_input(G3):
    """magnitude_ema ** -0.5 multiplies a layer's input: a demodulated layer ignores a global input scale
    only up to the bias, so changing the buffer must change the image (it is loaded, not recomputed)."""
    wp = random_wplus(G3, 1, seed=7)
    image = G3.synthesis(wp)
    layer = next(iter(G3.layers.values()))
    saved = layer.magnitude_ema.clone()
    try:
        layer.magnitude_ema.fill_(4 * saved.item())
        assert not torch.allclose(G3.synthesis(wp), image, atol=1e-4)
    finally:
        layer.magnitude_ema.copy_(saved)
    assert torch.isfinite(image).all()


def test_sat3d_transfer_on_stylegan3_edits_feature_codes_only(G3):
    """SAT3D's Eq. 1 in StyleGAN3's StyleSpace: with every channel given to attribute A, delta 1 takes the
    reference's feature-layer codes; the input transform and ToRGB codes stay the source's."""
    from targetclip_core.methods import sat3d

    layout = StyleLayout.from_generator(G3)
    logits = torch.stack([torch.full((layout.n_channels,), 20.0), torch.full((layout.n_channels,), -20.0)])
    matrix = sat3d.SAT3DMatrix(logits, ["A"], layout, dict(G3.identity), sat3d.generator_fingerprint(G3))
    src, ref = random_wplus(G3, 1, seed=1), random_wplus(G3, 1, seed=2)
    out = sat3d.transfer_styles(G3, src, ref, matrix, ["A"], delta=1.0)
    s_src, s_ref = G3.styles(src), G3.styles(ref)
    for name in G3.layer_names():
        expected = s_src[name] if name in ("input", "torgb") else s_ref[name]
        assert torch.allclose(out[name], expected, atol=1e-5), name
    assert G3.synthesis_from_styles(out).shape == (1, 3, G3.resolution, G3.resolution)


def test_optimize_essence_on_stylegan3(G3):
    """The essence optimiser renders StyleGAN3 at its own size (no early exit) and learns a W+ offset for it."""
    from helpers.clip import tiny_clip

    from targetclip_core.methods.targetclip.optimize import optimize_essence

    target = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    essence = optimize_essence(G3, tiny_clip(), target, steps=3, n_sources=2, lr=0.1)
    assert essence.vector.shape == (1, G3.n_latent, G3.w_dim) and torch.isfinite(essence.vector).all()
    assert essence.generator == G3.identity and essence.vector.abs().sum() > 0
