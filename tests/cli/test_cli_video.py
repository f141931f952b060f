"""`targetclip edit-video` and `animate` end to end: a synthetic clip with audio (a real photo moved across the
frames), tiny networks; the output keeps the frame count, rate, size and audio."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
from helpers.eg3d import tiny_eg3d
from helpers.encoders import official_checkpoint, tiny_encoder
from helpers.generators import random_rosinality_state
from helpers.paths import require_shared

from targetclip_core.cli.main import main
from targetclip_core.generators.load import save_generator
from targetclip_core.io.video import probe_clip, read_clip
from targetclip_core.methods.targetclip.essence import Essence, save_essence

av = pytest.importorskip("av", reason="PyAV writes the test clips (pip install av)")


@pytest.fixture(scope="module")
def clip_with_audio(tmp_path_factory):
    """8 frames at 12 fps, 160x160, the photo drifting; frame 5 blank; a 440 Hz AAC tone."""
    from helpers.video import write_face_clip

    photo = require_shared("data", "targetclip", "targets", "keanu.jpg")
    return write_face_clip(photo, tmp_path_factory.mktemp("clip") / "clip.mp4", frames=8, fps=12, size=(160, 160),
                           blank=(5,))


@pytest.fixture(scope="module")
def e4e_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("e4e") / "e4e_tiny.pt"
    official_checkpoint(path, tiny_encoder(n_styles=6, w_dim=32).state_dict(), torch.randn(6, 32),
                        decoder_state=random_rosinality_state(resolution=16))
    return path


def _essence_file(tmp_path, n_latent=6, w_dim=32, resolution=16, arch="stylegan2"):
    e = Essence(vector=torch.randn(1, n_latent, w_dim, generator=torch.Generator().manual_seed(0)),
                generator={"arch": arch, "resolution": resolution, "n_latent": n_latent, "w_dim": w_dim}, name="tiny")
    return save_essence(tmp_path / f"tiny_{n_latent}.safetensors", e)


def test_edit_video_keeps_rate_count_size_and_audio(tmp_path, clip_with_audio, e4e_file, capsys):
    out = tmp_path / "edited.mp4"
    rc = main(["edit-video", str(clip_with_audio), "--essence", str(_essence_file(tmp_path)), "--encoder", str(e4e_file),
               "--out", str(out), "--device", "cpu"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    frames, fps, width, height, has_audio = probe_clip(out)
    source = read_clip(clip_with_audio)
    edited = read_clip(out)
    assert edited.frames.shape == source.frames.shape and fps == Fraction(12) and has_audio
    assert "7 of 8 frames edited, 1 without a face" in captured.out
    # the blank frame passes through (up to the codec's loss)
    assert np.abs(edited.frames[5].float().numpy() - source.frames[5].float().numpy()).mean() < 2.0


def test_animate_ramp_and_turntable(tmp_path, capsys):
    from helpers.generators import tiny_generator

    gen = tmp_path / "g.safetensors"
    G = tiny_generator(32)
    save_generator(G, gen)
    essence = _essence_file(tmp_path, G.n_latent, G.w_dim, G.resolution)
    assert main(["animate", "ramp", "-g", str(gen), "-e", str(essence), "--frames", "6", "--fps", "10",
                 "--out", str(tmp_path / "ramp.gif")]) == 0
    frames, fps, width, height, _ = probe_clip(tmp_path / "ramp.gif")
    assert (width, height) == (32, 32) and read_clip(tmp_path / "ramp.gif").frames.shape[0] == 6
    g3 = tmp_path / "eg3d.safetensors"
    save_generator(tiny_eg3d(), g3)
    assert main(["animate", "turntable", "-g", str(g3), "--frames", "4", "--out", str(tmp_path / "turn.mp4")]) == 0
    assert read_clip(tmp_path / "turn.mp4").frames.shape[0] == 4
    rc = main(["animate", "turntable", "-g", str(gen), "--frames", "4", "--out", str(tmp_path / "t.mp4")])
    assert rc == 2 and "3D-aware" in capsys.readouterr().err
    rc = main(["animate", "ramp", "-g", str(gen), "-e", str(essence), "--out", str(tmp_path / "x.avi")])
    assert rc == 2 and ".mp4" in capsys.readouterr().err


def test_edit_video_with_refinement(tmp_path, clip_with_audio, e4e_file, capsys, monkeypatch):
    monkeypatch.setattr("torch.hub.get_dir", lambda: str(tmp_path / "no-hub"))  # no LPIPS trunk: L2 only, one warning
    monkeypatch.setenv("TARGETCLIP_WEIGHTS_DIR", str(tmp_path / "no-store"))
    out = tmp_path / "refined.webm"
    rc = main(["edit-video", str(clip_with_audio), "--essence", str(_essence_file(tmp_path)), "--encoder", str(e4e_file),
               "--out", str(out), "--device", "cpu", "--refine", "2", "--max-frames", "4"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "LPIPS is off" in captured.err and read_clip(out).frames.shape[0] == 4


@pytest.mark.parametrize("content", [b"", b"not a video at all\n", b"\x89PNG\r\n\x1a\n" + b"\0" * 64])
def test_edit_video_names_a_broken_clip(tmp_path, e4e_file, capsys, content):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(content)
    rc = main(["edit-video", str(bad), "--essence", str(_essence_file(tmp_path)), "--encoder", str(e4e_file),
               "--out", str(tmp_path / "out.mp4"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "broken.mp4" in err and "Traceback" not in err
    assert not (tmp_path / "out.mp4").exists()


def test_animate_refuses_an_essence_of_another_generator(tmp_path, capsys):
    from helpers.generators import tiny_generator

    gen = tmp_path / "g.safetensors"
    save_generator(tiny_generator(32), gen)
    rc = main(["animate", "ramp", "-g", str(gen), "-e", str(_essence_file(tmp_path)), "--frames", "3",
               "--out", str(tmp_path / "r.mp4")])
    assert rc == 2 and "Traceback" not in capsys.readouterr().err
