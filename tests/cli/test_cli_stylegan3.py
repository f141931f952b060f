"""StyleGAN3 on the command line: `render --translate/--rotate` (gen_images.py's options), `convert`, and
`bench generator --arch stylegan3-*`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.generators import small_stylegan3
from PIL import Image

from targetclip_core.bench.benchmarks import bench_stylegan3
from targetclip_core.cli.main import main
from targetclip_core.generators.latents import wplus_from_seeds
from targetclip_core.generators.load import load_generator, save_generator
from targetclip_core.generators.stylegan3 import user_transform


@pytest.fixture(scope="module")
def sg3_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("sg3") / "sg3-t.safetensors"
    save_generator(small_stylegan3("T"), path)
    return path


def _png(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im).astype(int)


def _uint8(img: torch.Tensor) -> np.ndarray:
    x = np.clip(img[0].numpy().astype(np.float64), -1, 1)
    return np.floor((x + 1) * 127.5 + 0.5).astype(int).transpose(1, 2, 0)


def test_render_translate_and_rotate_as_gen_images(tmp_path, sg3_file, capsys):
    plain, moved = tmp_path / "plain", tmp_path / "moved"
    assert main(["render", "-g", str(sg3_file), "--seeds", "3", "-o", str(plain), "--device", "cpu"]) == 0
    rc = main(["render", "-g", str(sg3_file), "--seeds", "3", "-o", str(moved), "--device", "cpu",
               "--translate", "-0.2,0.1", "--rotate", "-15"])
    assert rc == 0, capsys.readouterr().err
    G = load_generator(sg3_file, device="cpu")
    with torch.no_grad():
        wp = wplus_from_seeds(G, [3], 1.0)
        expected = _uint8(G.synthesis(wp, transform=user_transform((-0.2, 0.1), -15.0)))
        unmoved = _uint8(G.synthesis(wp))
    got = _png(moved / "seed0003.png")
    assert np.abs(got - expected).max() <= 1
    assert np.abs(_png(plain / "seed0003.png") - unmoved).max() <= 1
    assert np.abs(got - unmoved).mean() > 2  # the picture did move


def test_translate_on_stylegan2_is_refused_by_name(tmp_path, gen_file, capsys):
    rc = main(["render", "-g", str(gen_file), "--seeds", "0", "-o", str(tmp_path / "o"), "--device", "cpu",
               "--rotate", "10"])
    err = capsys.readouterr().err
    assert rc == 2 and "StyleGAN3" in err and "StyleGAN2" in err and "Traceback" not in err


@pytest.mark.parametrize("value", ["0.1", "a,b", "1,2,3", "nan,0"])
def test_translate_needs_two_finite_numbers(value, capsys):
    with pytest.raises(SystemExit) as info:
        main(["render", "-g", "x.safetensors", "--seeds", "0", "--translate", value])
    assert info.value.code == 2 and "--translate" in capsys.readouterr().err


def test_convert_keeps_a_stylegan3(tmp_path, sg3_file, capsys):
    out = tmp_path / "again.safetensors"
    assert main(["convert", str(sg3_file), str(out)]) == 0
    assert "StyleGAN3-T" in capsys.readouterr().out
    assert out.read_bytes() == sg3_file.read_bytes()


def test_bench_stylegan3_checks_the_reference_and_reports_ratios():
    lines = []
    times, summary = bench_stylegan3(batch=2, repeats=1, G=small_stylegan3("R"), log=lines.append)
    assert summary["reference_max_rel_diff"] < 1e-4
    assert summary["speedup_vs_reference_fwd_bwd"] > 0 and summary["ours_fwd_s_per_image"] > 0
    assert any("StyleGAN3-R" in line for line in lines) and any("NVlabs reference path" in line for line in lines)
