"""StyleCLIP global directions (methods.directions.global_statistics / global_directions): the per-channel CLIP
statistics against a hand computation on a planted generator/CLIP pair, the planted text direction recovered,
the StyleSpace edit and its least-squares essence, and the resumable statistics file on a tiny StyleGAN2 +
tiny CLIP."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers.clip import tiny_clip
from helpers.generators import small_generator
from helpers.stand_ins import StandInGenerator
from torch import nn

from targetclip_core.errors import LatentError, TargetCLIPError
from targetclip_core.generators.stylespace import StyleLayout
from targetclip_core.io.safetensors_files import save_safetensors
from targetclip_core.methods.directions import (
    GlobalStatistics,
    apply_global_direction,
    channel_deltas,
    compute_global_statistics,
    global_direction,
    global_direction_essence,
    load_global_statistics,
    measured_channels,
    save_global_statistics,
    time_global_statistics,
)

torch.set_num_threads(1)

# --------------------------------------------------------------------------- a planted pair
# The generator's "image" is its StyleSpace laid out as pixels (5 layers x 4 channels, then zeros); the CLIP
# stand-in embeds an image as normalised [the 12 feature-conv pixels, BIAS]: StyleSpace channel j of the
# layout (toRGB left out) is embedding axis j. Texts embed as BIAS axis + one axis per known word.

FEATURE_PIXELS = [0, 1, 2, 3, 8, 9, 10, 11, 12, 13, 14, 15]  # b4.conv1, b8.conv0, b8.conv1 in the image
BIAS = 2.0
PLANTED = 6  # layout channel 6 = b8.conv0 channel 2
WORDS = {"glasses": PLANTED, "beard": 9}


class PixelGenerator(StandInGenerator):
    LAYERS = (("b4.conv1", 4), ("b4.torgb", 4), ("b8.conv0", 4), ("b8.conv1", 4), ("b8.torgb", 4))
    c_dim = 0
    resolution = 4
    output_resolutions = (4,)

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.n_latent = len(self.LAYERS)  # one W+ entry per layer
        self.map = nn.Parameter(torch.randn(8, 8, generator=g) / 8 ** 0.5, requires_grad=False)
        self.affines = nn.Parameter(torch.randn(self.n_latent, 8, 4, generator=g), requires_grad=False)
        self.identity = {"arch": "pixels", "resolution": 4, "n_latent": self.n_latent, "w_dim": 8}

    def mapping(self, z, truncation=1.0, c=None):
        return truncation * (z @ self.map)  # W's mean is 0: truncation pulls towards it

    def synthesis_from_styles(self, styles, out_resolution=None, noise_mode="const"):
        flat = torch.cat(list(styles.values()), dim=1)
        return torch.cat([flat, flat.new_zeros(flat.shape[0], 28)], dim=1).view(-1, 3, 4, 4)


class AxisCLIP(nn.Module):
    input_size = 4
    preprocess = "default"
    def __init__(self):
        super().__init__()
        self.identity = {"name": "axis-clip", "pretrained": "planted"}
        self.register_buffer("anchor", torch.zeros(1))

    @property
    def device(self):
        return self.anchor.device

    def encode_image(self, img, preprocess=None):
        x = img.flatten(1)[:, FEATURE_PIXELS]
        return F.normalize(torch.cat([x, torch.full_like(x[:, :1], BIAS)], dim=1), dim=-1)

    def encode_text(self, texts):
        out = torch.zeros(len(texts), 13)
        out[:, 12] = 1.0
        for i, text in enumerate(texts):
            for word, axis in WORDS.items():
                if word in text:
                    out[i, axis] += 1.0
        return F.normalize(out, dim=-1)


def hand_statistics(G, n_images, n_stat, alpha, seed=0, truncation=0.7):
    """The StyleCLIP reduction written out in numpy float64 for the planted pair (z drawn as the engine's
    first block: randn(n, z_dim) under the seed)."""
    z = torch.randn(n_stat, G.z_dim, generator=torch.Generator().manual_seed(seed)).double().numpy()
    w = truncation * z @ G.map.double().numpy()
    A = G.affines.double().numpy()
    feature_layers = [0, 2, 3]
    s = np.concatenate([w @ A[i] for i in feature_layers], axis=1)  # [n_stat, 12] in layout order
    mean, std = s.mean(0), s.std(0)
    base = s[:n_images]
    deltas = np.zeros((12, 13))
    for c in range(12):
        per_image = []
        for i in range(n_images):
            codes = []
            for sign in (-1, 1):
                v = base[i].copy()
                v[c] = mean[c] + sign * alpha * std[c]
                e = np.r_[v, BIAS]
                codes.append(e / np.linalg.norm(e))
            d = codes[1] - codes[0]
            per_image.append(d / np.linalg.norm(d))
        m = np.mean(per_image, axis=0)
        deltas[c] = m / np.linalg.norm(m)
    return mean, std, deltas


@pytest.fixture(scope="module")
def planted():
    G, C = PixelGenerator(), AxisCLIP()
    return G, C, compute_global_statistics(G, C, n_images=6, n_stat_samples=1000, batch_size=16)


def test_statistics_are_the_styleclip_reduction_by_hand(planted):
    G, _, stats = planted
    mean, std, deltas = hand_statistics(G, 6, 1000, 5.0)
    assert stats.complete and stats.total == 12 and stats.layout.n_channels == 12
    assert np.allclose(stats.mean.double().numpy(), mean, atol=1e-5)
    assert np.allclose(stats.std.double().numpy(), std, rtol=1e-5)
    assert np.allclose(stats.deltas.double().numpy(), deltas, atol=1e-5)
    assert stats.settings["render_resolution"] == 4 and stats.settings["alpha"] == 5.0


def test_a_planted_text_direction_selects_its_channel(planted):
    _, C, stats = planted
    d = global_direction(stats, C, "glasses face", neutral="face")
    assert d.selected.tolist() == [PLANTED]
    assert float(d.relevance[PLANTED]) > 0.9
    others = d.relevance.clone()
    others[PLANTED] = 0
    assert float(others.abs().max()) < d.beta
    # the edit: the selected channel, normalised by max |r| (= itself), in units of its std
    assert float(d.edit[PLANTED]) == pytest.approx(float(stats.std[PLANTED]), rel=1e-6)
    assert d.alpha == 4.1 and d.beta == 0.15
    # the other way round the relevance is negative and so is the edit
    back = global_direction(stats, C, "face", neutral="glasses face")
    assert back.selected.tolist() == [PLANTED] and float(back.edit[PLANTED]) < 0
    both = global_direction(stats, C, "glasses beard face", neutral="face")
    assert both.selected.tolist() == [PLANTED, 9]


def test_the_edit_moves_only_that_channel_and_towards_the_text(planted):
    G, C, stats = planted
    d = global_direction(stats, C, "glasses face", neutral="face")
    w = torch.randn(5, 8, generator=torch.Generator().manual_seed(3))
    src = G.styles(G.to_wplus(w))
    out = apply_global_direction(G, w, d)
    assert list(out) == list(src)
    flat_src, flat_out = stats.layout.flatten(src), stats.layout.flatten(out)
    moved = flat_out - flat_src
    assert torch.allclose(moved[:, PLANTED], torch.full((5,), 4.1 * float(stats.std[PLANTED])))
    moved[:, PLANTED] = 0
    assert torch.equal(moved, torch.zeros_like(moved))
    for name in ("b4.torgb", "b8.torgb"):
        assert torch.equal(out[name], src[name])
    text = F.normalize(C.encode_text(["glasses face"])[0] - C.encode_text(["face"])[0], dim=0)
    before = C.encode_image(G.synthesis_from_styles(src)) @ text
    after = C.encode_image(G.synthesis_from_styles(out)) @ text
    assert bool((after > before).all())
    assert torch.allclose(stats.layout.flatten(apply_global_direction(G, src, d, alpha=0.0)), flat_src)


def test_the_essence_reproduces_the_edit_where_w_plus_can(planted):
    """Each layer here reads its own W+ entry through a 4 x 8 map: the least-squares offset is exact."""
    G, C, stats = planted
    d = global_direction(stats, C, "glasses face", neutral="face")
    direction = global_direction_essence(G, d)
    assert direction.info["residual"] < 1e-5 and direction.info["layers"] == [2]  # b8.conv0's entry
    assert direction.essence.strength == pytest.approx(4.1) and direction.essence.source == "styleclip-global"
    w = torch.randn(3, 8, generator=torch.Generator().manual_seed(4))
    wp = G.to_wplus(w)
    from_essence = G.styles(wp + direction.essence.strength * direction.vector)
    exact = apply_global_direction(G, w, d)
    for name in exact:
        assert torch.allclose(from_essence[name], exact[name], atol=1e-5), name


def test_constructed_statistics_select_by_threshold_sign_and_scale():
    """Statistics built by hand: every delta orthogonal to the text direction t (r = 0) except channel 23 (= t,
    r = 1), channel 31 (r = -0.4) and channel 7 (r = 0.1, under beta)."""
    g = torch.Generator().manual_seed(0)
    layout = StyleLayout((("b4.conv1", 20), ("b8.conv0", 20)))
    t = F.normalize(torch.randn(64, generator=g), dim=0)
    rows = torch.randn(40, 64, generator=g)
    deltas = F.normalize(rows - (rows @ t)[:, None] * t, dim=1)  # unit, orthogonal to t
    for c, r in ((23, 1.0), (31, -0.4), (7, 0.1)):
        deltas[c] = r * t + (1 - r * r) ** 0.5 * deltas[c]
    std = torch.rand(40, generator=g) + 0.5
    stats = GlobalStatistics(layout, torch.zeros(40), std, torch.arange(40), deltas, 40, {}, "x", {}, "y", {})
    d = global_direction(stats, None, "planted", delta_t=t)
    assert d.selected.tolist() == [23, 31]
    assert torch.allclose(d.relevance[[23, 31, 7]], torch.tensor([1.0, -0.4, 0.1]), atol=1e-6)
    expected = torch.zeros(40)
    expected[23], expected[31] = std[23], -0.4 * std[31]  # r / max |r| (= 1) times std
    assert torch.allclose(d.edit, expected, atol=1e-6)
    bare = global_direction(stats, None, "planted", delta_t=t, beta=0.05, normalize=False, scale_by_std=False)
    assert bare.selected.tolist() == [7, 23, 31]
    assert torch.allclose(bare.edit[[7, 23, 31]], torch.tensor([0.1, 1.0, -0.4]), atol=1e-6)
    with pytest.raises(TargetCLIPError, match="no channel reaches"):
        u = F.normalize(deltas[0] - (deltas[0] @ t) * t, dim=0)  # another direction: nothing is that aligned with it
        global_direction(stats, None, "planted", delta_t=F.normalize(u + 0.3 * t, dim=0), beta=0.99)
    with pytest.raises(TargetCLIPError, match="beta"):
        global_direction(stats, None, "planted", delta_t=t, beta=1.5)
    stats.done = 39
    with pytest.raises(TargetCLIPError, match="incomplete"):
        global_direction(stats, None, "planted", delta_t=t)


# --------------------------------------------------------------------------- a tiny StyleGAN2 and a tiny CLIP

SETTINGS = {"n_images": 2, "n_stat_samples": 256, "max_resolution": 8, "batch_size": 8}


@pytest.fixture(scope="module")
def pair():
    return small_generator(16), tiny_clip()


@pytest.fixture(scope="module")
def tiny_stats(pair):
    G, C = pair
    return compute_global_statistics(G, C, **SETTINGS)


def test_tiny_statistics_cover_the_layers_up_to_max_resolution(tiny_stats):
    names = [name for name, _ in tiny_stats.layout.layers]
    assert names == ["b4.conv1", "b8.conv0", "b8.conv1", "b16.conv0", "b16.conv1"]
    assert tiny_stats.total == 96 and torch.equal(tiny_stats.channels, torch.arange(96))
    norms = tiny_stats.deltas.norm(dim=1)
    assert torch.allclose(norms[:96], torch.ones(96), atol=1e-5)
    assert torch.equal(norms[96:], torch.zeros(len(norms) - 96))  # b16 never measured: never selected


def test_tiny_channel_deltas_by_hand(pair, tiny_stats):
    """Two channels redone by hand: edit the codes dict, render, embed, reduce."""
    G, C = pair
    from targetclip_core.methods.directions import sample_w

    base = G.styles(G.to_wplus(sample_w(G, 2, 0, 0.7)))
    for flat in (5, 70):
        name, ch = tiny_stats.layout.channel_of(flat)
        codes = []
        for sign in (-1, 1):
            styles = OrderedDict((k, v.clone()) for k, v in base.items())
            styles[name][:, ch] = tiny_stats.mean[flat] + sign * 5.0 * tiny_stats.std[flat]
            with torch.no_grad():
                codes.append(C.encode_image(G.synthesis_from_styles(styles)))
        per_image = F.normalize(codes[1] - codes[0], dim=-1)
        expected = F.normalize(per_image.mean(0), dim=0)
        assert torch.allclose(tiny_stats.deltas[flat], expected, atol=1e-5)
        again = channel_deltas(G, C, base, tiny_stats.layout, [flat], tiny_stats.mean, tiny_stats.std)
        assert torch.allclose(again[0], expected, atol=1e-5)


def test_a_measured_channel_direction_is_recovered_as_a_text(tiny_stats):
    t = tiny_stats.deltas[40]
    d = global_direction(tiny_stats, None, "planted", delta_t=t)
    assert 40 in d.selected.tolist() and float(d.edit[40]) == pytest.approx(float(tiny_stats.std[40]), rel=1e-5)
    assert bool((d.relevance[d.selected].abs() >= 0.15).all())


def test_tiny_essence_is_the_least_squares_fit(pair, tiny_stats):
    G, _ = pair
    d = global_direction(tiny_stats, None, "planted", delta_t=tiny_stats.deltas[40], beta=0.3)
    direction = global_direction_essence(G, d)
    b = direction.vector
    std = tiny_stats.std.clamp(min=1e-6)
    zero = torch.zeros(1, G.n_latent, G.w_dim)

    def cost(offset):  # the weighted misfit, measured through the network itself: styles(w + b) - styles(w)
        with torch.no_grad():
            change = tiny_stats.layout.flatten(G.styles(zero + offset)) - tiny_stats.layout.flatten(G.styles(zero))
        return float((((change[0] - d.edit) / std) ** 2).sum())

    best = cost(b)
    total = float(((d.edit / std) ** 2).sum())
    assert direction.info["residual"] == pytest.approx((best / total) ** 0.5, rel=1e-3, abs=1e-5)
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        assert best <= cost(b + 1e-2 * torch.randn(b.shape, generator=g) * (b != 0)) + 1e-6


def test_statistics_resume_where_they_stopped(pair, tiny_stats, tmp_path):
    G, C = pair
    path = tmp_path / "global.safetensors"
    seen = []

    def stop_at_30(done, total):
        seen.append((done, total))
        if done >= 30:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        compute_global_statistics(G, C, path, save_every=10, on_progress=stop_at_30, **SETTINGS)
    partial = load_global_statistics(path, G, C)
    assert partial.done == 30 and not partial.complete and seen[-1] == (30, 96)
    resumed = []
    done = compute_global_statistics(G, C, path, save_every=10, on_progress=lambda d, t: resumed.append(d), **SETTINGS)
    assert resumed[0] == 32 and resumed[-1] == 96 and done.complete
    assert torch.allclose(done.deltas, tiny_stats.deltas, atol=1e-6)
    assert torch.allclose(load_global_statistics(path, G, C).deltas, done.deltas)
    again = compute_global_statistics(G, C, path, on_progress=lambda d, t: pytest.fail("a complete file is reused"),
                                      **SETTINGS)
    assert torch.equal(again.deltas, done.deltas)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["global.safetensors"]


def test_the_file_is_refused_for_another_pair_or_other_settings(pair, tiny_stats, tmp_path):
    G, C = pair
    path = save_global_statistics(tmp_path / "g.safetensors", tiny_stats)
    with pytest.raises(TargetCLIPError, match="another generator"):
        load_global_statistics(path, small_generator(16, seed=1))
    with pytest.raises(TargetCLIPError, match="another CLIP"):
        load_global_statistics(path, G, tiny_clip(seed=2))  # same architecture and tag, other weights
    with pytest.raises(TargetCLIPError, match="other settings.*n_images 2"):
        compute_global_statistics(G, C, path, **{**SETTINGS, "n_images": 3})
    with pytest.raises(TargetCLIPError, match="another CLIP"):
        global_direction(load_global_statistics(path), tiny_clip(seed=2), "smile")


def test_damaged_files_are_named(pair, tiny_stats, tmp_path):
    bad = save_safetensors({"x": torch.zeros(2)}, tmp_path / "other.safetensors", {"format": "something"})
    with pytest.raises(TargetCLIPError, match="not global-direction statistics"):
        load_global_statistics(bad)
    good = save_global_statistics(tmp_path / "g.safetensors", tiny_stats)
    from safetensors.torch import load_file, safe_open

    tensors = load_file(str(good))
    with safe_open(str(good), "pt") as f:
        meta = f.metadata()
    tensors["deltas"] = tensors["deltas"][:10].contiguous()
    short = save_safetensors(tensors, tmp_path / "short.safetensors", meta)
    with pytest.raises(TargetCLIPError, match="10 deltas"):
        load_global_statistics(short)
    with pytest.raises(TargetCLIPError, match="no such"):
        load_global_statistics(tmp_path / "missing.safetensors")


def test_measured_channels_and_the_timing_helper(pair):
    G, C = pair
    layout = StyleLayout.from_generator(G)
    assert measured_channels(layout, None).tolist() == list(range(layout.n_channels))
    assert len(measured_channels(layout, 4)) == 32
    timing = time_global_statistics(G, C, n_images=2, channels=2, max_resolution=8)
    assert timing["channels"] == 96 and timing["seconds_per_channel"] > 0
    assert timing["estimated_seconds"] == pytest.approx(96 * timing["seconds_per_channel"])


def test_wrong_codes_are_refused(planted):
    _, C, stats = planted
    d = global_direction(stats, C, "glasses face")
    other = small_generator(16)
    with pytest.raises(LatentError):
        apply_global_direction(other, torch.zeros(1, other.w_dim), d)
    with pytest.raises(TargetCLIPError, match="another StyleSpace layout"):
        global_direction_essence(other, d)


def test_eg3d_statistics_and_edits_keep_the_superresolution_codes():
    from helpers.eg3d import tiny_eg3d

    G, C = tiny_eg3d(), tiny_clip()
    stats = compute_global_statistics(G, C, n_images=1, n_stat_samples=64, max_resolution=4, batch_size=8)
    assert stats.total == stats.layout.layers[0][1] and stats.complete
    d = global_direction(stats, None, "planted", delta_t=stats.deltas[3])
    assert 3 in d.selected.tolist()
    src = G.styles(G.to_wplus(torch.zeros(1, G.w_dim)))
    out = apply_global_direction(G, src, d)
    for name in src:
        if name.startswith("superresolution.") or name.endswith("torgb"):
            assert torch.equal(out[name], src[name]), name
    assert global_direction_essence(G, d).info["layers"] == [0]  # b4.conv1's entry
