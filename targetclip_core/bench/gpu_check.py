"""`targetclip bench gpu`: the GPU readiness check. One command, a few minutes on one GPU, one table:

  essence step   seconds per optimisation step at each resolution and precision (N = 4 sources, CLIP ViT-B/32),
                 peak GPU memory of each
  essence run    a whole essence (1000 steps by default) at the largest resolution, end to end, precision auto
  encoder        one e4e inversion and one essence encoding (full-size IR-SE50), fp32 and auto
  EG3D frame     one 512 px frame of the ffhq512-128 architecture (neural rendering 128)
  conformance    the shared fixtures' reference outputs (rosinality StyleGAN2, e4e, ArcFace) recomputed on the
                 device: max relative error against the reference and against this machine's CPU

Every network has random weights (timings do not depend on them) but the conformance rows, which load the fixture
weights through the same loaders a user's files go through. A part that fails is a row with its error, not the end
of the run: the table is what a GPU is ready for. It runs on a CPU too (`--device cpu`, with small settings), which
is how the test suite checks it.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from targetclip_core.bench import benchmarks
from targetclip_core.bench.benchmarks import (
    essence_step_seconds,
    ffhq512_eg3d_config,
    machine_description,
    min_time,
    precision_label,
    sync_device,
)
from targetclip_core.devices import autocast, resolve_precision
from targetclip_core.errors import TargetCLIPError

SHARED_ENV = "TARGETCLIP_SHARED"


@dataclass
class CheckRow:
    section: str
    what: str
    value: float | None = None  # seconds, or a relative error
    unit: str = "s"
    peak_gib: float | None = None  # peak GPU memory of the row (None on a CPU)
    note: str = ""


def default_fixtures() -> Path:
    """$TARGETCLIP_SHARED/fixtures, else the `shared/fixtures` beside the repository."""
    shared = os.environ.get(SHARED_ENV, "").strip()
    root = Path(shared).expanduser() if shared else Path(__file__).resolve().parents[3] / "shared"
    return root / "fixtures"


def gpu_readiness(device="cuda", resolutions=(256, 1024), precisions=("fp32", "bf16", "fp16"), steps: int = 3,
                  full_steps: int = 1000, clip_name: str = "ViT-B-32", fixtures: Path | None = None,
                  encoder_config=None, eg3d_config=None, log: Callable[[str], None] = print) -> list[CheckRow]:
    """Run every part of the check on `device`; returns the rows (also logged as they come, then as a table).
    encoder_config / eg3d_config replace the full-size architectures (the tests use tiny ones)."""
    from targetclip_core.encoders.clip import load_clip

    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TargetCLIPError("no CUDA device here: run `targetclip bench gpu` on a machine with one, or pass --device cpu")
    log(f"GPU readiness check on {device}: {machine_description(device)}")
    rows: list[CheckRow] = []
    C = _attempt(rows, "setup", f"CLIP {clip_name}", lambda: load_clip(clip_name, None, device=device), log)
    target = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(3)).to(device) * 2 - 1
    for resolution in resolutions:
        G = benchmarks.random_generator(resolution).to(device)
        from targetclip_core.methods.targetclip.optimize import sample_sources

        sources = sample_sources(G, 4, 0.7, seed=0)
        for precision in precisions:
            what = f"{resolution} px, {precision_label(precision, device)}"
            if C is not None:
                _measured(rows, "essence step", what, device, log,
                          lambda: essence_step_seconds(G, C, target, sources, steps, precision)[0])
        if resolution == max(resolutions) and C is not None:
            _measured(rows, "essence run", f"{full_steps} steps at {resolution} px, {precision_label('auto', device)}",
                      device, log, lambda: _essence_run(G, C, target, sources, full_steps))
    _encoder_rows(rows, device, encoder_config, log)
    _eg3d_row(rows, device, eg3d_config, log)
    _conformance_rows(rows, device, Path(fixtures) if fixtures else default_fixtures(), log)
    log("")
    for line in format_table(rows):
        log(line)
    return rows


def format_table(rows: list[CheckRow]) -> list[str]:
    """The rows as a markdown table."""
    lines = ["| part | what | value | peak GPU memory | note |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        value = ("skipped" if r.note.startswith("skipped") else "failed") if r.value is None else (f"{r.value:.3g} s" if r.unit == "s" else f"{r.value:.2e}")
        peak = "" if r.peak_gib is None else f"{r.peak_gib:.2f} GiB"
        lines.append(f"| {r.section} | {r.what} | {value} | {peak} | {r.note} |")
    return lines


def rows_as_dicts(rows: list[CheckRow]) -> list[dict]:
    return [asdict(r) for r in rows]


# --------------------------------------------------------------------------- the parts


def _attempt(rows, section, what, fn, log):
    """fn(), or None with a failed row naming the error (the check goes on)."""
    try:
        return fn()
    except Exception as e:  # a readiness check reports what fails instead of stopping at it
        rows.append(CheckRow(section, what, None, note=f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"))
        log(f"{section:<14}{what:<44}failed: {rows[-1].note}")
        return None


def _measured(rows, section, what, device, log, fn, unit="s", note=""):
    """Run fn (returning seconds or an error figure) as one row with the device's peak memory."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    value = _attempt(rows, section, what, fn, log)
    if value is None:
        return
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    rows.append(CheckRow(section, what, float(value), unit, peak, note))
    shown = f"{value:.3f} s" if unit == "s" else f"{value:.2e}"
    log(f"{section:<14}{what:<44}{shown}" + (f"   peak {peak:.2f} GiB" if peak is not None else ""))


def _essence_run(G, C, target, sources, steps) -> float:
    from targetclip_core.methods.targetclip.optimize import optimize_essence

    sync_device(G.device)
    start = time.perf_counter()
    optimize_essence(G, C, target, steps=steps, sources=sources, learn_coefficients=True)
    sync_device(G.device)
    return time.perf_counter() - start


def _encoder_rows(rows, device, config, log) -> None:
    from targetclip_core.encoders.e4e import EncoderConfig, StyleEncoder
    from targetclip_core.encoders.inversion import Inverter
    from targetclip_core.methods.targetclip.essence_encoder import EssenceEncoder

    torch.manual_seed(0)
    config = config or EncoderConfig()
    inverter = Inverter(StyleEncoder(config).eval(), torch.zeros(config.w_dim), add_latent_avg=True).to(device)
    encoder = EssenceEncoder(Inverter(StyleEncoder(config).eval(), None, add_latent_avg=False)).to(device)
    photo = torch.rand(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(1)).to(device) * 2 - 1
    for precision in ("fp32", "auto"):
        label = precision_label(precision, device)
        _measured(rows, "encoder", f"e4e inversion, 1 photo, {label}", device, log,
                  lambda: min_time(lambda: inverter.invert(photo, precision=precision), 2, device))
        _measured(rows, "encoder", f"essence encoding, 1 target, {label}", device, log,
                  lambda: min_time(lambda: encoder.encode(photo, precision=precision), 2, device))


def _eg3d_row(rows, device, config, log) -> None:
    from targetclip_core.generators.eg3d import EG3DGenerator

    def frame_seconds():
        torch.manual_seed(0)
        G = EG3DGenerator(config or ffhq512_eg3d_config()).eval().requires_grad_(False).to(device)
        ws = G.to_wplus(G.mapping(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(0)).to(device)))
        camera = G.camera(yaw=0.0, pitch=0.0)
        with torch.no_grad():
            return min_time(lambda: G.render(ws, camera, G.neural_rendering_resolution), 2, device)

    _measured(rows, "EG3D", "one frame, fp32", device, log, frame_seconds)


def _conformance_rows(rows, device, fixtures: Path, log) -> None:
    if not (fixtures / "fixture_weights.py").is_file():
        rows.append(CheckRow("conformance", "shared fixtures", None, note=f"skipped: no fixtures at {fixtures} "
                             f"(set {SHARED_ENV} to the folder holding fixtures/)"))
        log(f"conformance   skipped: no fixtures at {fixtures}")
        return
    weights = load_fixture_weights_module(fixtures)
    with tempfile.TemporaryDirectory() as tmp:
        for name, check in (("stylegan2_rosinality_32", _rosinality_errors), ("e4e_encoder", _e4e_errors),
                            ("arcface_irse50", _arcface_errors)):
            errors = _attempt(rows, "conformance", name, lambda: check(fixtures, weights, Path(tmp), device), log)
            for what, value in (errors or {}).items():
                rows.append(CheckRow("conformance", f"{name}: {what}", value, "rel", note="max |ours - ref| / max |ref|"))
                log(f"conformance   {name + ': ' + what:<44}{value:.2e}")


def load_fixture_weights_module(fixtures: Path):
    """Import the shared fixtures' `fixture_weights.py` by path (it is not a package; the project's own file)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("targetclip_fixture_weights", fixtures / "fixture_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fixture_state_dict(fixtures: Path, name: str, with_constants: bool = True, weights=None) -> dict:
    """The reference state dict of fixture `name`: the drawn tensors (+ the exact constants, FIR kernels and the
    like, a real file holds). `weights`: the module of load_fixture_weights_module, to import it once."""
    import json

    manifest = fixtures / f"{name}.json"
    state = (weights or load_fixture_weights_module(fixtures)).state_dict(str(manifest))
    if with_constants:
        for key, value in json.loads(manifest.read_text(encoding="utf-8")).get("constants", {}).items():
            state[key] = torch.tensor(value, dtype=torch.float32)
    return state


def _places(device) -> list:
    """Where the conformance rows compute: this machine's CPU, and the device when it is another."""
    return ["cpu"] if torch.device(device).type == "cpu" else ["cpu", device]


def _reference(fixtures: Path, name: str, *keys: str) -> list:
    with np.load(fixtures / f"{name}.npz") as ref:
        return [ref[k] for k in keys]


def _rel(ours: torch.Tensor, ref) -> float:
    ref = torch.as_tensor(np.asarray(ref)).float()
    return float((ours.detach().float().cpu() - ref).abs().max() / ref.abs().max())


def _rosinality_errors(fixtures, weights, tmp: Path, device) -> dict:
    from targetclip_core.generators.load import load_generator

    path = tmp / "stylegan2-32.pt"
    torch.save({"g_ema": fixture_state_dict(fixtures, "stylegan2_rosinality_32", weights=weights)}, path)
    wp, image = _reference(fixtures, "stylegan2_rosinality_32", "wplus", "image_from_wplus")
    wp = torch.from_numpy(wp)
    errors = {}
    with torch.no_grad():
        for where in _places(device):
            G = load_generator(path, device=where)
            errors[f"image, {torch.device(where).type} fp32"] = _rel(G.synthesis(wp.to(G.device)), image)
            for precision in ("bf16", "fp16"):
                try:
                    resolve_precision(precision, G.device)
                except TargetCLIPError:  # fp16 on a CPU
                    continue
                with autocast(precision, G.device):
                    errors[f"image, {G.device.type} {precision}"] = _rel(G.synthesis(wp.to(G.device)), image)
    return errors


def _e4e_errors(fixtures, weights, tmp: Path, device) -> dict:
    from targetclip_core.encoders.inversion import load_inverter

    path = tmp / "e4e_ffhq_encode.pt"
    state = {f"encoder.{k}": v for k, v in fixture_state_dict(fixtures, "e4e_encoder", weights=weights).items()}
    torch.save({"state_dict": state, "latent_avg": torch.zeros(18, 512),
                "opts": {"encoder_type": "Encoder4Editing", "start_from_latent_avg": True, "stylegan_size": 1024}}, path)
    del state
    x, out = _reference(fixtures, "e4e_encoder", "input", "output")
    x = torch.from_numpy(x)
    errors = {}
    for where in _places(device):
        inverter = load_inverter(path, device=where)
        errors[f"output, {torch.device(where).type} fp32"] = _rel(inverter.invert(x), out)
        del inverter
    path.unlink()
    return errors


def _arcface_errors(fixtures, weights, tmp: Path, device) -> dict:
    from targetclip_core.encoders.arcface import load_arcface

    path = tmp / "model_ir_se50.pth"
    torch.save(fixture_state_dict(fixtures, "arcface_irse50", weights=weights), path)
    x, out = _reference(fixtures, "arcface_irse50", "input", "output")
    x = torch.from_numpy(x)
    errors = {}
    with torch.no_grad():
        for where in _places(device):
            model = load_arcface(path, device=where)
            errors[f"embedding, {torch.device(where).type} fp32"] = _rel(model(x.to(where)), out)
    return errors
