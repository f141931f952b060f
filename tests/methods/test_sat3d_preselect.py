"""SAT3D channel pre-selection as the paper (Sec. 3.2): gradient statistics (one backward of R region copies per
image), top k_t per attribute with k scaled to the generator, M initialised with d_t; the statistics in the
checkpoint (resume) and in a reusable file."""

from __future__ import annotations

import warnings

import pytest
import torch
from helpers.clip import tiny_clip
from helpers.generators import tiny_generator
from helpers.stand_ins import StandInGenerator
from torch import nn

from targetclip_core.errors import TargetCLIPError
from targetclip_core.generators.stylespace import StyleLayout
from targetclip_core.methods import sat3d
from targetclip_core.methods.sat3d.preselect import (
    PAPER_CHANNELS,
    gradient_statistics,
    preselect_plan,
    scaled_k,
    select_channels,
    statistics_regions,
)

torch.set_num_threads(1)  # tiny tensors: threads only add contention


# --------------------------------------------------------------------- a generator whose channels paint known pixels


class PaintGenerator(StandInGenerator):
    """Image = sum_c s_c P_c on [3, 8, 8] (so d image / d s_c = P_c): b4.conv1 channels 0-3 paint the top half
    (rows 0-3; the bottom faintly), channels 4-7 the bottom half (the top faintly), b8.conv0's 8 channels everywhere
    alike; b4.torgb paints nothing (it is never a StyleSpace channel of SAT3D)."""

    LAYERS = (("b4.conv1", 8), ("b4.torgb", 4), ("b8.conv0", 8))

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.n_latent = len(self.LAYERS)
        self.map = nn.Parameter(torch.randn(8, 8, generator=g) / 3, requires_grad=False)
        self.affines = nn.ParameterList(nn.Parameter(torch.randn(8, c, generator=g) / 3, requires_grad=False)
                                        for _, c in self.LAYERS)
        top, bottom = torch.zeros(8, 8), torch.zeros(8, 8)
        top[:4], bottom[4:] = 1.0, 1.0
        patterns = [top + 0.05 * bottom] * 4 + [bottom + 0.05 * top] * 4 + [torch.zeros(8, 8)] * 4
        patterns += [torch.ones(8, 8)] * 8
        self.register_buffer("patterns", torch.stack(patterns)[:, None].expand(-1, 3, -1, -1).clone())  # [20, 3, 8, 8]
        self.identity = {"arch": "paint", "resolution": 8, "n_latent": self.n_latent, "w_dim": 8}

    def synthesis_from_styles(self, styles, out_resolution=None, noise_mode="const"):
        flat = torch.cat(list(styles.values()), dim=1)  # [B, 20], toRGB included
        return torch.einsum("bc,cxhw->bxhw", flat, self.patterns)


def halves_parser(images, region):
    """hair = the top half, face = the bottom half, glasses = nowhere (absent from every image)."""
    mask = torch.zeros(images.shape[0], *images.shape[-2:])
    h = images.shape[-2] // 2
    if region == "hair":
        mask[:, :h] = 1
    elif region == "face":
        mask[:, h:] = 1
    return mask


class PaintMeasure:
    """Reads two pixels per attribute (a stand-in for the QMM: training only calls it)."""

    attributes = ["Hairstyle", "Expression", "Eyeglasses"]
    input_size = 8

    def __call__(self, img):
        flat = img.flatten(1)
        return {a: [torch.stack([flat[:, i], flat[:, i + 1]], -1).softmax(-1)]
                for i, a in zip((0, 100, 150), self.attributes)}


# k 1440 is 4 channels once scaled to PaintGenerator's 16 (1440 * 16 / 5760)
PAINT_DESCRIPTORS = sat3d.descriptors_from_dict({"template": "{}", "attributes": {
    "Hairstyle": {"region": "hair", "complex": True, "preselect": {"k": 1440, "d": 2.5}, "groups": [["a", "b"]]},
    "Expression": {"region": "face", "complex": True, "groups": [["c", "d"]]},
    "Eyeglasses": {"region": "glasses", "groups": [["e", "f"]]},
}})


def _paint_run(**kw):
    return sat3d.train_sat3d(PaintGenerator(), PaintMeasure(), descriptors=PAINT_DESCRIPTORS, parser=halves_parser,
                             **{"steps": 0, "batch_size": 1, "n_codes": 8, "lambdas": {"bg": 0.0}, **kw})


def test_planted_channels_are_preselected_and_initialised_with_d():
    G = PaintGenerator()
    layout = StyleLayout.from_generator(G)
    assert layout.n_channels == 16  # b4.conv1 = flat 0-7, b8.conv0 = flat 8-15
    bank = sat3d.sample_latent_bank(G, 8)
    regions = statistics_regions(PAINT_DESCRIPTORS)
    assert regions == ["hair", "face", "glasses"]
    stats = gradient_statistics(G, layout, bank, halves_parser, regions, n_samples=4)
    assert stats.done == 4 and stats.counts.tolist() == [4, 4, 0]  # glasses was in no image
    values = stats.values()
    assert torch.allclose(values.sum(0), torch.ones(16, dtype=torch.float64))  # normalised over the regions
    assert (values[0, :4] > 0.9).all() and (values[1, 4:8] > 0.9).all()  # planted: 1 / (1 + 0.05) of their share
    assert torch.allclose(values[0, 8:], torch.full((8,), 0.5, dtype=torch.float64))  # painting everywhere alike
    plan = preselect_plan(PAINT_DESCRIPTORS)
    assert plan == {"Hairstyle": ("hair", 1440, 2.5), "Expression": ("face", 3500, 1.8)}
    picked = select_channels(stats, plan)
    assert picked["Hairstyle"].tolist() == [0, 1, 2, 3]
    # k = scaled_k(3500, 16) = 10: 4-7, then 6 of the 8 channels painting everywhere (equal values and means: by index)
    assert picked["Expression"].tolist() == [4, 5, 6, 7, 8, 9, 10, 11, 12, 13]
    # through training: M starts as the paper says
    m = _paint_run()
    want = torch.zeros(4, 16)
    want[0, :4] = 2.5
    want[1, picked["Expression"]] = 1.8
    want[3] = 1.0
    want[3, :4] = want[3, picked["Expression"]] = 0.0
    assert torch.equal(m.logits, want)
    assert m.preselection.startswith("Hairstyle: 4 channels (k 1440 scaled by this generator's 16 / the paper's 5760 "
                                     "channels), d 2.5; Expression: 10 channels")
    assert "gradient statistics over 8 images (regions hair, face, glasses)" in m.preselection


def test_a_region_in_no_image_preselects_nothing():
    desc = sat3d.descriptors_from_dict({"template": "{}", "attributes": {
        "Eyeglasses": {"region": "glasses", "complex": True, "groups": [["e", "f"]]},
        "Hair": {"region": "hair", "groups": [["a", "b"]]}}})

    class Measure(PaintMeasure):
        attributes = ["Eyeglasses", "Hair"]

    m = sat3d.train_sat3d(PaintGenerator(), Measure(), descriptors=desc, parser=halves_parser, steps=0, n_codes=4,
                          lambdas={"bg": 0.0})
    assert m.preselection.startswith("Eyeglasses: 0 channels (region glasses in none of the 4 images)")
    assert torch.equal(m.logits, sat3d.initial_logits(["Eyeglasses", "Hair"], 16))


# --------------------------------------------------------------------------- the statistics by hand


def corners_parser(images, region):
    """top = rows above the middle, left = columns left of it, spot = one pixel, none = empty."""
    b, h, w = images.shape[0], *images.shape[-2:]
    mask = torch.zeros(b, h, w)
    if region == "top":
        mask[:, : h // 2] = 1
    elif region == "left":
        mask[:, :, : w // 3] = 1
    elif region == "spot":
        mask[:, 3, 5] = 1
    return mask


def test_statistics_equal_one_backward_per_region_by_hand():
    G = tiny_generator(32)
    layout = StyleLayout.from_generator(G)
    bank = sat3d.sample_latent_bank(G, 6, seed=3)
    regions = ["top", "left", "spot", "none"]
    stats = gradient_statistics(G, layout, bank, corners_parser, regions, n_samples=3, seed=7, out_resolution=16)
    pick = torch.randperm(6, generator=torch.Generator().manual_seed(7))[:3]
    sums = torch.zeros(4, layout.n_channels, dtype=torch.float64)
    for i in pick.tolist():
        styles = G.styles(G.to_wplus(bank[i : i + 1]))
        for r, region in enumerate(regions):
            s = layout.flatten(styles).detach().requires_grad_(True)
            img = G.synthesis_from_styles(layout.unflatten(s, styles), out_resolution=16)
            mask = corners_parser(img, region)  # [1, 16, 16]
            if not mask.any():
                continue
            (g,) = torch.autograd.grad((img * mask[:, None]).sum(), s)
            sums[r] += g[0].abs().double() / mask.sum()
    assert stats.counts.tolist() == [3, 3, 3, 0]
    torch.testing.assert_close(stats.sums, sums, rtol=1e-4, atol=1e-9)
    means = sums / torch.tensor([3, 3, 3, 1], dtype=torch.float64)[:, None]
    total = means.sum(0, keepdim=True)
    unreached = total[0] == 0  # the b32 layers' channels do not reach a 16 px render: 0, not 0 / 0
    assert int(unreached.sum()) == sum(c for name, c in layout.layers if name.startswith("b32."))
    torch.testing.assert_close(stats.values(), torch.where(total > 0, means / total, 0.0), rtol=1e-4, atol=1e-9)
    assert stats.means()[3].abs().sum() == 0  # an absent region counts for no image


def test_one_generator_call_per_statistics_image(monkeypatch):
    G = tiny_generator(32)
    layout = StyleLayout.from_generator(G)
    bank = sat3d.sample_latent_bank(G, 8)
    real = G.synthesis_from_styles
    batches = []

    def spy(styles, *a, **kw):
        batches.append(next(iter(styles.values())).shape[0])
        return real(styles, *a, **kw)

    monkeypatch.setattr(G, "synthesis_from_styles", spy)
    gradient_statistics(G, layout, bank, corners_parser, ["top", "left", "spot"], n_samples=5, out_resolution=16)
    assert batches == [3] * 5  # one render of the 3 region copies (and one backward) per image


# --------------------------------------------------------------------------- resume and the statistics file


def face_regions_parser(images, region):
    """Fixed areas for the face descriptor set's regions (hair on top, glasses nowhere)."""
    b, h, w = images.shape[0], *images.shape[-2:]
    mask = torch.zeros(b, h, w)
    area = {"hair": (slice(0, h // 3), slice(None)), "eyes": (slice(h // 3, h // 2), slice(None)),
            "face": (slice(h // 3, None), slice(w // 4, -w // 4)), "lower_face": (slice(h // 2, None), slice(None)),
            "mouth": (slice(2 * h // 3, 3 * h // 4), slice(w // 3, -w // 3))}.get(region)
    if area is not None:
        mask[(slice(None), *area)] = 1
    return mask


@pytest.fixture(scope="module")
def tiny_qmm():
    return sat3d.QMM(tiny_clip(), sat3d.load_descriptors("faces"))


class Stop(Exception):
    pass


def _faces_run(G, q, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # an unfiltered bank: the training-set filter's CLIP renders are not pre-selection's
        return sat3d.train_sat3d(G, q, **{"steps": 2, "batch_size": 1, "n_codes": 8, "lr": 0.1, "out_resolution": 16,
                                          "parser": face_regions_parser, "filter_training_set": False, **kw})


def test_a_pass_stopped_after_k_images_resumes_from_the_checkpoint(tiny_qmm, tmp_path):
    G = tiny_generator(32)
    full = _faces_run(G, tiny_qmm, checkpoint=tmp_path / "full.ckpt", preselect_kwargs={"n_samples": 5})
    ckpt = tmp_path / "run.ckpt"

    def stop_after_two(done, total):
        if done == 2:
            raise Stop

    with pytest.raises(Stop):
        _faces_run(G, tiny_qmm, checkpoint=ckpt, preselect_kwargs={"n_samples": 5, "progress": stop_after_two})
    partial = torch.load(ckpt, weights_only=True)
    assert partial["step"] == 0 and partial["logits"] is None and partial["preselect_statistics"]["done"] == 2
    seen = []
    resumed = _faces_run(G, tiny_qmm, checkpoint=ckpt,
                         preselect_kwargs={"n_samples": 5, "progress": lambda d, t: seen.append((d, t))})
    assert seen == [(2, 5), (3, 5), (4, 5), (5, 5)]  # the 2 images done are not redone
    assert torch.equal(resumed.logits, full.logits) and resumed.losses == full.losses
    assert resumed.preselection == full.preselection and full.preselection.startswith("Hairstyle: ")
    done, want = torch.load(ckpt, weights_only=True), torch.load(tmp_path / "full.ckpt", weights_only=True)
    assert done["step"] == 2 and done["preselect_statistics"]["done"] == 5  # the statistics stay in the checkpoint
    for key in ("sums", "counts"):
        assert torch.equal(done["preselect_statistics"][key], want["preselect_statistics"][key])
    with pytest.raises(TargetCLIPError, match="another pass"):  # a checkpoint of a pass over other images
        torch.save(partial, ckpt)
        _faces_run(G, tiny_qmm, checkpoint=ckpt, preselect_kwargs={"n_samples": 4})


def test_the_statistics_file_is_reused_and_refused_for_another_generator(tiny_qmm, tmp_path, monkeypatch):
    G = tiny_generator(32)
    file = tmp_path / "stats.safetensors"
    first = _faces_run(G, tiny_qmm, steps=0, preselect_statistics=file, preselect_kwargs={"n_samples": 3})
    assert file.is_file() and not list(tmp_path.glob("*.part"))
    stats = sat3d.load_preselect_statistics(file)
    assert stats.done == 3 and stats.regions == ["hair", "eyes", "face", "lower_face", "glasses", "mouth"]
    calls = []
    real = G.synthesis_from_styles
    monkeypatch.setattr(G, "synthesis_from_styles", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    again = _faces_run(G, tiny_qmm, steps=0, preselect_statistics=file, preselect_kwargs={"n_samples": 3})
    assert calls == [] and torch.equal(again.logits, first.logits)  # no generator call
    assert again.preselection.endswith(f"from {file}")
    with pytest.raises(TargetCLIPError, match="another generator"):
        _faces_run(tiny_generator(32, seed=1), tiny_qmm, steps=0, preselect_statistics=file,
                   preselect_kwargs={"n_samples": 3})
    with pytest.raises(TargetCLIPError, match="another pass"):
        _faces_run(G, tiny_qmm, steps=0, seed=1, preselect_statistics=file, preselect_kwargs={"n_samples": 3})
    file.write_bytes(b"not safetensors")
    with pytest.raises(TargetCLIPError, match="unreadable SAT3D pre-selection statistics"):
        _faces_run(G, tiny_qmm, steps=0, preselect_statistics=file, preselect_kwargs={"n_samples": 3})


# --------------------------------------------------------------------------- initialisation, k, descriptors


def test_initial_logits_as_the_paper():
    got = sat3d.initial_logits(["A", "B", "C"], 5, {"A": [0, 2], "C": [2, 4]}, strengths={"A": 1.8, "C": 0.5})
    want = torch.tensor([[1.8, 0, 1.8, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0.5, 0, 0.5], [0, 1, 0, 1, 0]])
    assert torch.equal(got, want)  # M[t, i] = d_t where pre-selected for t, M[others, i] = 1 where for none


def test_k_scales_to_the_generator_and_paper_channels_is_eg3d_ffhq512():
    from targetclip_core.bench.benchmarks import ffhq512_eg3d_config
    from targetclip_core.generators.eg3d import EG3DGenerator

    torch.manual_seed(0)
    assert StyleLayout.from_generator(EG3DGenerator(ffhq512_eg3d_config())).n_channels == PAPER_CHANNELS == 5760
    assert scaled_k(3500, 5760) == 3500 and scaled_k(3500, 6048) == 3500  # as many channels or more: the paper's k
    assert scaled_k(3500, 2880) == 1750 and scaled_k(3500, 40) == round(3500 * 40 / 5760) == 24
    assert scaled_k(7000, 6048) == 6048 and scaled_k(7000, 5000) == 5000  # never more than n
    assert scaled_k(0, 100) == 0


def test_descriptor_preselect_entries():
    faces = sat3d.load_descriptors("faces")
    assert (faces["Hairstyle"].preselect_k, faces["Hairstyle"].preselect_d) == (3500, 1.8)  # the paper's
    assert (faces["Expression"].preselect_k, faces["Expression"].preselect_d) == (3500, 1.8)  # the defaults
    spec = {"region": "hair", "complex": True, "groups": [["a", "b"]]}
    got = sat3d.descriptors_from_dict({"attributes": {"X": {**spec, "preselect": {"k": 100}}}})["X"]
    assert (got.preselect_k, got.preselect_d) == (100, 1.8)
    for bad, match in (({"k": -1}, "whole number"), ({"k": 2.5}, "whole number"), ({"d": "x"}, "must be a number"),
                       ({"kk": 1}, "an object with"), (3, "an object with")):
        with pytest.raises(TargetCLIPError, match=match):
            sat3d.descriptors_from_dict({"attributes": {"X": {**spec, "preselect": bad}}})
    with pytest.raises(TargetCLIPError, match="not 'complex'"):
        sat3d.descriptors_from_dict({"attributes": {"X": {**spec, "complex": False, "preselect": {"k": 1}}}})
