"""`targetclip directions ganspace | sefa | text`, in-process on a tiny generator and the tiny random CLIP.

The files must be ordinary essences (read by load_essence and `targetclip apply`) holding what the
engine's functions give for the same settings; the text command computes its statistics once and then
reuses (resumes) them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.clip import TINY_CLIP, register_tiny_clip
from PIL import Image

from targetclip_core.cli.main import main
from targetclip_core.methods.directions import ganspace_directions, load_direction, sefa_directions
from targetclip_core.methods.targetclip.essence import load_essence

RES = 32


@pytest.mark.parametrize("method", ["ganspace", "sefa"])
def test_latent_directions_write_essences_and_a_sheet(gen_file, G, tmp_path, capsys, method):
    out = tmp_path / method
    extra = ["--samples", "2000"] if method == "ganspace" else []
    rc = main(["directions", method, "-g", str(gen_file), "-o", str(out), "--k", "3", "--layers", "0-3",
               "--preview-seeds", "0,1", "--device", "cpu", *extra])
    assert rc == 0, capsys.readouterr().err
    files = sorted(p.name for p in out.iterdir())
    assert files == [f"{method}.png"] + [f"{method}_{k:02d}.safetensors" for k in range(3)]
    expected = (ganspace_directions(G, k=3, n_samples=2000, layers=[0, 1, 2, 3]) if method == "ganspace"
                else sefa_directions(G, k=3, layers=[0, 1, 2, 3]))
    for k, want in enumerate(expected):
        got = load_direction(out / f"{method}_{k:02d}.safetensors", generator=G)
        assert torch.allclose(got.essence.vector, want.essence.vector, atol=1e-6)
        assert got.info["method"] == method and got.info["component"] == k
        assert load_essence(out / f"{method}_{k:02d}.safetensors", G).vector.abs()[0, 4:].max() == 0  # layers 0-3 only
    with Image.open(out / f"{method}.png") as sheet:  # 3 components x 2 seeds rows, 5 strengths, caption strip
        assert sheet.size[0] == 5 * RES and sheet.size[1] > 6 * RES
    # an essence like any other: apply takes it
    rc = main(["apply", "-e", str(out / f"{method}_00.safetensors"), "-g", str(gen_file), "--seeds", "0",
               "--strength", "1", "-o", str(tmp_path / "applied"), "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err


def test_text_direction_computes_statistics_once_then_reuses_them(gen_file, tmp_path, capsys, monkeypatch):
    register_tiny_clip()
    stats = tmp_path / "stats.safetensors"
    out = tmp_path / "smile.safetensors"
    argv = ["directions", "text", "-g", str(gen_file), "--clip", TINY_CLIP, "--pretrained", "none", "-t", "a smiling face",
            "-s", str(stats), "-o", str(out), "--n-images", "2", "--beta", "0.01", "--device", "cpu"]
    torch.manual_seed(0)  # the random tiny CLIP: the same weights in both runs
    assert main(argv) == 0, capsys.readouterr().err
    assert stats.is_file() and out.is_file() and out.with_suffix(".png").is_file()
    first = load_essence(out).vector.clone()
    assert torch.isfinite(first).all() and first.abs().max() > 0

    import targetclip_core.methods.directions.global_statistics as gs

    measured = []
    monkeypatch.setattr(gs, "channel_deltas", lambda *a, **k: measured.append(1) or (_ for _ in ()).throw(AssertionError))
    torch.manual_seed(0)
    assert main(argv) == 0, capsys.readouterr().err  # complete statistics: nothing is measured again
    assert not measured
    assert np.allclose(load_essence(out).vector.numpy(), first.numpy(), atol=1e-6)


def test_directions_refuse_bad_output_before_work(gen_file, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc = main(["directions", "ganspace", "-g", str(gen_file), "-o", str(blocker / "sub"), "--device", "cpu"])
    assert rc == 2 and str(blocker) in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["directions", "sefa", "-g", str(gen_file), "-o", str(tmp_path), "--k", "0"])
    assert e.value.code == 2
