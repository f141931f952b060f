"""The `precision` argument of the methods (inversion, essence encoder, refinement, PTI, SAT3D, the essence
optimiser) and of the CLI: bf16 results are fp32 tensors close to the fp32 run's, fp16 is refused on the CPU,
and the essence optimiser's step makes no host-device sync. Every call names its precision ("fp32" or "bf16":
bf16 runs on any CPU, emulated where it has no bf16 units), so the tests pass with or without them."""

from __future__ import annotations

import traceback
from collections import Counter

import pytest
import torch
from helpers.clip import tiny_clip
from helpers.encoders import tiny_encoder
from helpers.generators import fitting_case, rel_err, tiny_generator

from targetclip_core.encoders.inversion import Inverter
from targetclip_core.errors import TargetCLIPError
from targetclip_core.generators.stylespace import StyleLayout
from targetclip_core.methods import sat3d
from targetclip_core.methods.reconstruction import Locality, ReconstructionTerms, pivotal_tuning, refine_inversion
from targetclip_core.methods.reconstruction.refine import renderer
from targetclip_core.methods.targetclip.essence_encoder import EssenceEncoder
from targetclip_core.methods.targetclip.optimize import optimize_essence

L2 = ReconstructionTerms(l2=1.0, lpips=0.0)


def _images(n: int, size: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# --------------------------------------------------------------------------- encoders


@pytest.fixture(scope="module")
def inverter():
    enc = tiny_encoder(n_styles=8, w_dim=32, input_size=64)
    avg = torch.randn(32, generator=torch.Generator().manual_seed(4))  # one mean W (as checkpoints are read)
    return Inverter(enc, avg, add_latent_avg=True, name="tiny")


def test_invert_in_bf16_is_fp32_and_close_to_the_fp32_inversion(inverter):
    photos = _images(3, 80, seed=1)  # not at the encoder's 64: resized first
    fp32 = inverter.invert(photos, batch_size=2, precision="fp32")
    bf16 = inverter.invert(photos, batch_size=2, precision="bf16")
    assert fp32.dtype == bf16.dtype == torch.float32
    assert bf16.shape == fp32.shape == (3, 8, 32)
    # measured: rel_err 2.4e-4 (max |diff| / max |fp32|, latent_avg included); about 4x that
    assert rel_err(bf16, fp32) < 1e-3
    # the offsets from the mean alone (what the encoder computed): measured 5.5e-3; about 4x that
    assert rel_err(bf16 - inverter.latent_avg, fp32 - inverter.latent_avg) < 2e-2
    assert not torch.equal(bf16, fp32)  # bf16 did run: it rounds


def test_fp16_and_unknown_precisions_are_refused_on_the_cpu(inverter):
    with pytest.raises(TargetCLIPError, match="fp16"):
        inverter.invert(_images(1, 64, seed=2), precision="fp16")
    with pytest.raises(TargetCLIPError, match="precision"):
        inverter.invert(_images(1, 64, seed=2), precision="int8")


def test_essence_encoder_in_bf16_gives_fp32_vectors_close_to_fp32():
    enc = EssenceEncoder(Inverter(tiny_encoder(n_styles=8, w_dim=32, seed=3), None, add_latent_avg=False, name="e"))
    target = _images(1, 64, seed=5)
    fp32 = enc.encode(target, name="t", precision="fp32")
    bf16 = enc.encode(target, name="t", precision="bf16")
    assert bf16.vector.dtype == torch.float32 and bf16.vector.shape == fp32.vector.shape == (1, 8, 32)
    # measured: rel_err 4.5e-3; about 4x that
    assert rel_err(bf16.vector, fp32.vector) < 2e-2
    assert not torch.equal(bf16.vector, fp32.vector)
    batch = enc.encode(_images(2, 64, seed=6), precision="bf16")
    assert len(batch) == 2 and all(e.vector.dtype == torch.float32 for e in batch)


# --------------------------------------------------------------------------- refinement and PTI


@pytest.fixture(scope="module")
def G():
    return tiny_generator(32).requires_grad_(False)


@pytest.fixture(scope="module")
def case(G):
    return fitting_case(G)


def test_renderer_in_bf16_returns_fp32_images_close_to_fp32(G, case):
    _, guess = case
    with torch.no_grad():
        fp32 = renderer(G, None, "fp32")(guess)
        bf16 = renderer(G, None, "bf16")(guess)
    assert bf16.dtype == torch.float32 and bf16.shape == fp32.shape == (1, 3, 32, 32)
    # measured: rel_err 1.3e-2; about 4x that
    assert rel_err(bf16, fp32) < 5e-2
    with pytest.raises(TargetCLIPError, match="fp16"):
        renderer(G, None, "fp16")


def test_refine_in_bf16_lowers_the_loss_as_fp32_does(G, case):
    photo, guess = case
    fits = {p: refine_inversion(G, photo, guess, steps=10, lr=0.04, terms=L2, precision=p) for p in ("fp32", "bf16")}
    for p, fit in fits.items():
        assert fit.wplus.dtype == torch.float32 and fit.wplus.shape == guess.shape, p
        assert fit.history["total"].dtype == torch.float32 and fit.history["total"].shape == (1, 10), p
    start = float(fits["fp32"].history["total"][0, 0])
    reduction = {p: start - float(fit.history["total"].min()) for p, fit in fits.items()}
    assert reduction["fp32"] > 0.3 * start  # the fit does work in 10 steps
    # measured: the bf16 run's reduction differs from fp32's by 0.8% of it; 5% allowed
    assert abs(reduction["bf16"] - reduction["fp32"]) <= 0.05 * reduction["fp32"]
    # the first step's loss (the same W+, rendered in bf16): measured 0.32% off fp32's; 1.5% allowed
    assert float(fits["bf16"].history["total"][0, 0]) == pytest.approx(start, rel=0.015)
    # the bf16 W+ renders (in fp32) about as close to the photo as the fp32 one: measured 1.07x its MSE
    with torch.no_grad():
        err = {p: float((G.synthesis(fit.wplus) - photo).square().mean()) for p, fit in fits.items()}
    assert err["bf16"] < start and err["bf16"] <= 1.25 * err["fp32"]


def test_pti_in_bf16_tunes_fp32_weights_and_lowers_the_loss(G, case):
    photo, guess = case
    result = pivotal_tuning(G, photo, guess, steps=6, lr=3e-3, terms=L2, locality=Locality(every=0), precision="bf16")
    tuned = result.generator
    assert all(p.dtype == torch.float32 for p in tuned.parameters())
    assert all(b.dtype == torch.float32 for b in tuned.buffers() if b.is_floating_point())
    changed = [n for n, p in tuned.named_parameters() if not torch.equal(p, G.get_parameter(n))]
    assert changed and all(not n.startswith("mapping.") for n in changed)
    total = result.history["total"][0]
    assert total.dtype == torch.float32 and result.steps_run == 6
    assert float(total[-1]) < float(total[0])
    with torch.no_grad():  # the tuned network renders the photo better than the original, at the pivot
        before = float((G.synthesis(guess) - photo).square().mean())
        after = float((tuned.synthesis(guess) - photo).square().mean())
    assert after < before


# --------------------------------------------------------------------------- SAT3D


@pytest.fixture(scope="module")
def tiny_qmm():
    return sat3d.QMM(tiny_clip(), sat3d.load_descriptors("faces"))


def _pair(G):
    g = torch.Generator().manual_seed(5)
    return torch.randn(2, G.w_dim, generator=g), torch.randn(1, G.w_dim, generator=g)


def test_sat3d_transfer_in_bf16_is_close_to_fp32(G):
    layout = StyleLayout.from_generator(G)
    attrs = ["A", "B"]
    logits = torch.randn(len(attrs) + 1, layout.n_channels, generator=torch.Generator().manual_seed(9))
    m = sat3d.SAT3DMatrix(logits, attrs, layout, dict(G.identity), sat3d.generator_fingerprint(G))
    src, ref = _pair(G)
    fp32 = sat3d.transfer(G, src, ref, m, "A", delta=1.0, precision="fp32")
    bf16 = sat3d.transfer(G, src, ref, m, "A", delta=1.0, precision="bf16")
    assert bf16.dtype == torch.float32 and bf16.shape == fp32.shape == (2, 3, 32, 32)
    # measured: rel_err 7.5e-3; about 4x that
    assert rel_err(bf16, fp32) < 3e-2
    with pytest.raises(TargetCLIPError, match="fp16"):
        sat3d.transfer(G, src, ref, m, "A", precision="fp16")


def test_instant_transfer_in_bf16_returns_an_fp32_matrix(G, tiny_qmm):
    src, ref = _pair(G)
    attr = tiny_qmm.attributes[0]
    runs = {p: sat3d.instant_transfer(G, tiny_qmm, src[:1], ref, [attr], steps=3, lr=0.05, out_resolution=16,
                                      precision=p) for p in ("fp32", "bf16")}
    fp32, bf16 = runs["fp32"], runs["bf16"]
    assert bf16.logits.dtype == torch.float32 and bf16.logits.shape == fp32.logits.shape
    assert bf16.logits.shape == (len(tiny_qmm.attributes) + 1, StyleLayout.from_generator(G).n_channels)
    assert torch.isfinite(bf16.logits).all() and bf16.steps == 3
    assert all(isinstance(v, float) for v in bf16.losses["total"])
    # the losses of the first step (before any update) agree: the renders differ by bf16 rounding only
    # (measured 1.4e-3 relative; 6e-3 allowed)
    assert bf16.losses["total"][0] == pytest.approx(fp32.losses["total"][0], rel=6e-3)
    with pytest.raises(TargetCLIPError, match="fp16"):
        sat3d.instant_transfer(G, tiny_qmm, src[:1], ref, [attr], steps=1, out_resolution=16, precision="fp16")


# --------------------------------------------------------------------------- no host-device sync per step


class _SyncCounter(torch.overrides.TorchFunctionMode):
    """Counts the tensor methods that wait for the device (item, cpu, tolist, __bool__, numpy), made by the
    engine's code: PyTorch's own optimisers read their step counter (a host tensor) with .item(), not counted."""

    SYNCS = {torch.Tensor.item, torch.Tensor.cpu, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.numpy}
    NAMES = {"item", "cpu", "tolist", "__bool__", "numpy"}

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.SYNCS or getattr(func, "__name__", "") in self.NAMES:
            caller = traceback.extract_stack(limit=2)[0]  # the frame that called the method
            if "torch/optim" not in caller.filename.replace("\\", "/"):
                self.calls.append((getattr(func, "__name__", str(func)), f"{caller.filename}:{caller.lineno}"))
        return func(*args, **(kwargs or {}))


def test_optimize_essence_makes_no_sync_per_step():
    G, C = tiny_generator(32), tiny_clip()
    target = _images(1, 32, seed=3)
    counts = {}
    for steps in (3, 8):
        with _SyncCounter() as counter:
            E = optimize_essence(G, C, target, steps=steps, n_sources=2, seed=0, precision="fp32")
        assert E.steps == steps and len(E.losses["total"]) == steps
        counts[steps] = counter.calls
    assert counts[3], "the counter saw nothing: the mode did not intercept the tensor methods"
    a, b = Counter(counts[3]), Counter(counts[8])
    per_step = {where: (a[where], b[where]) for where in a | b if a[where] != b[where]}
    assert len(counts[8]) == len(counts[3]), f"syncs that grow with the steps ((name, caller): (3 steps, 8 steps)): {per_step}"


# --------------------------------------------------------------------------- CLI


BASE = {
    "invert": ["invert", "p.jpg", "--out", "o.safetensors"],
    "encode": ["encode", "t.png", "--encoder", "enc.pt", "--out", "e.safetensors"],
    "edit": ["edit", "p.jpg", "--essence", "e.safetensors", "--out", "o"],
    "sat3d-train": ["sat3d-train", "-g", "g.pt", "-o", "m.safetensors"],
    "sat3d-transfer": ["sat3d-transfer", "-g", "g.pt", "-m", "m.safetensors", "--source-seeds", "0",
                       "--reference-seed", "1", "-a", "Beard"],
    "optimize": ["optimize", "-t", "t.png", "-g", "g.pt", "-o", "e.safetensors"],
}


@pytest.mark.parametrize("command", list(BASE))
def test_cli_commands_take_a_precision(command):
    from targetclip_core.cli.main import build_parser

    p = build_parser()
    assert p.parse_args(BASE[command]).precision == ("auto" if command == "optimize" else "fp32")
    for precision in ("fp32", "bf16", "fp16", "auto"):
        assert p.parse_args([*BASE[command], "--precision", precision]).precision == precision


@pytest.mark.parametrize("command", list(BASE))
def test_cli_refuses_an_unknown_precision(command, capsys):
    from targetclip_core.cli.main import build_parser

    with pytest.raises(SystemExit) as info:
        build_parser().parse_args([*BASE[command], "--precision", "fp8"])
    assert info.value.code == 2
    assert "--precision" in capsys.readouterr().err
