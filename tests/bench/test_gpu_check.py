"""`targetclip bench gpu` (bench/gpu_check.py) on the CPU with tiny networks: every part runs and lands in the table,
the conformance rows reproduce the fixtures' reference outputs, a failing part is a row (not the end of the run),
and the JSON report is written."""

from __future__ import annotations

import json

import pytest
from helpers.clip import TINY_CLIP, register_tiny_clip
from helpers.eg3d import tiny_eg3d_config
from helpers.encoders import TINY_STAGES
from helpers.generators import tiny_generator

from targetclip_core.bench import benchmarks, gpu_check
from targetclip_core.encoders.e4e import EncoderConfig


@pytest.fixture
def tiny_networks(monkeypatch):
    register_tiny_clip()
    monkeypatch.setattr(benchmarks, "random_generator", lambda resolution, channel_multiplier=2, seed=0: tiny_generator(resolution, seed))
    return {"clip_name": TINY_CLIP, "encoder_config": EncoderConfig("e4e", 8, 32, TINY_STAGES, 64),
            "eg3d_config": tiny_eg3d_config()}


def test_every_part_runs_and_is_tabled(tiny_networks, fixtures_dir):
    lines = []
    rows = gpu_check.gpu_readiness(device="cpu", resolutions=(16, 32), precisions=("fp32", "bf16", "fp16"), steps=1,
                                   full_steps=3, fixtures=fixtures_dir, log=lines.append, **tiny_networks)
    by = {(r.section, r.what): r for r in rows}
    for resolution in (16, 32):
        for precision in ("fp32", "bf16"):
            assert by[("essence step", f"{resolution} px, {precision}")].value > 0
        # fp16 is refused on a CPU: a row naming why, and the run goes on
        refused = by[("essence step", f"{resolution} px, fp16")]
        assert refused.value is None and "fp16 is not offered on the CPU" in refused.note
    assert any(s == "essence run" and "3 steps at 32 px" in w and r.value > 0 for (s, w), r in by.items())
    assert sum(r.section == "encoder" and r.value is not None for r in rows) == 4
    assert by[("EG3D", "one frame, fp32")].value > 0
    # the fixtures' reference outputs, recomputed through the user-facing loaders (1e-4 is the fixtures' bar)
    conformance = {w: r.value for (s, w), r in by.items() if s == "conformance"}
    for key in ("stylegan2_rosinality_32: image, cpu fp32", "e4e_encoder: output, cpu fp32",
                "arcface_irse50: embedding, cpu fp32"):
        assert conformance[key] < 1e-4, conformance
    assert 1e-4 < conformance["stylegan2_rosinality_32: image, cpu bf16"] < 0.03  # bf16: within a few percent
    assert all(r.peak_gib is None for r in rows)  # no GPU memory on a CPU
    table = [line for line in lines if line.startswith("| ")]
    assert table[0].startswith("| part | what | value") and len(table) == len(rows) + 2


def test_missing_fixtures_are_one_row_and_json_is_written(tiny_networks, tmp_path, monkeypatch, capsys):
    from targetclip_core.cli.main import main

    monkeypatch.setattr(gpu_check, "gpu_readiness", _with_tiny(gpu_check.gpu_readiness, tiny_networks))
    out = tmp_path / "gpu.json"
    rc = main(["bench", "gpu", "--device", "cpu", "--resolution", "16", "--precision", "fp32", "--steps", "1",
               "--full-steps", "2", "--fixtures", str(tmp_path / "nowhere"), "--json", str(out)])
    assert rc == 0, capsys.readouterr().err
    rows = json.loads(out.read_text())
    skipped = [r for r in rows if r["section"] == "conformance"]
    assert len(skipped) == 1 and skipped[0]["note"].startswith("skipped: no fixtures at") and skipped[0]["value"] is None
    assert {r["section"] for r in rows} >= {"essence step", "essence run", "encoder", "EG3D"}


def test_cuda_asked_for_without_one_is_our_error(monkeypatch, capsys):
    import torch

    from targetclip_core.cli.main import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["bench", "gpu"]) == 2
    assert "no CUDA device here" in capsys.readouterr().err


def _with_tiny(check, tiny):
    return lambda **kw: check(**{**tiny, **kw})
