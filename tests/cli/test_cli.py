"""The `targetclip` command line, run in-process: convert, render, bench, download, errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers.paths import REPO_ROOT
from helpers.generators import small_generator
from PIL import Image

from targetclip_core.cli.args import parse_seeds
from targetclip_core.cli.main import main
from targetclip_core.generators.latents import z_from_seeds
from targetclip_core.generators.load import load_generator, save_generator
from targetclip_core.formats.checkpoints import sniff_format


def _expected_uint8(img) -> np.ndarray:
    """[B,3,H,W] in [-1,1] -> uint8 [B,H,W,3], written out by hand."""
    x = np.asarray(img, dtype=np.float64)
    x = np.clip(x, -1.0, 1.0)
    return np.floor((x + 1.0) * 127.5 + 0.5).astype(np.uint8).transpose(0, 2, 3, 1)


def _read_png(path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        return np.asarray(im)


def _assert_close_pixels(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.shape == expected.shape
    diff = np.abs(got.astype(int) - expected.astype(int))
    assert diff.max() <= 1  # float rounding at a .5 boundary may move one level
    assert (diff > 0).mean() < 0.01


# --------------------------------------------------------------------------- convert


def test_convert_rosinality_to_safetensors(tmp_path, rosinality32_ckpt, rosinality32_ref, capsys):
    out = tmp_path / "converted" / "g32.safetensors"
    rc = main(["convert", str(rosinality32_ckpt), str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert out.is_file() and sniff_format(out) == "safetensors"
    assert "32px" in captured.out and "8 W+" in captured.out and "rosinality" in captured.out
    G, H = load_generator(rosinality32_ckpt, device="cpu"), load_generator(out, device="cpu")
    assert H.config == G.config
    wp = torch.from_numpy(rosinality32_ref["wplus"])
    z = torch.from_numpy(rosinality32_ref["z"])
    with torch.no_grad():
        for impl in ("fused", "unfused"):
            G.modconv_impl = H.modconv_impl = impl
            assert torch.equal(H.synthesis(wp), G.synthesis(wp))
        assert torch.equal(H.mapping(z), G.mapping(z))


def test_convert_refuses_other_output_types(tmp_path, rosinality32_ckpt, capsys):
    rc = main(["convert", str(rosinality32_ckpt), str(tmp_path / "g.pt")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("targetclip: error:") and ".safetensors" in err
    assert not (tmp_path / "g.pt").exists()


# --------------------------------------------------------------------------- render


@pytest.fixture(scope="module")
def g32_safetensors(tmp_path_factory, rosinality32_ckpt):
    path = tmp_path_factory.mktemp("cli") / "g32.safetensors"
    save_generator(load_generator(rosinality32_ckpt, device="cpu"), path)
    return path


def test_z_from_seeds_is_numpy_randomstate():
    z = z_from_seeds([0, 1, 85], 512)
    assert z.shape == (3, 512) and z.dtype == torch.float32
    for row, seed in zip(z, [0, 1, 85]):
        assert np.array_equal(row.numpy(), np.random.RandomState(seed).randn(512).astype(np.float32))


def test_parse_seeds():
    assert parse_seeds("0-2") == [0, 1, 2]
    assert parse_seeds("0,3,10-12") == [0, 3, 10, 11, 12]
    with pytest.raises(ValueError):
        parse_seeds("")


def test_render_seeds(tmp_path, g32_safetensors, capsys):
    out = tmp_path / "renders"
    rc = main(["render", "-g", str(g32_safetensors), "--seeds", "0-2", "--out", str(out), "--device", "cpu",
               "--truncation", "0.8", "--batch-size", "2"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    files = sorted(p.name for p in out.iterdir())
    assert files == ["seed0000.png", "seed0001.png", "seed0002.png"]
    # expected images from z drawn independently with numpy, through the generator's public API
    G = load_generator(g32_safetensors, device="cpu")
    z = torch.from_numpy(np.stack([np.random.RandomState(s).randn(512) for s in range(3)])).float()
    with torch.no_grad():
        imgs = G.synthesis(G.to_wplus(G.mapping(z, truncation=0.8)), noise_mode="const").numpy()
    expected = _expected_uint8(imgs)
    for i in range(3):
        got = _read_png(out / f"seed{i:04d}.png")
        assert got.shape == (32, 32, 3)
        _assert_close_pixels(got, expected[i])
    assert "wrote 3 images" in captured.out


def test_render_latent_npy(tmp_path, g32_safetensors, rosinality32_ref, capsys):
    latent = tmp_path / "x.npy"
    np.save(latent, rosinality32_ref["wplus"])
    out = tmp_path / "out"
    rc = main(["render", "-g", str(g32_safetensors), "--latent", str(latent), "-o", str(out), "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["x_0000.png", "x_0001.png"]
    # against rosinality's own rendering of the same W+ (the fixture), quantised by hand
    expected = _expected_uint8(rosinality32_ref["image_from_wplus"])
    for i in range(2):
        _assert_close_pixels(_read_png(out / f"x_{i:04d}.png"), expected[i])


def test_render_w_latent_and_out_resolution(tmp_path, capsys):
    G = small_generator(16, seed=3)
    gpath = tmp_path / "tiny.safetensors"
    save_generator(G, gpath)
    w = torch.randn(2, G.w_dim, generator=torch.Generator().manual_seed(0))
    np.save(tmp_path / "w.npy", w.numpy())
    rc = main(["render", "-g", str(gpath), "--latent", str(tmp_path / "w.npy"), "-o", str(tmp_path / "o"),
               "--device", "cpu", "--out-resolution", "8", "--noise-mode", "none"])
    assert rc == 0, capsys.readouterr().err
    with torch.no_grad():
        imgs = G.synthesis(G.to_wplus(w), noise_mode="none", out_resolution=8).numpy()
    expected = _expected_uint8(imgs)
    for i in range(2):
        got = _read_png(tmp_path / "o" / f"w_{i:04d}.png")
        assert got.shape == (8, 8, 3)
        _assert_close_pixels(got, expected[i])


def test_render_latent_of_another_generator_is_an_error(tmp_path, g32_safetensors, capsys):
    latent = tmp_path / "ffhq.npy"
    np.save(latent, np.zeros((1, 18, 512), dtype=np.float32))
    rc = main(["render", "-g", str(g32_safetensors), "--latent", str(latent), "-o", str(tmp_path / "o"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("targetclip: error:") and "[B, 8, 512]" in err
    assert "Traceback" not in err


def test_render_missing_generator_is_an_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TARGETCLIP_WEIGHTS_DIR", str(tmp_path))
    missing = tmp_path / "nope.pt"
    rc = main(["render", "-g", str(missing), "--seeds", "0", "-o", str(tmp_path / "o"), "--device", "cpu"])
    captured = capsys.readouterr()
    assert rc == 2
    assert captured.err.startswith("targetclip: error:") and "nope.pt" in captured.err
    assert "Traceback" not in captured.err
    assert not (tmp_path / "o").exists()


def test_render_corrupt_generator_is_an_error(tmp_path, capsys):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    rc = main(["render", "-g", str(bad), "--seeds", "0", "-o", str(tmp_path / "o"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("targetclip: error:") and "broken.pt" in err and "Traceback" not in err


def test_render_bad_latent_file_is_an_error(tmp_path, g32_safetensors, capsys):
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"not numpy")
    rc = main(["render", "-g", str(g32_safetensors), "--latent", str(bad), "-o", str(tmp_path / "o"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("targetclip: error:") and "bad.npy" in err


def test_bad_arguments_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["render", "-g", "x.pt", "--seeds", "zero"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "targetclip render: error:" in err and "zero" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2


# --------------------------------------------------------------------------- bench


def test_bench_generator_small(capsys):
    rc = main(["bench", "generator", "--resolution", "16", "--batch", "1", "--repeats", "1", "--device", "cpu"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    lines = captured.out.splitlines()
    assert lines[0].startswith("StyleGAN2 16px, batch 1, cpu: ") and "torch " in lines[0]
    assert any(line.startswith("min of 1 interleaved runs") for line in lines)
    table = {line[:44].strip(): line[44:].split() for line in lines if re.match(r"(ours|rosinality)", line)}
    assert set(table) == {"ours unfused", "ours fused", "ours unfused, autograd backward", "ours unfused, out_resolution=4",
                          "rosinality-style baseline"}
    for label, cells in table.items():
        if label == "ours unfused, autograd backward":  # timed with a backward only
            assert cells[0] == "-" and float(cells[1]) > 0
            continue
        assert len(cells) == 2 and all(float(c) > 0 for c in cells), label
    summary = dict(line.split(": ", 1) for line in lines if re.match(r"^[a-z_]+: ", line))
    for key in ("speedup_vs_baseline_fwd_bwd", "speedup_vs_baseline_fwd", "fused_over_unfused_fwd_bwd",
                "fused_over_unfused_fwd", "out_resolution_saving_fwd_bwd", "baseline_max_rel_diff",
                "autograd_backward_over_hand_written_fwd_bwd"):
        assert key in summary, key
        float(summary[key])
    assert float(summary["baseline_max_rel_diff"]) < 1e-4


def test_bench_with_a_checkpoint(g32_safetensors, capsys):
    rc = main(["bench", "generator", "--checkpoint", str(g32_safetensors), "--batch", "1", "--repeats", "1",
               "--no-fused", "--no-baseline", "--out-resolution", "8"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert captured.out.startswith("StyleGAN2 32px, batch 1, cpu")
    assert "ours fused" not in captured.out and "baseline" not in captured.out
    assert "out_resolution_saving_fwd_bwd" in captured.out


# --------------------------------------------------------------------------- download


def test_download_list(capsys):
    rc = main(["download", "--list"])
    out = capsys.readouterr().out
    assert rc == 0
    manifest = json.loads((REPO_ROOT / "weights" / "manifest.json").read_text(encoding="utf-8"))
    names = [e["name"] for e in manifest["weights"]]
    assert names and "stylegan2-ffhq-config-f" in names
    listed = [line.split()[0] for line in out.splitlines() if line.strip()]
    assert listed == names
    for entry in manifest["weights"]:
        line = next(line for line in out.splitlines() if line.split()[0] == entry["name"])
        assert entry["kind"] in line
        assert ("direct" if entry["urls"] else "manual") in line


def test_download_unknown_name_is_an_error(tmp_path, capsys):
    rc = main(["download", "no-such-model", "--dest", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("targetclip: error:") and "no-such-model" in err


def test_python_dash_m_entry_point(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    ok = subprocess.run([sys.executable, "-m", "targetclip_core", "download", "--list"], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "stylegan2-ffhq-config-f" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "targetclip_core", "download", "no-such-model", "--dest", str(tmp_path)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("targetclip: error:") and "Traceback" not in bad.stderr
