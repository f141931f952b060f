"""Load EG3D and Render Views, loaded as ComfyUI loads the pack (harness of test_nodes.py), on a tiny EG3D."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.eg3d import tiny_eg3d
from helpers.generators import tiny_generator

from helpers.comfy import node, pack_module  # skips the module without ComfyUI's API; must come before comfy.*

import comfy.model_management as mm  # noqa: E402, I001  (available once the harness is imported)
import comfy.utils  # noqa: E402
import folder_paths  # noqa: E402


@pytest.fixture(scope="module")
def eg3d_file(models_dir, pack):
    from targetclip_core.generators.load import save_generator

    folder = Path(folder_paths.get_folder_paths("eg3d")[0])
    folder.mkdir(parents=True, exist_ok=True)
    save_generator(tiny_eg3d(), folder / "tiny_eg3d.safetensors")
    save_generator(tiny_generator(), folder / "flat.safetensors")
    return "tiny_eg3d.safetensors"


def test_eg3d_folder_is_registered(pack):
    paths, exts = folder_paths.folder_names_and_paths["eg3d"]
    assert {".pkl", ".safetensors"} <= exts


def test_load_eg3d_and_the_2d_nodes_use_it(pack, eg3d_file):
    (G,) = node(pack, "TargetCLIP_LoadEG3D").load(eg3d_file)
    assert G.is_3d and node(pack, "TargetCLIP_LoadEG3D").load(eg3d_file)[0] is G
    (lat,) = node(pack, "TargetCLIP_SampleLatents").sample(G, seed=1, count=2, truncation=0.7)
    assert lat.latents.shape == (2, G.n_latent, G.w_dim)
    (images,) = node(pack, "TargetCLIP_RenderLatents").render(G, lat, "const", 2)
    with torch.no_grad():
        ref = ((G.synthesis(lat.latents).clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1)
    assert torch.allclose(images, ref, atol=1e-6)  # the frontal view


def test_load_eg3d_refuses_a_2d_generator(pack, eg3d_file):
    with pytest.raises(ValueError, match="not EG3D"):
        node(pack, "TargetCLIP_LoadEG3D").load("flat.safetensors")


def test_render_views_orbit_is_latent_major_and_matches_the_engine(pack, eg3d_file):
    (G,) = node(pack, "TargetCLIP_LoadEG3D").load(eg3d_file)
    (lat,) = node(pack, "TargetCLIP_SampleLatents").sample(G, seed=2, count=2, truncation=0.7)
    updates = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: updates.append((value, total)))
    try:
        images, depth, depth_image = node(pack, "TargetCLIP_RenderViews").render(
            G, "3", 30.0, 10.0, 18.837, 0, 1.0, True, latents=lat)
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    assert images.shape == (6, 128, 128, 3) and depth.shape == (6, 128, 128) and depth_image.shape == (6, 128, 128, 3)
    assert updates[-1] == (6, 6)
    assert float(depth.min()) >= 0 and float(depth.max()) <= 1
    from targetclip_core.generators.cameras import orbit

    yaws, pitches = orbit(3, 30.0, 10.0)
    with torch.no_grad():
        for b in range(2):
            for k in range(3):
                ref = G.render(lat.latents[b : b + 1], G.camera(yaws[k], pitches[k]))["image"]
                ref = ((ref.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1)[0]
                assert torch.allclose(images[b * 3 + k], ref, atol=1e-5), (b, k)


def test_render_views_of_style_codes_and_a_yaw_list(pack, eg3d_file):
    """STYLESPACE codes (what SAT3D Transfer outputs) render exactly as the latents they came from."""
    StyleCodes = pack_module("nodes.common").StyleCodes
    (G,) = node(pack, "TargetCLIP_LoadEG3D").load(eg3d_file)
    (lat,) = node(pack, "TargetCLIP_SampleLatents").sample(G, seed=5, count=1, truncation=0.7)
    with torch.no_grad():
        codes = StyleCodes(G.styles(lat.latents), G.identity)
    render = node(pack, "TargetCLIP_RenderViews").render
    from_codes, _, _ = render(G, "-20:5, 20", 30.0, 10.0, 18.837, 0, 1.0, True, styles=codes)
    from_latents, _, _ = render(G, "-20:5, 20", 30.0, 10.0, 18.837, 0, 1.0, True, latents=lat)
    assert from_codes.shape[0] == 2 and torch.equal(from_codes, from_latents)


def test_render_views_refuses_bad_inputs(pack, eg3d_file):
    (G,) = node(pack, "TargetCLIP_LoadEG3D").load(eg3d_file)
    (lat,) = node(pack, "TargetCLIP_SampleLatents").sample(G, seed=0, count=1, truncation=1.0)
    render = node(pack, "TargetCLIP_RenderViews").render
    with pytest.raises(ValueError, match="exactly one"):
        render(G, "2", 30.0, 10.0, 18.837, 0, 1.0, True)
    with pytest.raises(ValueError, match="cannot read views"):
        render(G, "left, right", 30.0, 10.0, 18.837, 0, 1.0, True, latents=lat)
    flat = tiny_generator()
    with pytest.raises(ValueError, match="3D-aware"):
        render(flat, "2", 30.0, 10.0, 18.837, 0, 1.0, True, latents=lat)


def test_render_views_sampling_multiplier_is_temporary_and_cancel_stops(pack, eg3d_file):
    (G,) = node(pack, "TargetCLIP_LoadEG3D").load(eg3d_file)
    (lat,) = node(pack, "TargetCLIP_SampleLatents").sample(G, seed=0, count=1, truncation=1.0)
    before = dict(G.rendering)
    sharp, _, _ = node(pack, "TargetCLIP_RenderViews").render(G, "0", 30.0, 10.0, 18.837, 0, 2.0, True, latents=lat)
    plain, _, _ = node(pack, "TargetCLIP_RenderViews").render(G, "0", 30.0, 10.0, 18.837, 0, 1.0, True, latents=lat)
    assert G.rendering == before and not torch.equal(sharp, plain)
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            node(pack, "TargetCLIP_RenderViews").render(G, "4", 30.0, 10.0, 18.837, 0, 1.0, True, latents=lat)
    finally:
        mm.interrupt_current_processing(False)
