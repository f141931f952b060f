"""The StyleGAN2 generator: conformance with rosinality's reference outputs, and API invariants.

Conformance compares against `shared/fixtures/stylegan2_rosinality_32.npz`, computed by
rosinality/stylegan2-pytorch itself from the same weights; the invariant tests use tiny
random generators and check properties that hold whatever the weights are.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from helpers.generators import OURS_TO_ROSINALITY_32, random_wplus, rel_err, small_config, small_generator

import targetclip_core.generators.stylegan2 as stylegan2_module
from targetclip_core.bench.baselines import baseline_synthesis
from targetclip_core.errors import LatentError
from targetclip_core.generators.load import load_generator
from targetclip_core.generators.stylegan2 import StyleGAN2Config, StyleGAN2Generator

TOL = 1e-4  # shared/fixtures/README.md: max |ours - ref| / max |ref| below 1e-4 in float32
IMPLS = ["fused", "unfused"]


# --------------------------------------------------------------------------- conformance (rosinality fixture)


@pytest.fixture(scope="module")
def G32(rosinality32_ckpt):
    G = load_generator(rosinality32_ckpt, device="cpu")
    yield G
    G.modconv_impl = "auto"


@pytest.fixture
def impl_G32(G32, request):
    G32.modconv_impl = request.param
    yield G32
    G32.modconv_impl = "auto"


def test_fixture_generator_shape(G32):
    assert (G32.resolution, G32.n_latent, G32.w_dim, G32.z_dim) == (32, 8, 512, 512)
    assert G32.config.source_format == "rosinality"
    assert G32.config.channels == {4: 512, 8: 512, 16: 512, 32: 512}
    assert G32.config.n_mlp == 8 and G32.config.mapping_lr_mul == pytest.approx(0.01)
    assert G32.device == torch.device("cpu")
    assert not any(p.requires_grad for p in G32.parameters())
    assert not G32.training


def test_mapping_matches_reference(G32, rosinality32_ref):
    with torch.no_grad():
        w = G32.mapping(torch.from_numpy(rosinality32_ref["z"]))
    assert rel_err(w, rosinality32_ref["w"]) < TOL


@pytest.mark.parametrize("impl_G32", IMPLS, indirect=True)
def test_truncated_image_matches_reference(impl_G32, rosinality32_ref):
    G, ref = impl_G32, rosinality32_ref
    with torch.no_grad():
        w = G.mapping(torch.from_numpy(ref["z"]), truncation=0.7, truncation_latent=torch.from_numpy(ref["mean_w"]))
        img = G.synthesis(G.to_wplus(w), noise_mode="const")
    assert img.shape == (4, 3, 32, 32) and img.dtype == torch.float32
    assert rel_err(img, ref["image_from_z_trunc07"]) < TOL


@pytest.mark.parametrize("impl_G32", IMPLS, indirect=True)
def test_wplus_image_matches_reference(impl_G32, rosinality32_ref):
    G, ref = impl_G32, rosinality32_ref
    wp = torch.from_numpy(ref["wplus"])
    # the reference W+ really uses distinct entries, so this also checks which entry drives which layer
    assert not torch.allclose(wp[:, 0], wp[:, 1])
    with torch.no_grad():
        img = G.synthesis(wp, noise_mode="const")
    assert rel_err(img, ref["image_from_wplus"]) < TOL


@pytest.mark.parametrize("impl_G32", IMPLS, indirect=True)
def test_single_sample_matches_reference(impl_G32, rosinality32_ref):
    """Batch 1 takes other code paths (a grouped conv with one group is a plain conv)."""
    G, ref = impl_G32, rosinality32_ref
    with torch.no_grad():
        for i in range(2):
            img = G.synthesis(torch.from_numpy(ref["wplus"][i : i + 1]), noise_mode="const")
            assert rel_err(img, ref["image_from_wplus"][i : i + 1]) < TOL, i


@pytest.mark.parametrize("impl_G32", IMPLS, indirect=True)
def test_style_space_matches_reference(impl_G32, rosinality32_ref):
    G, ref = impl_G32, rosinality32_ref
    wp = torch.from_numpy(ref["wplus"])
    with torch.no_grad():
        styles = G.styles(wp)
        img = G.synthesis_from_styles(styles)
    ref_modules = sorted(k.split("/", 1)[1] for k in ref if k.startswith("style_space/"))
    assert sorted(OURS_TO_ROSINALITY_32.values()) == ref_modules
    assert list(styles) == list(OURS_TO_ROSINALITY_32)
    for ours, theirs in OURS_TO_ROSINALITY_32.items():
        assert rel_err(styles[ours], ref[f"style_space/{theirs}"]) < TOL, ours
    assert rel_err(img, ref["image_from_wplus"]) < TOL


def test_style_order_is_the_documented_synthesis_order(G32, rosinality32_ref):
    expected = ["b4.conv1", "b4.torgb"]
    for res in (8, 16, 32):
        expected += [f"b{res}.conv0", f"b{res}.conv1", f"b{res}.torgb"]
    with torch.no_grad():
        styles = G32.styles(torch.from_numpy(rosinality32_ref["wplus"]))
    assert list(styles) == G32.layer_names() == expected
    # the order the module docstring spells out
    doc = stylegan2_module.__doc__
    assert "b4.conv1, b4.torgb, b8.conv0, b8.conv1, b8.torgb, ..., b{R}.conv0, b{R}.conv1, b{R}.torgb" in doc
    # W+ index of each layer as documented: b4.conv1 -> 0, b4.torgb -> 1, block k: 2k-5, 2k-4, 2k-3
    index = {"b4.conv1": 0, "b4.torgb": 1}
    for res in (8, 16, 32):
        k = int(math.log2(res))
        index.update({f"b{res}.conv0": 2 * k - 5, f"b{res}.conv1": 2 * k - 4, f"b{res}.torgb": 2 * k - 3})
    assert G32.layer_wplus_index() == index
    assert sorted(set(index.values())) == list(range(G32.n_latent))


def test_wplus_index_by_perturbation(tiny_G):
    """Changing one W+ entry changes exactly the style codes of the layers it drives."""
    G = tiny_G
    wp = random_wplus(G, 2, seed=3)
    with torch.no_grad():
        base = G.styles(wp)
        for i in range(G.n_latent):
            wp2 = wp.clone()
            wp2[:, i] += 1.0
            changed = [n for n, s in G.styles(wp2).items() if not torch.equal(s, base[n])]
            assert changed == [n for n, j in G.layer_wplus_index().items() if j == i], i
            assert len(changed) in (1, 2)


# --------------------------------------------------------------------------- fused vs unfused


@pytest.mark.parametrize("batch", [1, 3])
def test_fused_equals_unfused_forward_and_gradient(batch):
    G = small_generator(32, seed=1)
    wp = random_wplus(G, batch, seed=2)
    weights = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    out, grads = {}, {}
    for impl in IMPLS:
        G.modconv_impl = impl
        x = wp.clone().requires_grad_(True)
        img = G.synthesis(x, noise_mode="const")
        (img * weights).sum().backward()
        out[impl], grads[impl] = img.detach(), x.grad
    assert rel_err(out["fused"], out["unfused"]) < 1e-5
    assert grads["unfused"].abs().max() > 0
    assert rel_err(grads["fused"], grads["unfused"]) < 1e-5


def test_auto_impl_on_cpu_gives_the_same_image(tiny_G):
    wp = random_wplus(tiny_G, 2, seed=5)
    with torch.no_grad():
        tiny_G.modconv_impl = "auto"
        auto = tiny_G.synthesis(wp)
        tiny_G.modconv_impl = "fused"
        fused = tiny_G.synthesis(wp)
    assert rel_err(auto, fused) < 1e-5


# --------------------------------------------------------------------------- StyleSpace


def test_synthesis_from_styles_equals_synthesis(tiny_G):
    wp = random_wplus(tiny_G, 2, seed=6)
    with torch.no_grad():
        direct = tiny_G.synthesis(wp)
        styles = tiny_G.styles(wp)
        from_dict = tiny_G.synthesis_from_styles(styles)
        from_list = tiny_G.synthesis_from_styles(list(styles.values()))
    assert torch.allclose(direct, from_dict, rtol=0, atol=1e-6)
    assert torch.allclose(direct, from_list, rtol=0, atol=1e-6)
    for name, s in styles.items():
        block, layer = name.split(".")
        conv = getattr(tiny_G.synthesis_blocks[block], layer).conv
        assert s.shape == (2, conv.in_ch), name


def test_editing_one_style_channel_changes_the_image(tiny_G):
    wp = random_wplus(tiny_G, 1, seed=7)
    with torch.no_grad():
        styles = tiny_G.styles(wp)
        base = tiny_G.synthesis_from_styles(styles)
        for name in ("b8.conv1", "b32.torgb"):
            edited = {k: v.clone() for k, v in styles.items()}
            edited[name][:, 3] += 2.0
            img = tiny_G.synthesis_from_styles(edited)
            assert (img - base).abs().max() > 1e-3, name
        # an edit of a 16px layer leaves an out_resolution=8 render alone
        edited = {k: v.clone() for k, v in styles.items()}
        edited["b16.conv1"][:, 0] += 2.0
        assert torch.equal(
            tiny_G.synthesis_from_styles(edited, out_resolution=8), tiny_G.synthesis_from_styles(styles, out_resolution=8)
        )


def test_bad_style_codes_are_refused(tiny_G):
    wp = random_wplus(tiny_G, 1, seed=8)
    styles = tiny_G.styles(wp)
    missing = dict(styles)
    del missing["b8.conv0"]
    with pytest.raises(LatentError, match="b8.conv0"):
        tiny_G.synthesis_from_styles(missing)
    with pytest.raises(LatentError, match=r"expected 11 style codes"):
        tiny_G.synthesis_from_styles(list(styles.values())[:-1])
    wrong = dict(styles)
    wrong["b16.conv0"] = torch.zeros(1, 7)
    with pytest.raises(LatentError, match=r"b16\.conv0.*\[1, 7\].*\[B, 32\]"):
        tiny_G.synthesis_from_styles(wrong)


# --------------------------------------------------------------------------- out_resolution


@pytest.mark.parametrize("out_res", [4, 8, 16])
def test_out_resolution_equals_a_smaller_generator(out_res):
    """Early exit at r equals the full render of a generator built for r with the same weights."""
    G = small_generator(32, seed=9)
    small = StyleGAN2Generator(small_config(out_res, channels={r: c for r, c in G.config.channels.items() if r <= out_res}))
    small_keys = small.state_dict().keys()
    big_state = G.state_dict()
    assert set(small_keys) <= set(big_state)
    small.load_state_dict({k: big_state[k] for k in small_keys})
    small.eval()
    wp = random_wplus(G, 2, seed=10)
    with torch.no_grad():
        early = G.synthesis(wp, out_resolution=out_res)
        full_small = small.synthesis(wp[:, : small.n_latent])
    assert early.shape == (2, 3, out_res, out_res)
    assert torch.allclose(early, full_small, rtol=0, atol=1e-6)
    with torch.no_grad():
        assert torch.equal(G.synthesis(wp, out_resolution=32), G.synthesis(wp))


@pytest.mark.parametrize("bad", [2, 3, 12, 64, 0, -8])
def test_invalid_out_resolution(tiny_G, bad):
    wp = random_wplus(tiny_G, 1)
    with pytest.raises(ValueError, match="out_resolution"):
        tiny_G.synthesis(wp, out_resolution=bad)


# --------------------------------------------------------------------------- noise


def test_noise_modes(tiny_G):
    wp = random_wplus(tiny_G, 2, seed=11)
    with torch.no_grad():
        const_a = tiny_G.synthesis(wp, noise_mode="const")
        const_b = tiny_G.synthesis(wp, noise_mode="const")
        rand_a = tiny_G.synthesis(wp, noise_mode="random")
        rand_b = tiny_G.synthesis(wp, noise_mode="random")
        none = tiny_G.synthesis(wp, noise_mode="none")
        silent = small_generator(32, noise_strength=0.0)  # same weights (same seed), noise switched off
        assert torch.equal(silent.synthesis_blocks["b4"].const, tiny_G.synthesis_blocks["b4"].const)
        silent_const = silent.synthesis(wp, noise_mode="const")
        silent_random = silent.synthesis(wp, noise_mode="random")
    assert torch.equal(const_a, const_b)
    assert (rand_a - rand_b).abs().max() > 1e-3
    assert (rand_a - const_a).abs().max() > 1e-3
    assert (none - const_a).abs().max() > 1e-3
    assert rel_err(none, silent_const) < 1e-6
    assert rel_err(none, silent_random) < 1e-6
    with pytest.raises(ValueError, match="noise_mode"):
        tiny_G.synthesis(wp, noise_mode="sometimes")


# --------------------------------------------------------------------------- latents


def test_mean_latent_is_a_seeded_mean(tiny_G):
    m = tiny_G.mean_latent(256, seed=3)
    assert m.shape == (1, tiny_G.w_dim)
    assert torch.equal(m, tiny_G.mean_latent(256, seed=3))
    z = torch.randn(256, tiny_G.z_dim, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = tiny_G.mapping(z).mean(0, keepdim=True)
    assert torch.allclose(m, expected, rtol=0, atol=1e-5)
    assert not torch.allclose(m, tiny_G.mean_latent(256, seed=4))
    kept = m.clone()
    m.add_(100.0)  # the returned tensor is the caller's: mutating it leaves the cache alone
    assert torch.equal(tiny_G.mean_latent(256, seed=3), kept)


def test_truncation_toward_a_given_latent(tiny_G):
    z = torch.randn(3, tiny_G.z_dim, generator=torch.Generator().manual_seed(12))
    center = torch.randn(1, tiny_G.w_dim, generator=torch.Generator().manual_seed(13))
    with torch.no_grad():
        w = tiny_G.mapping(z)
        wt = tiny_G.mapping(z, truncation=0.5, truncation_latent=center)
        w0 = tiny_G.mapping(z, truncation=0.0, truncation_latent=center)
    assert torch.allclose(wt, center + 0.5 * (w - center), atol=1e-5)
    assert torch.allclose(w0, center.expand(3, -1), atol=1e-6)


def test_to_wplus(tiny_G):
    w = torch.randn(2, tiny_G.w_dim)
    wp = tiny_G.to_wplus(w)
    assert wp.shape == (2, tiny_G.n_latent, tiny_G.w_dim)
    for i in range(tiny_G.n_latent):
        assert torch.equal(wp[:, i], w)
    full = torch.randn(2, tiny_G.n_latent, tiny_G.w_dim)
    assert torch.equal(tiny_G.to_wplus(full), full)


@pytest.mark.parametrize("shape", [(2, 31), (2, 7, 32), (2, 8, 31), (8, 32, 1, 1), (32,)])
def test_wrong_latent_shapes_are_refused(tiny_G, shape):
    with pytest.raises(LatentError) as info:
        tiny_G.to_wplus(torch.zeros(shape))
    msg = str(info.value)
    assert str(list(shape)) in msg
    assert "[B, 32]" in msg or "[B, 8, 32]" in msg


def test_wplus_of_another_generator_names_the_expected_shape(tiny_G):
    with pytest.raises(LatentError, match=re.escape("[B, 8, 32]")):
        tiny_G.synthesis(torch.zeros(1, 18, 512))


def test_nan_latent_is_refused(tiny_G):
    wp = random_wplus(tiny_G, 1)
    wp[0, 3, 5] = float("nan")
    with pytest.raises(LatentError, match="NaN"):
        tiny_G.synthesis(wp)
    wp[0, 3, 5] = float("inf")
    with pytest.raises(LatentError):
        tiny_G.styles(wp)


def test_wrong_z_is_refused(tiny_G):
    with pytest.raises(LatentError, match=re.escape("[B, 32]")):
        tiny_G.mapping(torch.zeros(2, 33))
    with pytest.raises(LatentError, match="unconditional"):
        tiny_G.mapping(torch.zeros(2, 32), torch.ones(2, 3))


def test_forward_is_mapping_then_synthesis(tiny_G):
    z = torch.randn(2, tiny_G.z_dim, generator=torch.Generator().manual_seed(14))
    with torch.no_grad():
        expected = tiny_G.synthesis(tiny_G.to_wplus(tiny_G.mapping(z)))
        assert torch.equal(tiny_G(z), expected)


# --------------------------------------------------------------------------- configuration


def test_rosinality_channel_plan():
    plan = StyleGAN2Config.rosinality_channels(1024, 2)
    assert plan == {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128, 512: 64, 1024: 32}
    assert StyleGAN2Config.rosinality_channels(256, 1) == {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64}
    cfg = StyleGAN2Config(resolution=1024, channels=plan)  # config only: no network is built
    assert cfg.n_latent == 18
    assert cfg.resolutions == [4, 8, 16, 32, 64, 128, 256, 512, 1024]
    assert StyleGAN2Config(resolution=256, channels=StyleGAN2Config.rosinality_channels(256)).n_latent == 14
    assert small_config(32).n_latent == 8


def test_config_json_round_trip():
    cfg = small_config(16, c_dim=3, conv_clamp=256.0, source_format="nvlabs-pkl")
    again = StyleGAN2Config.from_json_dict(cfg.to_json_dict())
    assert again == cfg


@pytest.mark.parametrize("res", [0, 2, 3, 24, 1000])
def test_config_rejects_bad_resolution(res):
    with pytest.raises(ValueError, match="resolution"):
        StyleGAN2Config(resolution=res, channels={4: 8})


def test_config_rejects_missing_channels():
    with pytest.raises(ValueError, match=r"\[16\]"):
        StyleGAN2Config(resolution=16, channels={4: 8, 8: 8})


def test_generator_properties(tiny_G):
    assert (tiny_G.resolution, tiny_G.n_latent, tiny_G.w_dim, tiny_G.z_dim, tiny_G.c_dim) == (32, 8, 32, 32, 0)
    assert tiny_G.identity == {"arch": "stylegan2", "resolution": 32, "n_latent": 8, "w_dim": 32}


# --------------------------------------------------------------------------- benchmark baseline


@pytest.mark.parametrize("noise_mode", ["const", "none"])
def test_bench_baseline_equals_synthesis(noise_mode):
    """bench_baseline is an independent rosinality-style implementation: it must draw the same image."""
    G = small_generator(32, seed=15)
    wp = random_wplus(G, 2, seed=16)
    with torch.no_grad():
        ours = G.synthesis(wp, noise_mode=noise_mode)
        base = baseline_synthesis(G, wp, noise_mode=noise_mode)
    assert rel_err(ours, base) < 1e-5


def test_bench_baseline_matches_the_rosinality_fixture(G32, rosinality32_ref):
    with torch.no_grad():
        img = baseline_synthesis(G32, torch.from_numpy(rosinality32_ref["wplus"]))
    assert rel_err(img, rosinality32_ref["image_from_wplus"]) < TOL


def test_random_noise_has_the_configured_strength():
    """With noise_mode='random', the image spread over draws grows with noise_strength (and is 0 at 0)."""
    wp = None
    spreads = []
    for strength in (0.0, 0.5):
        G = small_generator(16, seed=17, noise_strength=strength)
        wp = random_wplus(G, 1, seed=18) if wp is None else wp
        with torch.no_grad():
            draws = torch.stack([G.synthesis(wp, noise_mode="random") for _ in range(4)])
        spreads.append(float(draws.std(0).max()))
    assert spreads[0] < 1e-6 < spreads[1]
