"""Nodes for what the CLI could do and ComfyUI could not (issue 18), and the node fixes a new user hit:
Load CLIP's preprocessing per node, ComfyUI's file numbering in the savers, every target's essence from
Optimize Essence, Instant SAT3D Transfer (and its comparison with a trained matrix), View Consistency.

Same harness as test_nodes.py (helpers.comfy): every node method runs under torch.inference_mode().
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
from helpers.clip import TINY_CLIP
from helpers.eg3d import tiny_eg3d

from helpers.comfy import loaded_generator, node  # skips the module without ComfyUI's API; must come before comfy.*

import comfy.model_management as mm  # noqa: E402, I001
import comfy.utils  # noqa: E402
import folder_paths  # noqa: E402

from targetclip_core.methods import sat3d as engine  # noqa: E402
from targetclip_core.methods.targetclip.essence import Essence, load_essence  # noqa: E402
from targetclip_core.methods.targetclip.optimize import optimize_essence  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def G3(pack):
    return loaded_generator(pack, tiny_eg3d(), "tiny_eg3d.safetensors", folder="eg3d")


def latents(pack, G, seed, count):
    (lat,) = node(pack, "TargetCLIP_SampleLatents").sample(G, seed=seed, count=count, truncation=0.7)
    return lat


class ProgressHook:
    """Collects ComfyUI progress updates; optionally asks for Cancel once `cancel_at` is reached."""

    def __init__(self, cancel_at=None):
        self.updates, self.cancel_at = [], cancel_at

    def __call__(self, value, total, preview, node_id=None):
        self.updates.append((value, total, preview))
        if self.cancel_at is not None and value >= self.cancel_at:
            mm.interrupt_current_processing(True)

    def __enter__(self):
        comfy.utils.set_progress_bar_global_hook(self)
        return self

    def __exit__(self, *exc):
        comfy.utils.set_progress_bar_global_hook(None)
        mm.interrupt_current_processing(False)


# --------------------------------------------------------------------------- 1. Load CLIP: preprocessing per node


def test_two_load_clip_nodes_keep_their_own_preprocessing_and_share_the_weights(pack, C):
    (default,) = node(pack, "TargetCLIP_LoadCLIP").load(TINY_CLIP, "none", "default")
    (paper,) = node(pack, "TargetCLIP_LoadCLIP").load(TINY_CLIP, "none", "paper")
    assert default.preprocess == "default" and paper.preprocess == "paper"  # loading the second changed nothing of the first
    assert paper.model is default.model  # one set of weights in memory
    assert all(a is b for a, b in zip(paper.model.parameters(), default.model.parameters()))
    image = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        codes_default, codes_paper = default.encode_image(image), paper.encode_image(image)
        # each node's output encodes as the engine does with that mode named explicitly
        assert torch.allclose(codes_default, default.encode_image(image, "default"), atol=1e-6)
        assert torch.allclose(codes_paper, default.encode_image(image, "paper"), atol=1e-6)
    assert (codes_default - codes_paper).abs().max() > 1e-3
    # a third node asking for "default" again gets the same codes as the first
    (again,) = node(pack, "TargetCLIP_LoadCLIP").load(TINY_CLIP, "none", "default")
    with torch.no_grad():
        assert torch.allclose(again.encode_image(image), codes_default, atol=1e-6)
    assert paper.preprocess == "paper"


# --------------------------------------------------------------------------- 2. savers number files as ComfyUI does


def test_save_essence_numbers_files_as_comfyui_with_subfolders_and_tokens(pack, G):
    essence = Essence(vector=torch.randn(1, G.n_latent, G.w_dim), generator=G.identity, name="")
    save = node(pack, "TargetCLIP_SaveEssence").save
    folder = Path(folder_paths.get_folder_paths("targetclip")[0])
    first, second = (save(essence, "joker")["ui"]["text"][0] for _ in range(2))
    assert (first, second) == ("joker_00001_.safetensors", "joker_00002_.safetensors")
    # the counter continues after the highest number of that prefix, as Save Image's does
    (folder / "joker_00041_.safetensors").write_bytes((folder / first).read_bytes())
    (folder / "joker2_00090_.safetensors").write_bytes(b"")  # another prefix: not counted
    assert save(essence, "joker")["ui"]["text"][0] == "joker_00042_.safetensors"
    # 'folder/name' saves into a subfolder of models/targetclip, which Load Essence lists
    sub = save(essence, "faces/joker")["ui"]["text"][0]
    assert sub == os.path.join("faces", "joker_00001_.safetensors") and (folder / "faces" / "joker_00001_.safetensors").is_file()
    assert sub in node(pack, "TargetCLIP_LoadEssence").INPUT_TYPES()["required"]["essence_name"][0]
    (loaded,) = node(pack, "TargetCLIP_LoadEssence").load(sub)
    assert torch.equal(loaded.vector, essence.vector) and loaded.name == "joker"
    # ComfyUI's date tokens
    dated = save(essence, "%year%/e")["ui"]["text"][0]
    assert dated == os.path.join(str(time.localtime().tm_year), "e_00001_.safetensors")
    # nothing escapes the folder; odd characters become '_'
    assert save(essence, "../../escape")["ui"]["text"][0] == "escape_00001_.safetensors"
    assert (folder / "escape_00001_.safetensors").is_file()
    assert save(essence, "a b*c")["ui"]["text"][0] == "a_b_c_00001_.safetensors"
    assert save(essence, "")["ui"]["text"][0] == "essence_00001_.safetensors"
    assert torch.equal(load_essence(folder / "joker_00042_.safetensors").vector, essence.vector)


@pytest.fixture(scope="module")
def instant_matrix(G, C):
    """A matrix from the engine's instant transfer (a few steps): a valid SAT3D matrix for G, quickly."""
    measure = engine.QMM(C, engine.load_descriptors("faces"))
    wp = G.to_wplus(G.mapping(torch.randn(2, G.z_dim, generator=torch.Generator().manual_seed(5))))
    return engine.instant_transfer(G, measure, wp[:1], wp[1:], ["Hairstyle"], steps=2)


def test_save_sat3d_matrix_numbers_files_as_comfyui_in_both_targets(pack, instant_matrix):
    save = node(pack, "TargetCLIP_SaveSAT3DMatrix").save
    models = Path(folder_paths.get_folder_paths("sat3d")[0])
    output = Path(folder_paths.get_output_directory()) / "sat3d"
    assert save(instant_matrix, "hair", "models/sat3d")["ui"]["text"][0] == "hair_00001_.safetensors"
    assert save(instant_matrix, "hair", "models/sat3d")["ui"]["text"][0] == "hair_00002_.safetensors"
    assert save(instant_matrix, "hair", "output/sat3d")["ui"]["text"][0] == "hair_00001_.safetensors"
    assert (models / "hair_00002_.safetensors").is_file() and (output / "hair_00001_.safetensors").is_file()
    sub = save(instant_matrix, "tiny/hair", "models/sat3d")["ui"]["text"][0]
    assert sub == os.path.join("tiny", "hair_00001_.safetensors")
    assert sub in node(pack, "TargetCLIP_LoadSAT3DMatrix").INPUT_TYPES()["required"]["matrix_name"][0]
    loaded, _ = node(pack, "TargetCLIP_LoadSAT3DMatrix").load(sub)
    assert torch.equal(loaded.logits, instant_matrix.logits)


# --------------------------------------------------------------------------- 3. Optimize Essence: every target's essence


OPT = {"steps": 4, "lr": 0.1, "n_sources": 2, "lambda_consistency": 0.5, "lambda_l2": 0.003, "seed": 3}


def test_optimize_essence_outputs_every_targets_essence_as_a_list(pack, G, C):
    cls = pack.NODE_CLASS_MAPPINGS["TargetCLIP_OptimizeEssence"]
    assert cls.RETURN_TYPES == ("ESSENCE", "IMAGE", "ESSENCE") and cls.OUTPUT_IS_LIST == (False, False, True)
    assert cls.RETURN_NAMES[:2] == ("essence", "preview")  # saved workflows' links keep their slots
    targets = torch.rand(3, 32, 32, 3, generator=torch.Generator().manual_seed(1))
    first, sheets, essences = node(pack, "TargetCLIP_OptimizeEssence").optimize(G, C, targets, preview_every=2, **OPT)
    assert isinstance(essences, list) and len(essences) == 3 and first is essences[0]
    assert sheets.shape[0] == 3  # one preview sheet per target
    # what the engine gives for the same batch of targets, essence by essence
    expected = optimize_essence(G, C, targets.permute(0, 3, 1, 2) * 2 - 1, init="random", name="essence", **OPT)
    for got, want in zip(essences, expected):
        assert torch.allclose(got.vector, want.vector, atol=1e-6) and got.name == want.name
    assert not torch.allclose(essences[0].vector, essences[1].vector)
    # ComfyUI maps a list output over the next node: Apply Essence runs once per essence
    lat = latents(pack, G, 0, 2)
    edited = [node(pack, "TargetCLIP_ApplyEssence").apply(G, lat, e, 1.0, "all")[1].latents for e in essences]
    for e, wp in zip(essences, edited):
        assert torch.allclose(wp - lat.latents, e.vector.expand(2, -1, -1), atol=1e-6)


def test_optimize_essence_with_one_target_keeps_its_outputs(pack, G, C):
    first, sheet, essences = node(pack, "TargetCLIP_OptimizeEssence").optimize(G, C, torch.rand(1, 32, 32, 3), preview_every=2, **OPT)
    assert essences == [first] and sheet.shape == (1, 2 * G.resolution, 3 * G.resolution, 3)


# --------------------------------------------------------------------------- 4. Instant SAT3D Transfer


INSTANT = {"attribute": "Hairstyle", "delta": 1.0, "steps": 3, "lr": 0.01, "descriptors": "faces", "pairing": "first reference",
           "preview_every": 2}


def test_instant_transfer_node_is_registered_with_tooltips(pack):
    cls = pack.NODE_CLASS_MAPPINGS["TargetCLIP_SAT3DInstantTransfer"]
    assert pack.NODE_DISPLAY_NAME_MAPPINGS["TargetCLIP_SAT3DInstantTransfer"] == "Instant SAT3D Transfer (TargetCLIP)"
    assert cls.RETURN_TYPES == ("IMAGE", "STYLESPACE", "STRING") and cls.CATEGORY == "TargetCLIP/sat3d" and cls.DESCRIPTION
    spec = cls.INPUT_TYPES()
    assert {"generator", "clip", "source", "reference", "attribute", "delta", "steps"} <= set(spec["required"])
    assert {"init", "compare_with", "face_parser", "attributes"} <= set(spec["optional"])
    for section in spec.values():
        for name, decl in section.items():
            assert decl[1].get("tooltip"), name


def test_instant_transfer_matches_the_engine_per_pair_with_preview(pack, G, C):
    src, ref = latents(pack, G, 10, 2), latents(pack, G, 20, 1)
    with ProgressHook() as hook:
        images, styles, report = node(pack, "TargetCLIP_SAT3DInstantTransfer").transfer(G, C, src, ref, **INSTANT)
    assert images.shape == (2, G.resolution, G.resolution, 3) and len(styles) == 2
    steps = [u for u in hook.updates if u[1] == 2 * INSTANT["steps"]]
    assert steps[-1][0] == 2 * INSTANT["steps"] and any(u[2] is not None for u in steps)  # both pairs' steps, with previews
    # the engine, pair by pair, as `targetclip sat3d-transfer --instant` runs it
    measure = engine.QMM(C, engine.load_descriptors("faces"))
    lambdas = {"attr": 3.5, "prob": 0.1, "bg": 0.0}
    for i in range(2):
        m = engine.instant_transfer(G, measure, src.latents[i : i + 1], ref.latents, ["Hairstyle"], steps=3, lr=0.01, lambdas=lambdas)
        with torch.no_grad():
            want = engine.transfer_styles(G, src.latents[i : i + 1], ref.latents, m, ["Hairstyle"], 1.0, combine=True)
            image = G.synthesis_from_styles(want)
        for k in want:
            assert torch.allclose(styles.styles[k][i : i + 1], want[k], atol=1e-5), k
        assert torch.allclose(images[i], ((image[0].clamp(-1, 1) + 1) / 2).permute(1, 2, 0), atol=1e-4)
        best = min(range(3), key=m.losses["total"].__getitem__)
        assert f"pair {i}: total {m.losses['total'][best]:.6g}" in report
    # the styles chain into SAT3D Transfer's source_styles and Render Views' styles (STYLESPACE, this generator)
    assert styles.check_for(G).keys() == G.styles(src.latents[:1]).keys()


def test_instant_transfer_compares_with_a_trained_matrix_as_the_cli(pack, G, C, instant_matrix):
    src, ref = latents(pack, G, 30, 2), latents(pack, G, 40, 2)
    images, styles, report = node(pack, "TargetCLIP_SAT3DInstantTransfer").transfer(
        G, C, src, ref, **{**INSTANT, "pairing": "pairwise"}, compare_with=instant_matrix)
    measure = engine.QMM(C, engine.load_descriptors("faces"))
    result = engine.compare_instant_with_trained(G, measure, instant_matrix, src.latents, ref.latents, ["Hairstyle"], steps=3,
                                                 lr=0.01, lambdas={"attr": 3.5, "prob": 0.1, "bg": 0.0})
    s = result.summary
    for k in ("total", "ref", "src", "bg", "prob"):
        assert f"| {k} | {s['trained'][k]:.6g} | {s['instant'][k]:.6g} |" in report
    assert f"instant on {s['instant_wins']} pair(s), trained on {s['trained_wins']}" in report
    for i, p in enumerate(result.pairs):
        for k, v in p["styles_instant"].items():
            assert torch.allclose(styles.styles[k][i : i + 1], v, atol=1e-5)
    assert images.shape[0] == 2
    # started from the compared matrix, the instant masks are never worse than it on their pair
    _, _, report_init = node(pack, "TargetCLIP_SAT3DInstantTransfer").transfer(
        G, C, src, ref, **{**INSTANT, "pairing": "pairwise"}, compare_with=instant_matrix, init=instant_matrix)
    assert "from the trained matrix" in report_init and "trained on 0, ties" in report_init


def test_instant_transfer_refuses_mismatches_and_stops_on_cancel(pack, G, C, instant_matrix):
    src, ref = latents(pack, G, 50, 1), latents(pack, G, 60, 1)
    run = node(pack, "TargetCLIP_SAT3DInstantTransfer").transfer
    other = engine.SAT3DMatrix(**{**instant_matrix.__dict__, "logits": instant_matrix.logits.clone()})
    with pytest.raises(ValueError, match="different matrices"):
        run(G, C, src, ref, **INSTANT, init=other, compare_with=instant_matrix)
    with pytest.raises(ValueError, match="descriptor set"):
        run(G, C, src, ref, **{**INSTANT, "descriptors": "cats", "attribute": "Fur color"}, init=instant_matrix)
    with pytest.raises(Exception, match="no attribute"):
        run(G, C, src, ref, **{**INSTANT, "attribute": "Hairstyle"}, attributes="Nonsense")
    with ProgressHook(cancel_at=2) as hook, pytest.raises(mm.InterruptProcessingException):
        run(G, C, src, ref, **{**INSTANT, "steps": 50})
    assert max(u[0] for u in hook.updates) <= 3


# --------------------------------------------------------------------------- 5. View Consistency


def test_view_consistency_node_by_hand(pack, G3, C):
    b = torch.randn(1, G3.n_latent, G3.w_dim, generator=torch.Generator().manual_seed(3)) * 0.5
    essence = Essence(vector=b, generator=G3.identity)
    lat = latents(pack, G3, 4, 2)
    with ProgressHook() as hook:
        score, report = node(pack, "TargetCLIP_ViewConsistency").measure(G3, C, essence, lat, "-20:0,0:0,20:5", 30.0, 10.0, 0.8, 16)
    assert hook.updates[-1][:2] == (2, 2)
    views = [(-20.0, 0.0), (0.0, 0.0), (20.0, 5.0)]
    per_source = []
    with torch.no_grad():  # by hand: CLIP deltas per view, mean cosine over the 6 ordered pairs of views, per source
        for i in range(2):
            w = lat.latents[i : i + 1]
            deltas = []
            for yaw, pitch in views:
                cam = G3.camera(yaw, pitch)
                before = C.encode_image(G3.render(w, cam)["image"], "default")
                after = C.encode_image(G3.render(w + 0.8 * b, cam)["image"], "default")
                deltas.append((after - before)[0])
            cos = [float(torch.nn.functional.cosine_similarity(deltas[p], deltas[q], dim=0)) for p in range(3) for q in range(3) if p != q]
            per_source.append(sum(cos) / 6)
    assert isinstance(score, float) and abs(score - sum(per_source) / 2) < 1e-4
    for i, v in enumerate(per_source):
        assert f"source {i}: {v:.4f}" in report
    assert "3 views" in report and "20:5" in report
    # an essence applied at strength 0 changes nothing: every (zero) delta agrees with every other
    zero, _ = node(pack, "TargetCLIP_ViewConsistency").measure(G3, C, essence, lat, "3", 30.0, 10.0, 0.0, 16)
    assert zero == pytest.approx(1.0)


def test_view_consistency_refuses_a_2d_generator_and_one_view(pack, G, G3, C):
    run = node(pack, "TargetCLIP_ViewConsistency").measure
    flat = Essence(vector=torch.zeros(1, G.n_latent, G.w_dim), generator=G.identity)
    with pytest.raises(ValueError, match="3D-aware"):
        run(G, C, flat, latents(pack, G, 0, 1), "3", 30.0, 10.0, 1.0, 16)
    e3 = Essence(vector=torch.zeros(1, G3.n_latent, G3.w_dim), generator=G3.identity)
    with pytest.raises(Exception, match="at least two views"):
        run(G3, C, e3, latents(pack, G3, 0, 1), "0", 30.0, 10.0, 1.0, 16)
    with ProgressHook(cancel_at=1), pytest.raises(mm.InterruptProcessingException):
        run(G3, C, e3, latents(pack, G3, 0, 3), "3", 30.0, 10.0, 1.0, 16)
