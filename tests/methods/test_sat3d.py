"""SAT3D (issue 6, StyleGAN2): StyleSpace flattening, losses by hand, the mask matrix, transfer
algebra, training / resume on tiny models, a planted-attribute recovery, matrix files."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from helpers.clip import tiny_clip
from helpers.generators import tiny_generator
from helpers.paths import REPO_ROOT
from helpers.stand_ins import StandInGenerator
from torch import nn

from targetclip_core.errors import LatentError, TargetCLIPError
from targetclip_core.generators.stylespace import StyleLayout, edit_styles, flatten_styles, is_torgb, unflatten
from targetclip_core.methods import sat3d

torch.set_num_threads(1)  # tiny tensors: threads only add contention


# --------------------------------------------------------------------------- a planted generator
# Its "image" is the StyleSpace itself laid out as pixels, so a score that reads a few pixels
# depends on known channels only.  Layers: b4.conv1, b4.torgb, b8.conv0, b8.conv1, b8.torgb
# (8 channels each) -> 40 values + 8 zeros = a [3, 4, 4] image.


class PlantedGenerator(StandInGenerator):
    LAYERS = ("b4.conv1", "b4.torgb", "b8.conv0", "b8.conv1", "b8.torgb")

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.n_latent = len(self.LAYERS)
        self.map = nn.Parameter(torch.randn(8, 8, generator=g), requires_grad=False)
        self.affines = nn.Parameter(torch.randn(self.n_latent, 8, 8, generator=g), requires_grad=False)
        self.identity = {"arch": "planted", "resolution": 4, "n_latent": self.n_latent, "w_dim": 8}

    def synthesis_from_styles(self, styles, out_resolution=None, noise_mode="const"):
        flat = torch.cat(list(styles.values()), dim=1)
        return torch.cat([flat, flat.new_zeros(flat.shape[0], 8)], dim=1).view(-1, 3, 4, 4)


def pixel(img, index):
    return img.flatten(1)[:, index]


class PlantedMeasure:
    """Attribute A reads pixels 24, 25 (b8.conv1 channels 0, 1 = flat 16, 17); B reads pixels
    4, 5 (b4.conv1 channels 4, 5 = flat 4, 5)."""

    attributes = ["A", "B"]
    input_size = 4
    A_CHANNELS, B_CHANNELS = [16, 17], [4, 5]

    def __call__(self, img):
        def dists(i, j):
            x, y = pixel(img, i), pixel(img, j)
            zero = torch.zeros_like(x)
            return [torch.stack([2 * (x + y), zero], -1).softmax(-1), torch.stack([2 * x, 2 * y, zero], -1).softmax(-1)]

        return {"A": dists(24, 25), "B": dists(4, 5)}


def row0_parser(images, region):
    """Region "top": the first image row (pixels 0-3 of each colour plane)."""
    mask = torch.zeros(images.shape[0], 4, 4)
    mask[:, 0] = 1
    return mask


# --------------------------------------------------------------------------- StyleSpace


def test_layout_maps_channels_both_ways_and_leaves_torgb_out():
    G = tiny_generator(32)
    styles = G.styles(torch.randn(2, G.n_latent, G.w_dim))
    flat, layout = flatten_styles(G, styles)
    assert all(not is_torgb(n) for n, _ in layout.layers)
    assert flat.shape == (2, sum(s.shape[1] for n, s in styles.items() if not is_torgb(n)))
    for i in (0, 63, 64, layout.n_channels - 1):
        name, ch = layout.channel_of(i)
        assert layout.index_of(name, ch) == i
        assert torch.equal(flat[:, i], styles[name][:, ch])
    back = unflatten(flat, layout, styles)
    assert list(back) == list(styles) and all(torch.equal(back[k], styles[k]) for k in styles)
    with pytest.raises(LatentError, match="toRGB"):
        layout.index_of("b4.torgb", 0)


def test_edit_styles_is_eq1():
    s, r, m = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[3.0, 2.0, -1.0]]), torch.tensor([1.0, 0.5, 0.0])
    assert torch.allclose(edit_styles(s, r, m, 2.0), torch.tensor([[5.0, 2.0, 3.0]]))


# --------------------------------------------------------------------------- losses by hand


def _np(d):
    return {k: [g.numpy() for g in v] for k, v in d.items()}


def _dists(seed):
    g = torch.Generator().manual_seed(seed)
    return {a: [torch.rand(2, n, generator=g).softmax(-1) for n in (3, 2)] for a in ("A", "B", "C")}


def test_loss_ref_and_src_by_hand():
    e, r, s = _dists(0), _dists(1), _dists(2)
    en, rn, sn = _np(e), _np(r), _np(s)

    def dist(x, y, a, reduce=np.sum):  # per sample: L1 of every group, summed (the paper) over the groups
        return reduce([np.abs(p - q).sum(-1) for p, q in zip(x[a], y[a])], axis=0)

    # the paper's sums over the target attributes and their groups, averaged over the batch of pairs
    want_ref = (dist(en, rn, "A") + dist(en, rn, "C")).mean()
    want_src = dist(en, sn, "B").mean()
    assert sat3d.loss_ref(e, r, ["A", "C"]).item() == pytest.approx(want_ref, rel=1e-6)
    assert sat3d.loss_src(e, s, ["A", "C"]).item() == pytest.approx(want_src, rel=1e-6)
    assert sat3d.loss_src(e, s, ["A", "B", "C"]).item() == 0.0
    # the variant: means over attributes and groups
    want_ref_mean = np.mean([dist(en, rn, "A", np.mean), dist(en, rn, "C", np.mean)], axis=0).mean()
    assert sat3d.loss_ref(e, r, ["A", "C"], reduction="mean").item() == pytest.approx(want_ref_mean, rel=1e-6)


def test_background_probability_and_total_losses_by_hand():
    g = torch.Generator().manual_seed(3)
    e, s = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    region_src, region_edit = torch.rand(2, 4, 4, generator=g) > 0.6, torch.rand(2, 4, 4, generator=g) > 0.6
    en, sn = e.numpy(), s.numpy()
    changed, count = 0.0, 0
    for b in range(2):  # B = (not B_src) and (not B_edit); |I_edit B - I_src B| over pixels and colours / sum B
        for y in range(4):
            for x in range(4):
                if not region_src[b, y, x] and not region_edit[b, y, x]:
                    count += 1
                    changed += sum(abs(en[b, k, y, x] - sn[b, k, y, x]) for k in range(3))
    assert sat3d.background_loss(e, s, region_src, region_edit).item() == pytest.approx(changed / count, rel=1e-5)
    everywhere = torch.ones(2, 4, 4, dtype=torch.bool)
    assert sat3d.background_loss(e, s, everywhere, region_edit).item() == 0.0  # no background pixel: nothing to keep

    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.5]])  # 2 attributes + others, 3 channels
    p = np.exp(logits.numpy()) / np.exp(logits.numpy()).sum(0, keepdims=True)
    want = np.mean([abs(1 - max(p[:, i])) for i in range(3)])  # (1/n) sum_i |1 - max_rows softmax(M)^i|
    assert sat3d.probability_loss(logits).item() == pytest.approx(want, rel=1e-6)
    assert sat3d.probability_loss(torch.tensor([[50.0], [0.0]])).item() == pytest.approx(0.0, abs=1e-6)  # one owner

    assert sat3d.DEFAULT_LAMBDAS == {"attr": 3.5, "bg": 40.0, "prob": 0.1}
    terms = {"ref": torch.tensor(1.0), "src": torch.tensor(2.0), "bg": torch.tensor(0.5), "prob": torch.tensor(4.0)}
    assert sat3d.total_loss(terms, sat3d.DEFAULT_LAMBDAS).item() == pytest.approx(3.5 * (1 + 2) + 40 * 0.5 + 0.1 * 4)
    apart = {**sat3d.DEFAULT_LAMBDAS, "ref": 1.0}  # the variant: L_ref weighted on its own
    assert sat3d.total_loss(terms, apart).item() == pytest.approx(1 * 1 + 3.5 * 2 + 40 * 0.5 + 0.1 * 4)


def test_mask_is_softmax_over_attributes_summed_over_the_set():
    logits = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    p = np.exp(logits.numpy()) / np.exp(logits.numpy()).sum(0, keepdims=True)
    got = sat3d.attribute_mask(logits, ["A", "B", "C"], ["A", "C"])
    assert np.allclose(got.numpy(), p[0] + p[2], atol=1e-6)
    init = sat3d.initial_logits(["A", "B"], 5, {"B": [1, 3]})
    assert init.tolist() == [[0, 0, 0, 0, 0], [0, 1, 0, 1, 0], [1, 0, 1, 0, 1]]
    with pytest.raises(TargetCLIPError, match="unknown attribute"):
        sat3d.attribute_mask(logits, ["A", "B", "C"], ["Z"])


def test_qmm_is_clip_zero_shot_softmax_per_group():
    C = tiny_clip()
    desc = sat3d.descriptors_from_dict({"template": "a face with {}", "attributes": {
        "X": {"groups": [["red hair", "blue hair", "no hair"], ["a hat", "no hat"]]}, "Y": [["a beard", "no beard"]]}})
    q = sat3d.QMM(C, desc)
    assert q.logit_scale == pytest.approx(float(C.model.logit_scale.exp()))
    img = torch.rand(2, 3, 32, 32) * 2 - 1
    got = q(img)
    with torch.no_grad():
        im = C.encode_image(img).numpy()
        for attr, groups in (("X", desc["X"].groups), ("Y", desc["Y"].groups)):
            assert groups[0][0].startswith("a face with ")
            for k, phrases in enumerate(groups):
                logits = q.logit_scale * im @ C.encode_text(list(phrases)).numpy().T
                want = np.exp(logits - logits.max(1, keepdims=True))
                want /= want.sum(1, keepdims=True)
                assert np.allclose(got[attr][k].detach().numpy(), want, atol=1e-5)


def test_builtin_and_user_descriptors(tmp_path):
    faces = sat3d.load_descriptors("faces")
    assert faces.names == ["Hairstyle", "Hair color", "Eye region", "Expression", "Beard", "Eyeglasses", "Smiling"]
    assert sat3d.load_descriptors("cats").names and sat3d.load_descriptors("cars").names
    user = tmp_path / "mine.json"
    user.write_text(json.dumps({"extends": "faces", "attributes": {"Hat": {"groups": [["a hat", "no hat"]]}}}))
    mine = sat3d.load_descriptors(user)
    assert mine.names[-1] == "Hat" and mine["Hat"].groups == (("a face with a hat", "a face with no hat"),)
    user.write_text(json.dumps({"attributes": {"Hat": [["a hat"]]}}))
    with pytest.raises(TargetCLIPError, match="at least two phrases"):
        sat3d.load_descriptors(user)


# --------------------------------------------------------------------------- transfer algebra


def hard_matrix(G, owners: dict) -> sat3d.SAT3DMatrix:
    """A matrix whose probabilities are exactly 0/1: owners maps attribute -> flat channels."""
    layout = StyleLayout.from_generator(G)
    attrs = list(owners)
    logits = torch.full((len(attrs) + 1, layout.n_channels), -1e4)
    logits[-1] = 0
    for i, chans in enumerate(owners.values()):
        logits[i, chans] = 0
        logits[-1, chans] = -1e4
    return sat3d.SAT3DMatrix(logits, attrs, layout, dict(G.identity), sat3d.generator_fingerprint(G))


@pytest.fixture(scope="module")
def G32():
    return tiny_generator(32)


def _pair(G):
    g = torch.Generator().manual_seed(5)
    return torch.randn(2, G.w_dim, generator=g), torch.randn(1, G.w_dim, generator=g)


def test_delta_zero_returns_the_source_exactly(G32):
    src, ref = _pair(G32)
    m = hard_matrix(G32, {"A": [0, 5, 100]})
    m.logits = torch.randn_like(m.logits)  # any soft mask
    styles = sat3d.transfer_styles(G32, src, ref, m, ["A"], delta=0.0)
    want = G32.styles(G32.to_wplus(src))
    assert all(torch.equal(styles[k], want[k]) for k in want)
    assert torch.equal(sat3d.transfer(G32, src, ref, m, "A", delta=0.0), G32.synthesis(G32.to_wplus(src)))
    with pytest.raises(TargetCLIPError, match="delta"):
        sat3d.transfer_styles(G32, src, ref, m, ["A"], delta=3.5)


def test_only_masked_channels_change_and_torgb_never(G32):
    src, ref = _pair(G32)
    chans = [0, 7, 70, 200]
    m = hard_matrix(G32, {"A": chans, "B": [1, 2]})
    out = sat3d.transfer_styles(G32, src, ref, m, ["A"], delta=1.0)
    s_src, s_ref = G32.styles(G32.to_wplus(src)), G32.styles(G32.to_wplus(ref))
    layout = m.layout
    f_out, f_src, f_ref = layout.flatten(out), layout.flatten(s_src), layout.flatten(s_ref).expand(2, -1)
    others = torch.ones(layout.n_channels, dtype=torch.bool)
    others[chans] = False
    assert torch.equal(f_out[:, others], f_src[:, others])
    assert torch.allclose(f_out[:, chans], f_ref[:, chans], atol=1e-6)
    for name in out:
        if is_torgb(name):
            assert torch.equal(out[name], s_src[name])


def test_sequential_transfer_composes_for_disjoint_masks(G32):
    src, ref = _pair(G32)
    m = hard_matrix(G32, {"A": [0, 3, 90], "B": [4, 91, 300]})
    m.logits[:, [10, 11]] = torch.tensor([[0.3, -0.2], [-1e4, -1e4], [0.0, 0.1]])  # soft A-only channels
    seq = m.layout.flatten(sat3d.transfer_styles(G32, src, ref, m, ["A", "B"], delta=[0.7, 0.7]))
    both = m.layout.flatten(sat3d.transfer_styles(G32, src, ref, m, ["A", "B"], delta=0.7, combine=True))
    assert torch.allclose(seq, both, atol=1e-6)


# --------------------------------------------------------------------------- training


def _train_tiny(G, q, steps, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # the plain bank (filtering is tested in test_sat3d_training_set.py), so tests can rebuild it by hand
        return sat3d.train_sat3d(G, q, steps=steps, batch_size=1, n_codes=4, lr=0.1, out_resolution=16,
                                 **{"filter_training_set": False, **kw})


@pytest.fixture(scope="module")
def tiny_qmm():
    return sat3d.QMM(tiny_clip(), sat3d.load_descriptors("faces"))


def _mean_losses(G, q, logits, bank):
    """Loss terms averaged over every ordered pair of the bank and every attribute."""
    src, ref = bank.repeat_interleave(len(bank), 0), bank.repeat(len(bank), 1)
    runs = [sat3d.sat3d_losses(G, q, logits, src, ref, [a], out_resolution=16, lambdas={"bg": 0.0}) for a in q.attributes]
    return {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}


def test_training_on_tiny_models_lowers_losses_and_concentrates_the_mask(G32, tiny_qmm):
    m = _train_tiny(G32, tiny_qmm, 60)
    assert len(m.losses["total"]) == 60 and m.steps == 60
    bank = sat3d.sample_latent_bank(G32, 4)  # the training bank (same seed and size)
    start = sat3d.initial_logits(tiny_qmm.attributes, m.layout.n_channels)
    before, after = _mean_losses(G32, tiny_qmm, start, bank), _mean_losses(G32, tiny_qmm, m.logits, bank)
    assert after["total"] < before["total"]
    assert after["prob"] < before["prob"]
    assert np.mean(m.losses["prob"][-10:]) < np.mean(m.losses["prob"][:10])
    assert m.preselection == "skipped (no region parser)"  # faces marks complex attributes


def test_checkpoint_resume_equals_an_uninterrupted_run(G32, tiny_qmm, tmp_path):
    full = _train_tiny(G32, tiny_qmm, 12)
    ckpt = tmp_path / "run.ckpt"
    _train_tiny(G32, tiny_qmm, 12, checkpoint=ckpt, checkpoint_every=5, callback=lambda s: s.step == 7)
    resumed = _train_tiny(G32, tiny_qmm, 12, checkpoint=ckpt, checkpoint_every=5)
    assert torch.equal(resumed.logits, full.logits)
    assert resumed.losses == full.losses


def test_a_checkpoint_of_other_losses_is_not_resumed(tmp_path):
    G, meas = PlantedGenerator(), PlantedMeasure()
    kw = {"steps": 6, "batch_size": 2, "n_codes": 16, "lr": 0.05, "lambdas": {"bg": 0.0}}
    ckpt = tmp_path / "run.ckpt"
    sat3d.train_sat3d(G, meas, checkpoint=ckpt, checkpoint_every=2, callback=_stop_at(3), **kw)
    state = torch.load(ckpt, weights_only=True)
    assert state["objective"]["lambdas"] == {"attr": 3.5, "bg": 0.0, "prob": 0.1} and state["objective"]["name"] == "paper"
    with pytest.raises(TargetCLIPError, match="checkpoint of other losses"):
        sat3d.train_sat3d(G, meas, checkpoint=ckpt, **{**kw, "lambdas": {"bg": 0.0, "attr": 1.0}})
    with pytest.raises(TargetCLIPError, match="checkpoint of other losses"):
        sat3d.train_sat3d(G, meas, checkpoint=ckpt, reduction="mean", **kw)
    torch.save({k: v for k, v in state.items() if k != "objective"}, ckpt)  # written before the losses followed the paper
    with pytest.raises(TargetCLIPError, match="before SAT3D followed its paper"):
        sat3d.train_sat3d(G, meas, checkpoint=ckpt, **kw)


def test_training_finds_planted_attribute_channels():
    G, meas = PlantedGenerator(), PlantedMeasure()
    m = sat3d.train_sat3d(G, meas, steps=1000, batch_size=4, n_codes=64, lr=0.05, lambdas={"bg": 0.0})
    for attr, chans in (("A", meas.A_CHANNELS), ("B", meas.B_CHANNELS)):
        p = m.mask([attr])
        rest = torch.ones_like(p, dtype=torch.bool)
        rest[chans] = False
        assert p[chans].min() > 0.5, (attr, p[chans])
        assert p[rest].max() < 0.2, (attr, p[rest].max())
    assert {c for _, c, _ in m.top_channels("A", 2)} == {0, 1}  # b8.conv1 channels 0 and 1


def test_instant_transfer_learns_the_pair_mask():
    G, meas = PlantedGenerator(), PlantedMeasure()
    src, ref = torch.randn(1, 8, generator=torch.Generator().manual_seed(1)), torch.randn(1, 8, generator=torch.Generator().manual_seed(2))
    m = sat3d.instant_transfer(G, meas, src, ref, ["A"], steps=200, lr=0.05)
    p = m.mask(["A"])
    assert p[meas.A_CHANNELS].min() > 0.5 and m.losses["ref"][-1] < m.losses["ref"][0]


def _planted_pairs(n_src=3, n_ref=3):
    g = torch.Generator().manual_seed(7)
    return torch.randn(n_src, 8, generator=g), torch.randn(n_ref, 8, generator=g)


PAPER_LAMBDAS = {"ref": 3.5, "src": 3.5, "bg": 40.0, "prob": 0.1}  # lambda_attr on L_ref + L_src


def test_instant_from_the_trained_matrix_never_loses_on_its_pair():
    G, meas = PlantedGenerator(), PlantedMeasure()
    trained = sat3d.train_sat3d(G, meas, steps=40, batch_size=4, n_codes=64, lr=0.05, lambdas={"bg": 0.0})
    src, ref = _planted_pairs(3, 1)
    # instant_transfer keeps the best matrix seen, its start included: one step returns the start itself
    assert torch.equal(sat3d.instant_transfer(G, meas, src[:1], ref, "A", steps=1, init=trained).logits, trained.logits)
    for lr in (0.05, 2.0):  # a sane rate, and one whose steps overshoot
        r = sat3d.compare_instant_with_trained(G, meas, trained, src, ref, ["A"], steps=8, lr=lr, init_from_trained=True)
        assert len(r.pairs) == 3 and r.summary["trained_wins"] == 0
        for i, p in enumerate(r.pairs):
            assert p["instant"]["total"] <= p["trained"]["total"] + 1e-6, (lr, p)
            assert p["trained"] == sat3d.sat3d_losses(G, meas, trained.logits, src[i : i + 1], ref, ["A"])  # one reference for all
        s = r.summary
        assert s["instant_wins"] + s["ties"] == 3
        for side in ("trained", "instant"):
            assert s[side]["total"] == pytest.approx(np.mean([p[side]["total"] for p in r.pairs]))
            assert s[side]["total"] == pytest.approx(sum(w * s[side][k] for k, w in PAPER_LAMBDAS.items()))


def test_instant_masks_beat_a_wrong_matrix_and_concentrate_on_the_planted_channels():
    G, meas = PlantedGenerator(), PlantedMeasure()
    wrong = hard_matrix(G, {"A": meas.B_CHANNELS, "B": meas.A_CHANNELS})  # A's edit moves B's channels
    src, ref = _planted_pairs()
    r = sat3d.compare_instant_with_trained(G, meas, wrong, src, ref, ["A"], steps=200, lr=0.1)
    assert r.summary["instant_wins"] == 3 and r.summary["instant"]["total"] < r.summary["trained"]["total"]
    rest = torch.ones(StyleLayout.from_generator(G).n_channels, dtype=torch.bool)
    rest[meas.A_CHANNELS] = False
    for i, p in enumerate(r.pairs):
        mask = p["instant_matrix"].mask(["A"])  # starts uniform (1 / (e + 2) everywhere)
        assert int(mask.argmax()) in meas.A_CHANNELS
        assert mask[meas.A_CHANNELS].mean() > 5 * mask[rest].mean(), mask
        # the returned styles are the pair's edits by each matrix
        want = sat3d.transfer_styles(G, src[i : i + 1], ref[i : i + 1], p["instant_matrix"], ["A"])
        assert all(torch.equal(p["styles_instant"][k], want[k]) for k in want)
    with pytest.raises(TargetCLIPError, match="1 or 3 references"):
        sat3d.compare_instant_with_trained(G, meas, wrong, src, ref[:2], ["A"], steps=1)


def row0_and_rest_parser(images, region):
    """Region "top": the first image row (as row0_parser); "rest": the other rows."""
    top = row0_parser(images, region)
    return top if region == "top" else 1 - top


def test_preselection_picks_channels_drawn_inside_the_region():
    G = PlantedGenerator()
    layout = StyleLayout.from_generator(G)
    bank = sat3d.sample_latent_bank(G, 16)
    # k 1920 of the paper's 5760 channels is 8 of this generator's 24
    got = sat3d.preselect_channels(G, layout, bank, row0_and_rest_parser, {"Top": ("top", 1920, 1.8)}, ["top", "rest"],
                                   n_samples=2)
    # pixels of row 0: b4.conv1 ch 0-3 (flat 0-3), b8.conv0 ch 0-3 (flat 8-11), b8.torgb (never edited)
    assert got.channels["Top"].tolist() == [0, 1, 2, 3, 8, 9, 10, 11]
    assert got.strengths == {"Top": 1.8} and got.summary.startswith("Top: 8 channels")


def test_preselection_reports_progress_and_can_be_cancelled():
    G = PlantedGenerator()
    layout = StyleLayout.from_generator(G)
    bank = sat3d.sample_latent_bank(G, 16)
    calls = []
    sat3d.preselect_channels(G, layout, bank, row0_and_rest_parser, {"Top": ("top", 1920, 1.8)}, ["top", "rest"],
                             n_samples=2, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(0, 2), (1, 2), (2, 2)]  # before the first image, then once per image of the statistics pass

    class Cancelled(Exception):
        pass

    def cancel(done, total):
        raise Cancelled

    with pytest.raises(Cancelled):
        sat3d.preselect_channels(G, layout, bank, row0_and_rest_parser, {"Top": ("top", 1920, 1.8)}, ["top", "rest"],
                                 n_samples=2, progress=cancel)


# --------------------------------------------------------------------------- files


def test_matrix_round_trip_and_refusal_of_another_generator(G32, tmp_path):
    m = hard_matrix(G32, {"A": [1, 2], "B": [3]})
    m.logits = torch.randn_like(m.logits)
    m.losses = {"total": [1.0, 0.5]}
    path = sat3d.save_sat3d_matrix(tmp_path / "faces.safetensors", m)
    back = sat3d.load_sat3d_matrix(path, generator=G32)
    assert torch.equal(back.logits, m.logits) and back.attributes == ["A", "B"] and back.layout == m.layout
    assert back.losses == m.losses and back.generator == G32.identity
    with pytest.raises(LatentError, match="another generator of the same layout"):
        sat3d.load_sat3d_matrix(path, generator=tiny_generator(32, seed=3))
    sat3d.load_sat3d_matrix(path, generator=tiny_generator(32, seed=3), strict_weights=False)
    with pytest.raises(LatentError, match="only fits the generator"):
        sat3d.load_sat3d_matrix(path, generator=tiny_generator(16))
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"junk")
    with pytest.raises(TargetCLIPError):
        sat3d.load_sat3d_matrix(bad)


def test_matrices_trained_before_the_paper_losses_still_load_and_say_so(G32, tmp_path):
    from safetensors.torch import save_file

    m = hard_matrix(G32, {"A": [1, 2], "B": [3]})
    meta = {"format": "targetclip.sat3d.matrix", "format_version": "1", "attributes": json.dumps(m.attributes),
            "layout": json.dumps(m.layout.to_json()), "generator": json.dumps(G32.identity), "fingerprint": m.fingerprint,
            "descriptors": "faces", "clip": "null", "steps": "10", "losses": "{}", "preselection": "none"}
    old = tmp_path / "old.safetensors"  # as written before the objective was recorded
    save_file({"logits": m.logits.contiguous()}, str(old), metadata=meta)
    back = sat3d.load_sat3d_matrix(old, generator=G32)
    assert torch.equal(back.logits, m.logits) and back.objective["name"] == "pre-paper"
    assert "soft-mask MSE" in back.objective["summary"] and back.training_set == {}
    assert "losses: L_ref + 3.5 L_src as means" in sat3d.describe_matrix(back)
    m.objective = sat3d.objective_info(sat3d.DEFAULT_LAMBDAS)
    new = sat3d.load_sat3d_matrix(sat3d.save_sat3d_matrix(tmp_path / "new.safetensors", m))
    assert new.objective == m.objective and new.objective["name"] == "paper"
    assert new.objective["summary"].startswith("3.5 (L_ref + L_src) + 40 L_bg (binary parse, L1) + 0.1 L_prob")


def test_describe_matrix_names_the_attributes_and_the_generator(G32):
    m = hard_matrix(G32, {"A": [1, 2], "B": [3]})
    text = sat3d.describe_matrix(m, "faces.safetensors")
    lines = text.splitlines()
    assert lines[0] == f"faces.safetensors: 2 attributes x {m.layout.n_channels} StyleSpace channels"
    assert lines[1] == "  attributes: A, B"
    assert "32px" in lines[2] and m.fingerprint[:12] in lines[2]
    assert lines[4].startswith("  A: ") and lines[5].startswith("  B: ") and len(lines) == 6
    assert sat3d.describe_matrix(m).startswith("SAT3D matrix: 2 attributes")


def test_pairing_of_sources_with_references():
    def pairs(n, r, pairing):
        s, ref = sat3d.pair_sources_with_references(n, r, pairing)
        return s.tolist(), ref.tolist()

    assert sat3d.PAIRINGS == ["first reference", "pairwise", "every pair"]
    assert pairs(3, 2, "first reference") == ([0, 1, 2], [0, 0, 0])
    assert pairs(3, 3, "pairwise") == ([0, 1, 2], [0, 1, 2])
    assert pairs(3, 1, "pairwise") == ([0, 1, 2], [0, 0, 0])
    assert pairs(2, 3, "every pair") == ([0, 0, 0, 1, 1, 1], [0, 1, 2, 0, 1, 2])  # source-major
    assert pairs(1, 1, "every pair") == ([0], [0])
    with pytest.raises(TargetCLIPError, match=r"pairwise pairing needs one reference per source: 3 source\(s\), 2 references"):
        sat3d.pair_sources_with_references(3, 2, "pairwise")
    with pytest.raises(TargetCLIPError, match="unknown pairing 'zip'; choose one of first reference, pairwise, every pair"):
        sat3d.pair_sources_with_references(3, 3, "zip")


# --------------------------------------------------------------------------- command line


def test_cli_train_then_transfer(tmp_path, capsys):
    from helpers.clip import TINY_CLIP, register_tiny_clip

    from targetclip_core.cli.sat3d import main
    from targetclip_core.generators.load import save_generator

    register_tiny_clip()
    gen = tmp_path / "g.safetensors"
    save_generator(tiny_generator(32), gen)
    matrix = tmp_path / "m.safetensors"
    ckpt = tmp_path / "run.ckpt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(["sat3d-train", "-g", str(gen), "-o", str(matrix), "--clip", TINY_CLIP, "--pretrained", "none",
                   "--steps", "3", "--n-codes", "4", "--batch-size", "1", "--out-resolution", "16", "--device", "cpu",
                   "--checkpoint", str(ckpt)])
    assert rc == 0 and matrix.is_file() and ckpt.is_file()
    assert "7 attributes" in capsys.readouterr().out
    out = tmp_path / "edits"
    rc = main(["sat3d-transfer", "-g", str(gen), "-m", str(matrix), "--source-seeds", "0-1", "--reference-seed", "5",
               "-a", "Hairstyle", "Beard", "--delta", "1.5", "-o", str(out), "--device", "cpu"])
    assert rc == 0 and sorted(p.name for p in out.iterdir()) == [
        "reference.png", "source_0000.png", "source_0001.png", "transfer.json", "transfer_0000.png", "transfer_0001.png"]
    assert main(["sat3d-transfer", "-g", str(gen), "-m", str(matrix), "--source-seeds", "0", "--reference-seed", "5",
                 "-a", "Wings", "-o", str(out), "--device", "cpu"]) == 2


def test_cli_transfer_instant_and_compare(tmp_path, capsys):
    import csv

    from helpers.clip import TINY_CLIP
    from PIL import Image

    from targetclip_core.cli.args import parse_seeds
    from targetclip_core.cli.sat3d import main
    from targetclip_core.encoders.clip import load_clip
    from targetclip_core.generators.latents import z_from_seeds
    from targetclip_core.generators.load import load_generator, save_generator

    gen, matrix = tmp_path / "g.safetensors", tmp_path / "m.safetensors"
    save_generator(tiny_generator(32), gen)
    clip = _tiny_clip_dir(tmp_path / "clip")  # the same CLIP weights in every load
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["sat3d-train", "-g", str(gen), "-o", str(matrix), "--clip", TINY_CLIP, "--pretrained", "none",
                     "--steps", "3", "--n-codes", "4", "--batch-size", "1", "--out-resolution", "16", "--device", "cpu"]) == 0
    capsys.readouterr()
    base = ["sat3d-transfer", "-g", str(gen), "--source-seeds", "0-2", "--reference-seed", "5", "-a", "Hairstyle",
            "--device", "cpu", "--clip", clip, "--pretrained", "none", "--out-resolution", "16", "--lr", "0.1"]
    out = tmp_path / "cmp"
    assert main([*base, "-m", str(matrix), "--compare", "3", "-o", str(out)]) == 0
    assert "compared 3 pairs" in capsys.readouterr().out
    names = {p.name for p in out.iterdir()}
    assert {"compare.csv", "compare.md", "reference.png", "transfer.json"} <= names
    assert all(f"{kind}_{i:04d}.png" in names for kind in ("source", "transfer", "instant", "compare") for i in range(3))
    rows = list(csv.DictReader((out / "compare.csv").open(encoding="utf-8")))
    assert [r["source"] for r in rows] == ["seed 0", "seed 1", "seed 2"]
    # the trained columns, recomputed here: the matrix on each (source seed, reference seed) pair
    G = load_generator(gen, device="cpu")
    m = sat3d.load_sat3d_matrix(matrix, generator=G)
    q = sat3d.QMM(load_clip(clip, None, device="cpu"), sat3d.load_descriptors("faces"))
    with torch.no_grad():
        src = G.to_wplus(G.mapping(z_from_seeds(parse_seeds("0-2"), G.z_dim), truncation=0.7))
        ref = G.to_wplus(G.mapping(z_from_seeds([5], G.z_dim), truncation=0.7))
    for i, row in enumerate(rows):
        want = sat3d.sat3d_losses(G, q, m.logits, src[i : i + 1], ref, ["Hairstyle"], out_resolution=16)
        for k, v in want.items():
            assert float(row[f"trained_{k}"]) == pytest.approx(v, rel=1e-5, abs=1e-7), (i, k)
        assert row["winner"] in ("instant", "trained", "tie")
    md = (out / "compare.md").read_text("utf-8")
    mean_total = np.mean([float(r["trained_total"]) for r in rows])
    assert f"| total | {mean_total:.6g} |" in md
    sheet = np.asarray(Image.open(out / "compare_0000.png"))
    assert sheet.shape[1] == 4 * 32  # source | reference | trained | instant

    inst = tmp_path / "inst"  # no matrix: a mask per pair alone
    assert main([*base, "--instant", "2", "-o", str(inst)]) == 0
    assert sorted(p.name for p in inst.iterdir()) == [
        "reference.png", "source_0000.png", "source_0001.png", "source_0002.png", "transfer.json",
        "transfer_0000.png", "transfer_0001.png", "transfer_0002.png"]
    assert json.loads((inst / "transfer.json").read_text())["mode"] == "instant"
    capsys.readouterr()

    for bad, why in ((["--compare", "2"], "--compare compares an instant mask with a trained one"),
                     ([], "pass a trained --matrix, or --instant STEPS"),
                     (["--instant", "2", "--init-from-matrix"], "--init-from-matrix")):
        assert main([*base, *bad, "-o", str(tmp_path / "bad")]) == 2
        assert why in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


# --------------------------------------------------------------------------- scale-out (gloo on CPU)
# The run is defined by its global batch: N processes with global batch B learn what one process
# learns with B.  Equal up to float reduction order (DDP averages the shards' gradients, a single
# process takes the mean over the whole batch), and the logged losses likewise.

RTOL, ATOL = 1e-5, 1e-6


def lit_parser(images, region):
    """Region "lit": pixels whose first colour plane is positive.  The background differs from
    image to image, so L_bg must be normalised by the global batch's weight, not a shard's."""
    return (images[:, 0] > 0).float()


def _planted_run(**kw):
    """20 steps, global batch 4, L_bg on (a data-dependent region for A)."""
    desc = sat3d.descriptors_from_dict({"template": "{}", "attributes": {"A": {"groups": [["x", "y"]], "region": "lit"},
                                                                         "B": [["u", "v"]]}})
    return sat3d.train_sat3d(PlantedGenerator(), PlantedMeasure(), **{
        "steps": 20, "batch_size": 4, "n_codes": 32, "lr": 0.05, "descriptors": desc, "parser": lit_parser, **kw})


def _stop_at(step):
    return lambda s: s.step == step


def _assert_close(got, want):
    torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL)


def _ddp_worker(rank, world, init_file, tmp, results):
    """One process of 2: a full run, a run interrupted at step 8 (its checkpoint is resumed by one
    process in the test), and the resumption of a 1-process checkpoint of step 8."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        full = _planted_run()
        _planted_run(checkpoint=f"{tmp}/by2.ckpt", checkpoint_every=5, callback=_stop_at(8))
        resumed = _planted_run(checkpoint=f"{tmp}/by1.ckpt", checkpoint_every=5)
        with pytest.raises(TargetCLIPError, match="multiple of the number of processes"):
            _planted_run(batch_size=3)
        torch.save({"full": full.logits, "losses": full.losses, "resumed": resumed.logits}, f"{results}.{rank}")
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes_equal_one_with_the_global_batch_and_resume_with_another_count(tmp_path):
    import torch.multiprocessing as mp

    single = _planted_run()
    _planted_run(checkpoint=tmp_path / "by1.ckpt", checkpoint_every=5, callback=_stop_at(8))  # resumed by 2 in the workers
    results = tmp_path / "out"
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path), str(results)), nprocs=2, join=True)
    r0, r1 = (torch.load(f"{results}.{r}") for r in range(2))
    assert torch.equal(r0["full"], r1["full"])  # DDP keeps the replicas identical
    _assert_close(r0["full"], single.logits)  # 2 processes x 2 pairs == 1 process x 4 pairs
    assert not torch.equal(single.logits, sat3d.initial_logits(["A", "B"], 40))
    for k, v in single.losses.items():  # rank 0 logs the global batch's means
        _assert_close(torch.tensor(r0["losses"][k]), torch.tensor(v))
        assert r1["losses"][k] == r0["losses"][k]
    _assert_close(r0["resumed"], single.logits)  # 1 process to step 8, then 2
    ckpt = torch.load(tmp_path / "by2.ckpt", weights_only=True)
    assert ckpt["step"] == 8 and ckpt["processes"] == 2 and ckpt["batch_size"] == 4
    assert len(ckpt["log_attribute"]) == 8
    resumed = _planted_run(checkpoint=tmp_path / "by2.ckpt", checkpoint_every=5)  # 2 processes to step 8, then 1
    _assert_close(resumed.logits, single.logits)
    _assert_close(resumed.logits, r0["full"])


def test_checkpoints_hold_one_sampler_and_older_ones_still_resume(tmp_path):
    G, meas = PlantedGenerator(), PlantedMeasure()
    kw = {"steps": 12, "batch_size": 2, "n_codes": 16, "lr": 0.05, "lambdas": {"bg": 0.0}}
    full = sat3d.train_sat3d(G, meas, **kw)
    ckpt = tmp_path / "run.ckpt"
    sat3d.train_sat3d(G, meas, checkpoint=ckpt, checkpoint_every=5, callback=_stop_at(7), **kw)
    state = torch.load(ckpt, weights_only=True)
    assert state["batch_size"] == 2 and state["processes"] == 1 and torch.is_tensor(state["rng"])
    with pytest.raises(TargetCLIPError, match="global batch of 2 pairs"):
        sat3d.train_sat3d(G, meas, checkpoint=ckpt, **{**kw, "batch_size": 1})
    old = {k: v for k, v in state.items() if k not in ("batch_size", "processes")}
    torch.save({**old, "rng": [state["rng"]]}, ckpt)  # a single process of an older version: one state in a list
    assert torch.equal(sat3d.train_sat3d(G, meas, checkpoint=ckpt, **kw).logits, full.logits)
    torch.save({**old, "rng": [state["rng"], state["rng"]]}, ckpt)  # 2 processes that drew their own pairs
    with pytest.raises(TargetCLIPError, match="2-process run of an older version"):
        sat3d.train_sat3d(G, meas, checkpoint=ckpt, **kw)


def _tiny_clip_dir(folder):
    """The tiny CLIP (seeded random weights) as open_clip's local-dir layout, loadable by any process."""
    from helpers.clip import CLIP_CONFIG_DIR, TINY_CLIP
    from safetensors.torch import save_file

    folder.mkdir()
    cfg = json.loads((CLIP_CONFIG_DIR / f"{TINY_CLIP}.json").read_text())
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    save_file({k: v.contiguous() for k, v in tiny_clip().model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return f"local-dir:{folder}"


def _torchrun() -> list[str]:
    import shutil
    import sys
    from pathlib import Path

    beside = Path(sys.executable).with_name("torchrun")
    found = str(beside) if beside.is_file() else shutil.which("torchrun")
    return [found] if found else [sys.executable, "-m", "torch.distributed.run"]


def test_cli_under_torchrun_equals_one_process(tmp_path, capsys):
    import os
    import subprocess

    from targetclip_core.cli.main import main
    from targetclip_core.generators.load import save_generator

    gen = tmp_path / "g.safetensors"
    save_generator(tiny_generator(32), gen)
    clip = _tiny_clip_dir(tmp_path / "clip")
    common = ["sat3d-train", "-g", str(gen), "--clip", clip, "--pretrained", "none", "--steps", "4", "--n-codes", "8",
              "--batch-size", "2", "--out-resolution", "16", "--device", "cpu", "--lr", "0.1"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main([*common, "-o", str(tmp_path / "one.safetensors")]) == 0
    capsys.readouterr()
    repo = REPO_ROOT
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    env.pop("WORLD_SIZE", None)
    run = subprocess.run([*_torchrun(), "--standalone", "--nproc_per_node", "2", "-m", "targetclip_core", *common,
                          "-o", str(tmp_path / "two.safetensors"), "--checkpoint", str(tmp_path / "two.ckpt")],
                         cwd=repo, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("wrote ") == 1 and "2 processes" in run.stdout  # rank 0 alone writes and reports
    one, two = (sat3d.load_sat3d_matrix(tmp_path / f"{n}.safetensors") for n in ("one", "two"))
    _assert_close(two.logits, one.logits)
    assert not torch.equal(one.logits, sat3d.initial_logits(one.attributes, one.layout.n_channels))
    for k, v in one.losses.items():
        _assert_close(torch.tensor(two.losses[k]), torch.tensor(v))
    ckpt = torch.load(tmp_path / "two.ckpt", weights_only=True)
    assert ckpt["step"] == 4 and ckpt["processes"] == 2
