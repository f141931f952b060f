"""Video (methods.video): clips from latents (ramps, interpolation, turntables) against the per-frame renders they
must equal, and a face edited through a synthetic clip (real photo, moved across frames, blank frames between):
frame count and size kept, the pixels outside the face mask the clip's own, frames without a face untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.eg3d import tiny_eg3d
from helpers.encoders import official_checkpoint, tiny_encoder
from helpers.generators import random_rosinality_state, random_wplus, tiny_generator
from helpers.paths import require_shared

from targetclip_core.errors import TargetCLIPError
from targetclip_core.methods.targetclip.essence import Essence
from targetclip_core.methods.video import (
    edit_clip,
    essence_edit,
    essence_interpolation,
    essence_ramp,
    ramp,
    turntable,
)
from targetclip_core.faces.tracking import smooth_series


def _essence(G, seed, scale=0.3):
    return Essence(vector=scale * torch.randn(1, G.n_latent, G.w_dim, generator=torch.Generator().manual_seed(seed)),
                   generator=dict(G.identity), name=f"e{seed}")


def test_ramp_goes_up_and_back_and_loops():
    r = ramp(9, 1.5)
    assert r[0] == 0 and abs(r[-1]) < 1e-12 and r[4] == pytest.approx(1.5) and r == sorted(r[:5]) + r[5:]
    assert ramp(5, 2.0, "linear") == pytest.approx([0, 1, 2, 1, 0])
    with pytest.raises(TargetCLIPError):
        ramp(1)


def test_essence_ramp_and_interpolation_are_the_per_frame_edits():
    G = tiny_generator(32)
    wp = random_wplus(G, 1, seed=1)
    a, b = _essence(G, 2), _essence(G, 3)
    strengths = [0.0, 0.5, 1.0]
    frames = essence_ramp(G, wp, a, strengths, batch_size=2)
    with torch.no_grad():
        expected = torch.cat([G.synthesis(wp + s * a.vector) for s in strengths])
    assert torch.allclose(frames, expected, atol=1e-5)
    inter = essence_interpolation(G, wp, [a, b], frames_per_step=4)
    assert inter.shape[0] == 5
    with torch.no_grad():
        assert torch.allclose(inter[0], G.synthesis(wp + a.vector)[0], atol=1e-5)
        assert torch.allclose(inter[2], G.synthesis(wp + 0.5 * (a.vector + b.vector))[0], atol=1e-5)
        assert torch.allclose(inter[-1], G.synthesis(wp + b.vector)[0], atol=1e-5)


def test_turntable_orbits_and_ramps_the_edit():
    G = tiny_eg3d()
    wp = random_wplus(G, 1, seed=4)
    essence = _essence(G, 5)
    frames = turntable(G, wp, 4, yaw_range=25, pitch_range=5, essence=essence, strengths=[0.0, 1.0, 1.0, 0.0])
    assert frames.shape[0] == 4 and not torch.allclose(frames[0], frames[1])
    with torch.no_grad():  # frame 0: yaw 0, pitch 5, strength 0 (EG3D's orbit), the unedited face
        first = G.render(wp, G.camera(yaw=0.0, pitch=5.0))["image"][0]
    assert torch.allclose(frames[0], first, atol=1e-5)
    with pytest.raises(TargetCLIPError, match="3D-aware"):
        turntable(tiny_generator(32), random_wplus(tiny_generator(32), 1), 3)


def test_latent_smoothing_keeps_constants_and_lines():
    t = np.arange(10, dtype=np.float64)
    line = np.stack([t, 2 * t + 1], axis=1)[:, :, None]  # any trailing shape, like W+ [T, n_latent, w_dim]
    assert np.allclose(smooth_series(line, 1.5), line)  # a local line at the ends: no lag anywhere
    assert np.allclose(smooth_series(np.ones((7, 3)), 2.0), 1.0)
    noisy = line + np.random.default_rng(0).normal(0, 0.5, line.shape)
    assert np.abs(np.diff(smooth_series(noisy, 2.0), 2, axis=0)).mean() < 0.5 * np.abs(np.diff(noisy, 2, axis=0)).mean()


# --------------------------------------------------------------------------- a face through a clip


@pytest.fixture(scope="module")
def clip_frames():
    """10 frames of 160x160: the photo scaled down and moved 2 px a frame, frames 4 and 5 blank."""
    from PIL import Image

    photo = Image.open(require_shared("data", "targetclip", "targets", "keanu.jpg")).convert("RGB")
    photo.thumbnail((150, 150))
    frames = []
    for k in range(10):
        canvas = Image.new("RGB", (160, 160), (40, 40, 40))
        if k not in (4, 5):
            canvas.paste(photo, (2 * k, k))
        frames.append(np.asarray(canvas))
    return torch.from_numpy(np.stack(frames))


@pytest.fixture(scope="module")
def inverter_and_G(tmp_path_factory):
    from targetclip_core.encoders.inversion import load_inverter

    path = tmp_path_factory.mktemp("e4e") / "e4e_tiny.pt"
    enc = tiny_encoder(n_styles=6, w_dim=32)
    official_checkpoint(path, enc.state_dict(), torch.randn(6, 32), decoder_state=random_rosinality_state(resolution=16))
    inverter = load_inverter(path, device="cpu")
    return inverter, inverter.generator


def test_edit_clip_keeps_the_clip_outside_the_face(clip_frames, inverter_and_G):
    inverter, G = inverter_and_G
    stages = []
    result = edit_clip(clip_frames, inverter, essence_edit(G, _essence(G, 7, 1.0)), resolution=G.resolution,
                       on_frame=lambda stage, done, total: stages.append((stage, done, total)))
    assert result.frames.shape == clip_frames.shape and result.frames.dtype == torch.uint8
    assert result.faces == [True] * 4 + [False] * 2 + [True] * 4 and result.frames_without_face == 2
    assert torch.equal(result.frames[4], clip_frames[4]) and torch.equal(result.frames[5], clip_frames[5])
    changed = (result.frames != clip_frames).any(dim=-1)
    assert changed[0].any()  # the face was edited
    assert not changed[0, :, -8:].any() and not changed[0, -8:, :].any()  # the canvas far from the face is not
    assert {s for s, _, _ in stages} == {"track", "invert", "edit"}
    assert result.latents.shape == (8, G.n_latent, G.w_dim)
    assert "2 without a face" in result.report()


def test_latents_are_smoothed_within_runs_only(clip_frames, inverter_and_G):
    inverter, G = inverter_and_G
    identity = lambda wp: G.synthesis(wp)  # noqa: E731
    raw = edit_clip(clip_frames, inverter, identity, resolution=G.resolution, latent_sigma=0)
    smooth = edit_clip(clip_frames, inverter, identity, resolution=G.resolution, latent_sigma=2.0)
    step = lambda lat: (lat[1:] - lat[:-1]).flatten(1).norm(dim=1)  # noqa: E731
    # within the first run (frames 0-3) the smoothed latents change less from frame to frame
    assert step(smooth.latents[:4]).mean() < step(raw.latents[:4]).mean()
    with pytest.raises(TargetCLIPError, match="uint8"):
        edit_clip(clip_frames.float(), inverter, identity, resolution=G.resolution)
