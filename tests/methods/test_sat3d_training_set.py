"""The SAT3D training set filtered as the paper (Sec. 4): CLIP zero-shot rules from the descriptor set
(faces: no hats, >= 40% with glasses), the filtered bank with planted zero-shot scores, its report in the
matrix and the checkpoint, the rules' parsing, and one run on the tiny models with the faces rules."""

from __future__ import annotations

import json
import math
import warnings
from collections import OrderedDict

import pytest
import torch
from helpers.clip import tiny_clip
from helpers.generators import tiny_generator
from torch import nn

from targetclip_core.errors import TargetCLIPError
from targetclip_core.methods import sat3d
from targetclip_core.methods.sat3d.training_set import class_probabilities

torch.set_num_threads(1)  # tiny tensors: threads only add contention


# --------------------------------------------------------------------------- a generator whose image is its z
# Identity mapping and affines: the first 8 pixels of the "image" are the candidate's z, so a planted
# zero-shot scorer that reads them decides, per latent, what CLIP would have said.


class PixelGenerator(nn.Module):
    LAYERS = ("b4.conv1", "b4.torgb", "b8.conv0")

    def __init__(self):
        super().__init__()
        self.w_dim = self.z_dim = 8
        self.n_latent = len(self.LAYERS)
        self.scale = nn.Parameter(torch.ones(()), requires_grad=False)  # a weight, for the fingerprint
        self.identity = {"arch": "pixels", "resolution": 4, "n_latent": self.n_latent, "w_dim": 8}

    @property
    def device(self):
        return self.scale.device

    def mapping(self, z, truncation=1.0):
        return z * self.scale * truncation

    def to_wplus(self, w):
        return w if w.dim() == 3 else w[:, None].expand(-1, self.n_latent, -1)

    def styles(self, wp):
        return OrderedDict((name, wp[:, i]) for i, name in enumerate(self.LAYERS))

    def synthesis_from_styles(self, styles, out_resolution=None, noise_mode="const"):
        flat = torch.cat(list(styles.values()), dim=1)  # 24 values
        return torch.cat([flat, flat.new_zeros(flat.shape[0], 24)], dim=1).view(-1, 3, 4, 4)


HAT, GLASSES = 1.5, 1.0  # a latent wears a hat when z[0] > HAT (7% of them), glasses when z[1] > GLASSES (16%)


class PlantedScorer:
    """Zero-shot probabilities over ("hat", "no hat") and ("glasses", "no glasses") read off z[0] and z[1]."""

    input_size = 4

    def __init__(self, fail: bool = False):
        self.scored, self.fail = 0, fail

    def __call__(self, images):
        if self.fail:
            raise AssertionError("the training set was filtered")
        self.scored += len(images)
        z = images.flatten(1)[:, :8]
        hat, glasses = torch.sigmoid(8 * (z[:, 0] - HAT)), torch.sigmoid(8 * (z[:, 1] - GLASSES))
        return {"hat": torch.stack([hat, 1 - hat], -1), "glasses": [torch.stack([glasses, 1 - glasses], -1)]}


def wears_hat(w):
    return w[:, 0] > HAT


def has_glasses(w):
    return w[:, 1] > GLASSES


RULES_JSON = {"exclude": [{"name": "hat", "phrases": ["a hat", "no hat"]}],
              "min_share": [{"name": "glasses", "phrases": ["glasses", "no glasses"], "share": 0.4}]}


def planted_descriptors(training_set=RULES_JSON):
    return sat3d.descriptors_from_dict({"template": "{}", "attributes": {"A": [["x", "y"]], "B": [["u", "v"]]},
                                        "training_set": training_set}, source="planted.json")


RULES = planted_descriptors().training_set


def candidate_stream(n, seed, count):
    """The first `count` candidates of the seeded stream: rounds of n z's, as sample_latent_bank draws them."""
    gen, rounds = torch.Generator().manual_seed(seed), []
    while sum(len(r) for r in rounds) < count:
        rounds.append(torch.randn(n, 8, generator=gen))
    return torch.cat(rounds)[:count]


# --------------------------------------------------------------------------- the filtered bank


def test_no_excluded_latent_enters_and_the_glasses_share_is_reached():
    G, scorer, n = PixelGenerator(), PlantedScorer(), 50
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the share is reached: no warning
        bank, report = sat3d.filtered_latent_bank(G, scorer, RULES, n, seed=3, max_candidates=2000)
    assert bank.shape == (n, 8)
    assert not wears_hat(bank).any()
    assert int(has_glasses(bank).sum()) >= math.ceil(0.4 * n)  # 40% of the bank, where 16% of the candidates have them
    assert report["complete"] and report["size"] == n and report["mode"] == "filtered"
    assert report["shares"]["glasses"] == {"target": 0.4, "count": int(has_glasses(bank).sum()),
                                           "achieved": int(has_glasses(bank).sum()) / n}
    stream = candidate_stream(n, 3, report["candidates"])
    assert scorer.scored == report["scored"] >= report["candidates"] and report["candidates"] < 2000
    assert report["excluded"] == {"hat": int(wears_hat(stream).sum())}
    rows = [int((stream == w).all(1).nonzero()[0]) for w in bank]  # every latent is a candidate, in stream order
    assert rows == sorted(rows)
    assert report["rules"] == RULES.to_json() and report["max_candidates"] == 2000
    assert "excluded hat" in report["summary"] and "glasses 4" in report["summary"]


def test_the_cap_stops_the_search_and_the_report_gives_the_achieved_share():
    G, n = PixelGenerator(), 50
    with pytest.warns(UserWarning, match="candidate cap 60 reached"):
        bank, report = sat3d.filtered_latent_bank(G, PlantedScorer(), RULES, n, seed=3, max_candidates=60)
    assert not wears_hat(bank).any() and len(bank) == n  # 60 candidates hold 50 without a hat
    count = int(has_glasses(bank).sum())
    assert count < math.ceil(0.4 * n)
    assert not report["complete"] and report["candidates"] == 60
    assert report["shares"]["glasses"]["count"] == count and report["shares"]["glasses"]["achieved"] == count / n
    assert f"glasses {count / n:.1%}" in report["summary"]
    assert sat3d.CANDIDATE_FACTOR == 4  # the default cap: 4 x n
    _, default = sat3d.filtered_latent_bank(G, PlantedScorer(), RULES, 10, seed=3)
    assert default["max_candidates"] == 40


def test_the_same_seed_gives_the_same_bank_and_rules_that_never_bite_give_the_plain_bank():
    G = PixelGenerator()
    first, report = sat3d.filtered_latent_bank(G, PlantedScorer(), RULES, 20, seed=5, max_candidates=400, batch_size=7)
    again, same = sat3d.filtered_latent_bank(G, PlantedScorer(), RULES, 20, seed=5, max_candidates=400, batch_size=16)
    other, _ = sat3d.filtered_latent_bank(G, PlantedScorer(), RULES, 20, seed=6, max_candidates=400)
    assert torch.equal(first, again)  # the render batch changes neither the stream nor the report, but the work
    assert {k: v for k, v in report.items() if k != "scored"} == {k: v for k, v in same.items() if k != "scored"}
    assert not torch.equal(first, other)
    never = planted_descriptors({"exclude": [{"name": "hat", "phrases": ["a hat", "no hat"], "threshold": 0.999}]})
    plain, report = sat3d.filtered_latent_bank(G, lambda img: {"hat": torch.full((len(img), 2), 0.5)},
                                               never.training_set, 20, seed=5)
    assert torch.equal(plain, sat3d.sample_latent_bank(G, 20, seed=5))  # the first round is sample_latent_bank's
    assert report["candidates"] == 20 and report["excluded"] == {"hat": 0}


def test_progress_is_reported_per_batch_and_a_raise_cancels():
    G, calls = PixelGenerator(), []
    sat3d.filtered_latent_bank(G, PlantedScorer(), RULES, 20, seed=0, max_candidates=400, batch_size=8,
                               on_batch=lambda done, total: calls.append((done, total)))
    assert calls and all(t == 400 for _, t in calls) and [d for d, _ in calls] == sorted({d for d, _ in calls})

    def cancel(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sat3d.filtered_latent_bank(G, PlantedScorer(), RULES, 20, seed=0, on_batch=cancel)


def test_everything_excluded_is_refused():
    everything = planted_descriptors({"exclude": [{"name": "hat", "phrases": ["a hat", "no hat"], "threshold": 0.1}]})
    with pytest.raises(TargetCLIPError, match="every one of the 8 candidates was excluded"):
        sat3d.filtered_latent_bank(PixelGenerator(), lambda img: {"hat": torch.tensor([[0.9, 0.1]]).expand(len(img), 2)},
                                   everything.training_set, 4, max_candidates=8)


# --------------------------------------------------------------------------- in training


class PixelMeasure:
    """A reads pixel 17, B pixel 20 (b8.conv0 channels 1 and 4)."""

    attributes = ["A", "B"]
    input_size = 4

    def __call__(self, img):
        x, y = img.flatten(1)[:, 17], img.flatten(1)[:, 20]
        return {"A": [torch.stack([x, -x], -1).softmax(-1)], "B": [torch.stack([y, -y], -1).softmax(-1)]}


def _train(**kw):
    args = {"steps": 6, "batch_size": 2, "n_codes": 30, "lr": 0.05, "lambdas": {"bg": 0.0}, "descriptors": planted_descriptors(),
            "training_set_kwargs": {"scorer": PlantedScorer(), "max_candidates": 600}, **kw}
    return sat3d.train_sat3d(PixelGenerator(), PixelMeasure(), **args)


def test_the_report_lands_in_the_matrix_and_survives_its_file(tmp_path):
    m = _train()
    bank, report = sat3d.filtered_latent_bank(PixelGenerator(), PlantedScorer(), RULES, 30, max_candidates=600)
    assert m.training_set == report and report["complete"]
    path = sat3d.save_sat3d_matrix(tmp_path / "m.safetensors", m)
    loaded = sat3d.load_sat3d_matrix(path)
    assert loaded.training_set == m.training_set
    assert report["summary"] in sat3d.describe_matrix(loaded)


def test_a_given_bank_and_filtering_off_are_not_filtered():
    bank = sat3d.sample_latent_bank(PixelGenerator(), 12, seed=9)
    given = _train(latent_bank=bank, training_set_kwargs={"scorer": PlantedScorer(fail=True)})
    assert given.training_set["mode"] == "given" and given.training_set["size"] == 12
    assert "used as is" in given.training_set["summary"]
    off = _train(filter_training_set=False, training_set_kwargs={"scorer": PlantedScorer(fail=True)})
    assert off.training_set["mode"] == "unfiltered" and "filtering switched off" in off.training_set["summary"]
    plain = sat3d.train_sat3d(PixelGenerator(), PixelMeasure(), steps=2, batch_size=2, n_codes=8, lambdas={"bg": 0.0},
                              descriptors=planted_descriptors({}))
    assert plain.training_set["mode"] == "unfiltered" and "no rules" in plain.training_set["summary"]


def test_a_resumed_run_keeps_its_bank_without_filtering_again(tmp_path):
    full = _train()
    ckpt = tmp_path / "run.ckpt"
    _train(checkpoint=ckpt, checkpoint_every=2, callback=lambda s: s.step == 3)
    stored = torch.load(ckpt, weights_only=True)["training_set"]
    assert stored["report"] == full.training_set and stored["bank"].shape == (30, 8)
    resumed = _train(checkpoint=ckpt, training_set_kwargs={"scorer": PlantedScorer(fail=True), "max_candidates": 600})
    assert torch.equal(resumed.logits, full.logits) and resumed.training_set == full.training_set
    with pytest.raises(TargetCLIPError, match="its training set was drawn with"):
        _train(checkpoint=ckpt, filter_training_set=False)
    with pytest.raises(TargetCLIPError, match="resume with the same settings"):
        _train(checkpoint=ckpt, seed=1)
    state = torch.load(ckpt, weights_only=True)  # an older version's checkpoint: no training set, drawn unfiltered
    torch.save({k: v for k, v in state.items() if k != "training_set"}, ckpt)
    older = _train(checkpoint=ckpt, training_set_kwargs={"scorer": PlantedScorer(fail=True)})
    assert older.training_set["mode"] == "unfiltered" and "before training-set filtering" in older.training_set["summary"]


# --------------------------------------------------------------------------- the rules in the descriptor files


def test_shipped_rules_faces_filter_cats_and_cars_do_not():
    faces = sat3d.load_descriptors("faces").training_set
    assert [r.name for r in faces.exclude] == ["hat"] and [r.name for r in faces.min_share] == ["glasses"]
    assert faces.min_share[0].share == 0.4 and faces.exclude[0].threshold == 0.5
    assert set(faces.min_share[0].match) < set(faces.min_share[0].phrases)
    assert sat3d.load_descriptors("cats").training_set is None and sat3d.load_descriptors("cars").training_set is None


def test_an_extending_file_inherits_the_rules_unless_it_has_its_own(tmp_path):
    inherit, none, own = tmp_path / "inherit.json", tmp_path / "none.json", tmp_path / "own.json"
    inherit.write_text(json.dumps({"extends": "faces", "attributes": {"Freckles": [["freckles", "no freckles"]]}}))
    none.write_text(json.dumps({"extends": "faces", "attributes": {}, "training_set": {}}))
    own.write_text(json.dumps({"extends": "faces", "attributes": {}, "training_set": {"exclude": RULES_JSON["exclude"]}}))
    assert sat3d.load_descriptors(inherit).training_set == sat3d.load_descriptors("faces").training_set
    assert sat3d.load_descriptors(none).training_set is None
    assert sat3d.load_descriptors(own).training_set == sat3d.TrainingSetRules(RULES.exclude, ())


@pytest.mark.parametrize("training_set, message", [
    ([], "'training_set' must be an object"),
    ({"include": []}, "unknown key\\(s\\) 'include' in 'training_set'"),
    ({"exclude": {"name": "hat"}}, "training_set.exclude must be a list"),
    ({"exclude": [{"phrases": ["a", "b"]}]}, "training_set.exclude\\[0\\] must be an object with a 'name'"),
    ({"exclude": [{"name": "hat", "phrases": ["a hat"]}]}, "needs 'phrases', at least two"),
    ({"exclude": [{"name": "hat", "phrases": ["a", "a"]}]}, "repeats a phrase"),
    ({"exclude": [{"name": "hat", "phrases": ["a", "b"], "match": ["c"]}]}, "'match' must list some, not all"),
    ({"exclude": [{"name": "hat", "phrases": ["a", "b"], "match": ["a", "b"]}]}, "'match' must list some, not all"),
    ({"exclude": [{"name": "hat", "phrases": ["a", "b"], "threshold": 1.5}]}, "threshold must be in \\(0, 1\\)"),
    ({"exclude": [{"name": "hat", "phrases": ["a", "b"], "threshold": "high"}]}, "threshold must be a number"),
    ({"exclude": [{"name": "hat", "phrases": ["a", "b"], "share": 0.4}]}, "unknown key\\(s\\) 'share'"),
    ({"min_share": [{"name": "glasses", "phrases": ["a", "b"]}]}, "needs a 'share'"),
    ({"min_share": [{"name": "glasses", "phrases": ["a", "b"], "share": 0}]}, "share must be in \\(0, 1\\]"),
    ({"min_share": [{"name": "g", "phrases": ["a", "b"], "share": 0.6}, {"name": "h", "phrases": ["c", "d"], "share": 0.6}]},
     "add up to 1.2"),
    ({"exclude": [{"name": "hat", "phrases": ["a", "b"]}], "min_share": [{"name": "hat", "phrases": ["c", "d"], "share": 0.5}]},
     "'hat' used more than once"),
])
def test_rule_errors_name_the_file(tmp_path, training_set, message):
    path = tmp_path / "bad_rules.json"
    path.write_text(json.dumps({"attributes": {"A": [["x", "y"]]}, "training_set": training_set}))
    with pytest.raises(TargetCLIPError, match=message) as err:
        sat3d.load_descriptors(path)
    assert str(err.value).startswith(f"{path}: ")


# --------------------------------------------------------------------------- the tiny models, faces rules


def test_train_on_tiny_models_with_the_faces_rules(tmp_path):
    G, q = tiny_generator(32), sat3d.QMM(tiny_clip(), sat3d.load_descriptors("faces"))
    calls = []
    kw = {"steps": 4, "batch_size": 1, "n_codes": 4, "lr": 0.1, "out_resolution": 16,
          "training_set_kwargs": {"on_batch": lambda done, total: calls.append((done, total))}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # L_bg off without a parser
        m = sat3d.train_sat3d(G, q, checkpoint=tmp_path / "run.ckpt", callback=lambda s: s.step == 2, **kw)
        report = m.training_set
        assert report["mode"] == "filtered" and report["size"] == 4 and calls and calls[-1] == (report["scored"], 16)
        assert set(report["excluded"]) == {"hat"} and set(report["shares"]) == {"glasses"}
        bank, _ = sat3d.filtered_latent_bank(G, sat3d.zero_shot_scorer(q.clip, q.descriptors.training_set),
                                             q.descriptors.training_set, 4, out_resolution=16)
        images = G.synthesis_from_styles(G.styles(G.to_wplus(bank)), out_resolution=16)
        probs = class_probabilities(sat3d.zero_shot_scorer(q.clip, q.descriptors.training_set), q.descriptors.training_set,
                                    images)
        assert (probs["hat"] <= 0.5).all()  # CLIP's zero-shot check lets no hat in
        calls.clear()
        resumed = sat3d.train_sat3d(G, q, checkpoint=tmp_path / "run.ckpt", **kw)
        assert not calls  # the checkpoint's bank: no filtering again
        full = sat3d.train_sat3d(G, q, **kw)
    assert resumed.training_set == full.training_set == report
    assert torch.equal(resumed.logits, full.logits) and resumed.steps == 4


# --------------------------------------------------------------------------- command line and node


def test_cli_filters_by_default_and_takes_the_cap_or_switches_it_off(tmp_path, capsys):
    from helpers.clip import TINY_CLIP, register_tiny_clip

    from targetclip_core.cli.sat3d import main
    from targetclip_core.generators.load import save_generator

    register_tiny_clip()
    gen = tmp_path / "g.safetensors"
    save_generator(tiny_generator(32), gen)
    base = ["sat3d-train", "-g", str(gen), "--clip", TINY_CLIP, "--pretrained", "none", "--steps", "1", "--n-codes", "4",
            "--batch-size", "1", "--out-resolution", "16", "--device", "cpu"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(1)  # the random CLIP's weights
        assert main([*base, "-o", str(tmp_path / "f.safetensors"), "--filter-candidates", "12"]) == 0
        assert main([*base, "-o", str(tmp_path / "u.safetensors"), "--no-filter-training-set"]) == 0
    out = capsys.readouterr().out
    filtered, unfiltered = (sat3d.load_sat3d_matrix(tmp_path / f"{n}.safetensors").training_set for n in "fu")
    assert filtered["mode"] == "filtered" and filtered["max_candidates"] == 12
    assert unfiltered["mode"] == "unfiltered" and "filtering switched off" in unfiltered["summary"]
    assert f"training set: {filtered['summary']}" in out and f"training set: {unfiltered['summary']}" in out
