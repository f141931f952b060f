"""`targetclip invert / encode / edit` end to end: a real photo, tiny e4e networks, the real MTCNN alignment."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.generators import random_rosinality_state
from helpers.paths import require_shared
from helpers.encoders import official_checkpoint, tiny_encoder
from PIL import Image

from targetclip_core.cli.main import main
from targetclip_core.generators.latents import load_latents
from targetclip_core.methods.targetclip.essence import Essence, load_essence, save_essence


@pytest.fixture(scope="module")
def photo():
    return require_shared("data", "targetclip", "targets", "keanu.jpg")


@pytest.fixture(scope="module")
def e4e_file(tmp_path_factory):
    """A tiny e4e checkpoint (6 W+ entries of 32) carrying a 16 px decoder, like e4e_ffhq_encode.pt carries FFHQ."""
    path = tmp_path_factory.mktemp("e4e") / "e4e_tiny.pt"
    enc = tiny_encoder(n_styles=6, w_dim=32)
    official_checkpoint(path, enc.state_dict(), torch.randn(6, 32), decoder_state=random_rosinality_state(resolution=16))
    return path


def test_invert_writes_latent_aligned_crop_and_reconstruction(tmp_path, photo, e4e_file):
    out = tmp_path / "keanu.safetensors"
    assert main(["invert", str(photo), "--encoder", str(e4e_file), "--out", str(out), "--device", "cpu"]) == 0
    assert load_latents(out).shape == (1, 6, 32)
    aligned = Image.open(tmp_path / "keanu_aligned.png")
    assert aligned.size == (16, 16)  # aligned at the generator's resolution
    assert Image.open(tmp_path / "keanu_reconstruction.png").size == (16, 16)


def test_edit_pastes_back_into_the_photo_and_keeps_the_rest(tmp_path, photo, e4e_file):
    essence = Essence(vector=0.5 * torch.randn(1, 6, 32, generator=torch.Generator().manual_seed(0)),
                      generator={"arch": "stylegan2", "resolution": 16, "n_latent": 6, "w_dim": 32}, name="tiny")
    save_essence(tmp_path / "tiny.safetensors", essence)
    rc = main(["edit", str(photo), "--essence", str(tmp_path / "tiny.safetensors"), "--encoder", str(e4e_file),
               "--strength", "0.5", "1", "--out", str(tmp_path / "out"), "--device", "cpu"])
    assert rc == 0
    original = np.asarray(Image.open(photo).convert("RGB"))
    for strength in ("0.5", "1"):
        edited = np.asarray(Image.open(tmp_path / "out" / f"keanu_tiny_x{strength}.png"))
        assert edited.shape == original.shape
        changed = np.any(edited != original, axis=-1)
        assert 0 < changed.mean() < 0.8  # the face region changed, most of the photo did not
        assert not changed[0, 0] and not changed[-1, -1]  # corners are the photo, bit for bit
    assert (tmp_path / "out" / "keanu_aligned.png").exists()


def test_encode_an_aligned_target_photo(tmp_path, photo):
    enc = tiny_encoder(n_styles=6, w_dim=32)
    path = official_checkpoint(tmp_path / "essence_enc.pt", enc.state_dict(), None, start_from_latent_avg=False)
    out = tmp_path / "keanu_essence.safetensors"
    assert main(["encode", str(photo), "--encoder", str(path), "--align", "--out", str(out), "--device", "cpu"]) == 0
    essence = load_essence(out)
    assert essence.vector.shape == (1, 6, 32) and essence.source == "encoder" and essence.name == "keanu"


def test_a_photo_without_a_face_is_a_clear_error(tmp_path, e4e_file, capsys):
    blank = tmp_path / "wall.png"
    Image.fromarray(np.full((200, 200, 3), 128, np.uint8)).save(blank)
    rc = main(["invert", str(blank), "--encoder", str(e4e_file), "--out", str(tmp_path / "x.safetensors"), "--device", "cpu"])
    assert rc == 2
    assert "no face" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()


# --------------------------------------------------------------------------- --refine / --pti


def test_invert_refine_and_pti_write_the_stages(tmp_path, photo, e4e_file, capsys):
    import json

    from safetensors import safe_open

    from targetclip_core.generators.load import load_generator

    out = tmp_path / "keanu.safetensors"
    rc = main(["invert", str(photo), "--encoder", str(e4e_file), "--out", str(out), "--device", "cpu",
               "--refine", "4", "--pti", "3", "--lpips", "off", "--refine-lr", "0.05"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    report = json.loads((tmp_path / "keanu_stages.json").read_text())
    assert report["columns"] == ["photo", "e4e", "refined", "PTI"]
    rows = {r["stage"]: r for r in report["rows"]}
    assert rows["refined"]["mse"] < rows["e4e"]["mse"]  # 4 steps of refinement already help
    assert Image.open(tmp_path / "keanu_stages.png").size == (16 * 4, 16)
    assert "refined" in captured.out and "psnr" in captured.out
    tuned = load_generator(tmp_path / "keanu_pti.safetensors", device="cpu")  # the full file loads anywhere
    with safe_open(str(tmp_path / "keanu_pti.safetensors"), framework="pt") as f:
        assert "tuned_from" in f.metadata()
    latent = load_latents(out)
    with torch.no_grad():  # the saved latent through the tuned generator is the PTI stage's reconstruction
        recon = np.asarray(Image.open(tmp_path / "keanu_reconstruction.png")).astype(int)
        mine = ((tuned.synthesis(latent)[0].clamp(-1, 1) + 1) * 127.5 + 0.5).floor().permute(1, 2, 0).numpy()
    assert np.abs(recon - mine).max() <= 1


def test_edit_with_refine_uses_the_refined_latent(tmp_path, photo, e4e_file):
    essence = Essence(vector=torch.zeros(1, 6, 32), generator={"arch": "stylegan2", "resolution": 16, "n_latent": 6,
                                                               "w_dim": 32}, name="none")
    save_essence(tmp_path / "none.safetensors", essence)
    rc = main(["edit", str(photo), "--essence", str(tmp_path / "none.safetensors"), "--encoder", str(e4e_file),
               "--out", str(tmp_path / "out"), "--device", "cpu", "--refine", "3", "--lpips", "off"])
    assert rc == 0
    assert (tmp_path / "out" / "keanu_stages.json").exists() and (tmp_path / "out" / "keanu_stages.png").exists()


def test_refine_warns_once_when_lpips_is_unavailable(tmp_path, photo, e4e_file, capsys, monkeypatch):
    monkeypatch.setattr("torch.hub.get_dir", lambda: str(tmp_path / "no-hub"))
    monkeypatch.setenv("TARGETCLIP_WEIGHTS_DIR", str(tmp_path / "no-store"))
    rc = main(["invert", str(photo), "--encoder", str(e4e_file), "--out", str(tmp_path / "k.safetensors"),
               "--device", "cpu", "--refine", "1"])
    err = capsys.readouterr().err
    assert rc == 0 and "targetclip: warning: LPIPS is off" in err and "Traceback" not in err


def test_eg3d_photo_from_the_average_latent_and_a_camera(tmp_path, photo, capsys):
    import json

    from helpers.eg3d import tiny_eg3d

    from targetclip_core.generators.load import save_generator

    gen = tmp_path / "eg3d.safetensors"
    save_generator(tiny_eg3d(), gen)
    out = tmp_path / "keanu.safetensors"
    rc = main(["invert", str(photo), "--encoder", "none", "--generator", str(gen), "--out", str(out), "--device", "cpu",
               "--refine", "3", "--pti", "2", "--lpips", "off", "--camera", "15,-5", "--refine-lr", "0.05"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    report = json.loads((tmp_path / "keanu_stages.json").read_text())
    assert report["columns"] == ["photo", "average", "refined", "PTI"]
    rows = {r["stage"]: r for r in report["rows"]}
    assert rows["refined"]["mse"] < rows["average"]["mse"]


@pytest.mark.parametrize("extra, message", [
    (["--encoder", "none", "--refine", "2"], "needs --generator"),
    (["--refine", "1", "--camera", "10,0", "--lpips", "off"], "3D-aware"),
])
def test_reconstruction_options_are_checked(tmp_path, photo, e4e_file, capsys, extra, message):
    args = ["invert", str(photo), "--out", str(tmp_path / "k.safetensors"), "--device", "cpu"]
    if "--encoder" not in extra:
        args += ["--encoder", str(e4e_file)]
    rc = main(args + extra)
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err
