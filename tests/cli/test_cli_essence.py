"""`targetclip optimize`, `apply` and `bench optimize`, run in-process on a tiny generator
checkpoint and the tiny random CLIP (no downloads)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from helpers.clip import TINY_CLIP, register_tiny_clip
from helpers.generators import tiny_generator, truncated_sources
from PIL import Image

from targetclip_core.cli.main import main
from targetclip_core.generators.latents import save_latents
from targetclip_core.methods.targetclip.essence import Essence, load_essence, save_essence

RES = 32
CLIP_ARGS = ["--clip", TINY_CLIP, "--pretrained", "none", "--device", "cpu"]


@pytest.fixture(autouse=True)
def _tiny_clip_registered():
    register_tiny_clip()


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """[B,3,H,W] in [-1,1] -> uint8 [B,H,W,3], by hand."""
    x = np.clip(img.detach().double().numpy(), -1, 1)
    return np.floor((x + 1) * 127.5 + 0.5).astype(np.uint8).transpose(0, 2, 3, 1)


def read_png(path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        return np.asarray(im)


def assert_close_pixels(got, expected):
    assert got.shape == expected.shape
    diff = np.abs(got.astype(int) - expected.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.02


def cell(grid_img, row, col, r=RES):
    return grid_img[row * r:(row + 1) * r, col * r:(col + 1) * r]


def write_rgba_target(path, h=40, w=56, rgb=(200, 30, 60)):
    arr = np.zeros((h, w, 4), np.uint8)
    arr[..., :3] = rgb
    arr[..., 3] = 51  # 20% opaque: composited over white, (200, 30, 60) -> 0.2 * rgb + 0.8 * 255 = (244, 210, 216)
    Image.fromarray(arr, "RGBA").save(path)
    return path


def write_gray_target(path, h=48, w=30):
    arr = np.random.default_rng(1).integers(0, 256, (h, w), dtype=np.uint8)
    Image.fromarray(arr, "L").save(path)
    return path


def test_optimize_writes_essence_and_grid(tmp_path, gen_file, G, capsys):
    target = write_rgba_target(tmp_path / "redhead.png")
    out = tmp_path / "ess" / "redhead.safetensors"
    n = 3
    rc = main(["optimize", "--target", str(target), "--generator", str(gen_file), "--out", str(out),
               "--steps", "5", "--n-sources", str(n), "--seed", "2", *CLIP_ARGS])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert out.is_file()
    grid_path = out.with_suffix(".png")
    assert grid_path.is_file()
    assert str(out) in captured.out and str(grid_path) in captured.out

    E = load_essence(out, generator=G)
    assert E.vector.shape == (1, G.n_latent, G.w_dim)
    assert E.name == "redhead" and E.steps == 5
    assert all(len(v) == 5 for v in E.losses.values()) and set(E.losses) == {"total", "similarity", "consistency", "l2"}
    assert E.generator == G.identity
    assert E.clip == {"name": TINY_CLIP, "pretrained": ""}
    # RGBA is composited over white: the thumbnail of a uniform-colour target has the composite colour
    assert E.thumbnail.shape == (64, 64, 3)
    assert np.abs(E.thumbnail.numpy().astype(int) - np.array([244, 210, 216])).max() <= 1

    grid_img = read_png(grid_path)
    assert grid_img.shape == (2 * RES, (n + 1) * RES, 3)  # (N+1) columns x 2 rows of generator-size cells
    # the cells: target | sources / blank | edits, sources drawn as the optimiser draws them
    sources = truncated_sources(G, n, seed=2)
    with torch.no_grad():
        srcs, edits = to_uint8(G.synthesis(sources)), to_uint8(G.synthesis(sources + E.vector))
    assert np.abs(cell(grid_img, 0, 0).astype(int) - np.array([244, 210, 216])).max() <= 1
    assert (cell(grid_img, 1, 0) == 0).all()
    for i in range(n):
        assert_close_pixels(cell(grid_img, 0, i + 1), srcs[i])
        assert_close_pixels(cell(grid_img, 1, i + 1), edits[i])


def test_optimize_two_targets_writes_one_file_each(tmp_path, gen_file, G, capsys):
    a = write_gray_target(tmp_path / "gray.png")
    b = write_rgba_target(tmp_path / "tinted.png", rgb=(10, 120, 250))
    out = tmp_path / "essences"
    rc = main(["optimize", "-t", str(a), str(b), "-g", str(gen_file), "-o", str(out), "--steps", "3",
               "--n-sources", "2", *CLIP_ARGS])
    assert rc == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["gray.png", "gray.safetensors", "tinted.png", "tinted.safetensors"]
    ea, eb = load_essence(out / "gray.safetensors"), load_essence(out / "tinted.safetensors")
    assert (ea.name, eb.name) == ("gray", "tinted")
    assert ea.steps == eb.steps == 3
    assert not torch.equal(ea.vector, eb.vector)
    thumb = ea.thumbnail.numpy()
    assert (thumb[..., 0] == thumb[..., 1]).all() and (thumb[..., 1] == thumb[..., 2]).all()  # L -> RGB
    assert thumb.std() > 5  # the grey content itself survived
    for name in ("gray", "tinted"):
        assert read_png(out / f"{name}.png").shape == (2 * RES, 3 * RES, 3)


def test_optimize_with_sources_file_and_essence_init(tmp_path, gen_file, G, capsys):
    sources = truncated_sources(G, 4, seed=30)
    src_file = save_latents(tmp_path / "src.safetensors", sources)
    prior = Essence(vector=0.2 * torch.randn(1, G.n_latent, G.w_dim, generator=torch.Generator().manual_seed(3)),
                    generator=G.identity, name="prior")
    prior_file = save_essence(tmp_path / "prior.safetensors", prior)
    target = write_rgba_target(tmp_path / "t.png")
    out = tmp_path / "o.safetensors"
    grid_file = tmp_path / "grid.png"
    rc = main(["optimize", "-t", str(target), "-g", str(gen_file), "-o", str(out), "--steps", "1", "--lr", "0",
               "--sources", str(src_file), "--init", str(prior_file), "--grid", str(grid_file), *CLIP_ARGS])
    assert rc == 0, capsys.readouterr().err
    E = load_essence(out)
    assert torch.equal(E.vector, prior.vector)  # lr 0: the init comes back unchanged
    grid_img = read_png(grid_file)
    assert grid_img.shape == (2 * RES, 5 * RES, 3)
    assert not out.with_suffix(".png").exists()
    with torch.no_grad():
        srcs = to_uint8(G.synthesis(sources))
    for i in range(4):
        assert_close_pixels(cell(grid_img, 0, i + 1), srcs[i])


def test_optimize_foreign_init_essence_is_an_error(tmp_path, gen_file, capsys):
    foreign = save_essence(tmp_path / "ffhq.safetensors", Essence(
        vector=torch.zeros(1, 18, 512), generator={"arch": "stylegan2", "resolution": 1024, "n_latent": 18, "w_dim": 512}))
    target = write_rgba_target(tmp_path / "t.png")
    rc = main(["optimize", "-t", str(target), "-g", str(gen_file), "-o", str(tmp_path / "o.safetensors"), "--steps", "1",
               "--init", str(foreign), *CLIP_ARGS])
    err = capsys.readouterr().err
    assert rc == 2 and "targetclip: error:" in err and "1024px" in err
    assert not (tmp_path / "o.safetensors").exists()


def test_optimize_unreadable_target_is_an_error(tmp_path, gen_file, capsys):
    bad = tmp_path / "target.png"
    bad.write_bytes(b"not an image")
    rc = main(["optimize", "-t", str(bad), "-g", str(gen_file), "-o", str(tmp_path / "o.safetensors"), "--steps", "1",
               *CLIP_ARGS])
    err = capsys.readouterr().err
    assert rc == 2 and "targetclip: error:" in err and str(bad) in err


@pytest.fixture(scope="module")
def essence_file(tmp_path_factory, G):
    path = tmp_path_factory.mktemp("apply") / "spark.safetensors"
    b = 0.5 * torch.randn(1, G.n_latent, G.w_dim, generator=torch.Generator().manual_seed(9))
    save_essence(path, Essence(vector=b, generator=G.identity, name="spark", strength=0.8))
    return path


def seed_wplus(G, seeds, truncation=0.7):
    """z as NVlabs' generate.py draws it (numpy RandomState(seed).randn), mapped and broadcast."""
    z = torch.from_numpy(np.stack([np.random.RandomState(s).randn(G.z_dim) for s in seeds])).float()
    with torch.no_grad():
        return G.mapping(z, truncation=truncation)[:, None].repeat(1, G.n_latent, 1)


def test_apply_writes_one_image_per_seed_and_strength(tmp_path, gen_file, G, essence_file, capsys):
    out = tmp_path / "edits"
    rc = main(["apply", "--essence", str(essence_file), "--generator", str(gen_file), "--seeds", "0,1",
               "--strength", "0.5", "1", "--out", str(out), "--device", "cpu"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert sorted(p.name for p in out.iterdir()) == [
        "seed0000_spark_x0.5.png", "seed0000_spark_x1.png", "seed0001_spark_x0.5.png", "seed0001_spark_x1.png"]
    assert "wrote 4 images" in captured.out
    b = load_essence(essence_file).vector
    wp = seed_wplus(G, [0, 1])
    with torch.no_grad():
        half, full = to_uint8(G.synthesis(wp + 0.5 * b)), to_uint8(G.synthesis(wp + b))
    assert_close_pixels(read_png(out / "seed0001_spark_x0.5.png"), half[1])
    assert_close_pixels(read_png(out / "seed0000_spark_x1.png"), full[0])


def test_apply_default_strength_and_layers(tmp_path, gen_file, G, essence_file, capsys):
    out = tmp_path / "edits"
    assert main(["apply", "-e", str(essence_file), "-g", str(gen_file), "--seeds", "3", "--layers", "coarse",
                 "-o", str(out / "named"), "--device", "cpu"]) == 0
    assert main(["apply", "-e", str(essence_file), "-g", str(gen_file), "--seeds", "3", "--layers", "0-3",
                 "-o", str(out / "indices"), "--device", "cpu"]) == 0
    capsys.readouterr()
    names = sorted(p.name for p in (out / "named").iterdir())
    assert names == ["seed0003_spark_x0.8.png"]  # the essence's recommended strength
    b = load_essence(essence_file).vector.clone()
    b[:, 4:] = 0
    with torch.no_grad():
        ref = to_uint8(G.synthesis(seed_wplus(G, [3]) + 0.8 * b))[0]
    assert_close_pixels(read_png(out / "named" / names[0]), ref)
    assert np.array_equal(read_png(out / "named" / names[0]), read_png(out / "indices" / names[0]))


def test_apply_missing_essence_file_exits_2(tmp_path, gen_file, capsys):
    missing = tmp_path / "nope.safetensors"
    rc = main(["apply", "-e", str(missing), "-g", str(gen_file), "--seeds", "0", "-o", str(tmp_path / "e"),
               "--device", "cpu"])
    captured = capsys.readouterr()
    assert rc == 2
    assert captured.err.startswith("targetclip: error:") and str(missing) in captured.err
    assert "Traceback" not in captured.err
    assert not (tmp_path / "e").exists()


def test_apply_essence_of_another_generator_exits_2(tmp_path, gen_file, capsys):
    foreign = save_essence(tmp_path / "ffhq.safetensors", Essence(
        vector=torch.zeros(1, 18, 512), generator={"arch": "stylegan2", "resolution": 1024, "n_latent": 18, "w_dim": 512}))
    rc = main(["apply", "-e", str(foreign), "-g", str(gen_file), "--seeds", "0", "-o", str(tmp_path / "e"),
               "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "targetclip: error:" in err and "1024px" in err and "32px" in err


def test_bench_optimize_prints_table_and_speedups(monkeypatch, capsys):
    """The command's plumbing and report; the 512-channel random network it normally times is
    swapped for a tiny one of the requested resolution to keep the test fast."""
    import targetclip_core.bench.benchmarks as bench

    asked = []

    def small_random_generator(resolution, channel_multiplier=2, seed=0):
        asked.append(resolution)
        return tiny_generator(resolution, seed=seed)

    monkeypatch.setattr(bench, "random_generator", small_random_generator)
    rc = main(["bench", "optimize", "--resolution", "32", "--n-sources", "2", "--steps", "1", "--clip", TINY_CLIP])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert asked == [32]
    out = captured.out
    assert "essence optimisation step, StyleGAN2 32px, N=2, CLIP TargetCLIP-Tiny, cpu" in out
    assert "seconds per step" in out
    rows = {}
    for label in ("ours, fp32 (sources cached, out_resolution auto, one batch)",
                  "official loop, rosinality-style generator (faithful)", "official loop, our generator"):
        m = re.search(re.escape(label) + r"\s+([0-9.]+)", out)
        assert m, f"missing row {label!r} in:\n{out}"
        rows[label] = float(m.group(1))
    for key in ("speedup_vs_official", "speedup_vs_official_loop_same_generator"):
        m = re.search(rf"^{key}: ([0-9.e+-]+)$", out, re.M)
        assert m, f"missing {key} in:\n{out}"
        assert float(m.group(1)) > 0
