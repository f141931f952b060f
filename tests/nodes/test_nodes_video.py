"""The video nodes in the pack (inside inference mode, as ComfyUI runs them): Edit Clip keeps the frame count
and the frames without a face, Essence Strength Ramp and 3D Turntable give the engine's frames as an IMAGE batch."""

from __future__ import annotations

import numpy as np
import torch
from helpers.eg3d import tiny_eg3d
from helpers.encoders import official_checkpoint, tiny_encoder
from helpers.generators import random_rosinality_state
from helpers.paths import require_shared

from helpers.comfy import loaded_generator, node, pack_module  # skips the module without ComfyUI's API; before comfy.*

from targetclip_core.methods.targetclip.essence import Essence  # noqa: E402, I001
from targetclip_core.methods.video import essence_ramp, ramp, turntable  # noqa: E402


def _essence(G, scale=0.3):
    return Essence(vector=scale * torch.randn(1, G.n_latent, G.w_dim, generator=torch.Generator().manual_seed(1)),
                   generator=dict(G.identity), name="e")


def _comfy(images):
    return ((images.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1)


def test_essence_ramp_node(pack, G):
    (lat,) = node(pack, "TargetCLIP_SampleLatents").sample(G, seed=2, count=1, truncation=0.7)
    essence = _essence(G)
    with torch.inference_mode():
        (frames,) = node(pack, "TargetCLIP_EssenceRamp").animate(G, lat, essence, 1.0, 5, "cosine", "all")
    expected = _comfy(essence_ramp(G, lat.latents, essence, ramp(5, 1.0)))
    assert frames.shape == (5, G.resolution, G.resolution, 3) and torch.allclose(frames, expected, atol=1e-6)


def test_turntable_node(pack):
    G3 = loaded_generator(pack, tiny_eg3d(), "tiny-eg3d.safetensors", folder="eg3d")
    (lat,) = node(pack, "TargetCLIP_SampleLatents").sample(G3, seed=0, count=1, truncation=0.7)
    with torch.inference_mode():
        (frames,) = node(pack, "TargetCLIP_Turntable").animate(G3, lat, 3, 20.0, 5.0)
    expected = _comfy(turntable(G3, lat.latents, 3, yaw_range=20.0, pitch_range=5.0))
    assert frames.shape[0] == 3 and torch.allclose(frames, expected, atol=1e-6)


def test_edit_clip_node_keeps_frames_without_a_face(pack, tmp_path):
    from PIL import Image

    from targetclip_core.encoders.inversion import load_inverter

    path = tmp_path / "e4e_tiny.pt"
    official_checkpoint(path, tiny_encoder(n_styles=6, w_dim=32).state_dict(), torch.randn(6, 32),
                        decoder_state=random_rosinality_state(resolution=16))
    inverter = load_inverter(path, device="cpu")
    G = inverter.generator
    photo = Image.open(require_shared("data", "targetclip", "targets", "keanu.jpg")).convert("RGB")
    photo.thumbnail((150, 150))
    frames = []
    for k in range(4):
        canvas = Image.new("RGB", (160, 160), (30, 30, 30))
        if k != 2:
            canvas.paste(photo, (2 * k, 0))
        frames.append(np.asarray(canvas, dtype=np.float32) / 255)
    images = torch.from_numpy(np.stack(frames))
    with torch.inference_mode():
        edited, report = node(pack, "TargetCLIP_EditClip").edit(images, inverter, G, _essence(G, 1.0), 1.0, "all", 1.5, 1.0)
    assert edited.shape == images.shape
    assert torch.allclose(edited[2], images[2], atol=1e-6)  # no face: the frame passes through
    assert not torch.allclose(edited[0], images[0], atol=1e-3)
    assert "3 of 4 frames edited" in report
    assert pack_module("nodes.video").NODE_DISPLAY_NAME_MAPPINGS["TargetCLIP_EditClip"].startswith("Edit Clip")
