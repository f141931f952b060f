"""Reduced precision (devices.PRECISIONS): which dtype `auto` picks, and that bf16 keeps the results: the
reference images of the rosinality fixture, gradients to W+, and a 200-step essence against fp32."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.clip import tiny_clip
from helpers.generators import random_wplus, tiny_generator
from helpers.paths import ROSINALITY_FIXTURE

from targetclip_core import devices
from targetclip_core.errors import TargetCLIPError
from targetclip_core.generators.render import render_latents
from targetclip_core.methods.targetclip.optimize import optimize_essence


@pytest.mark.parametrize("has_bf16, expected", [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_on_cpu_follows_the_bf16_units(monkeypatch, has_bf16, expected):
    monkeypatch.setattr(devices, "cpu_has_bf16_units", lambda: has_bf16)
    assert devices.resolve_precision("auto", "cpu") == expected
    assert devices.resolve_precision("fp32", "cpu") == torch.float32
    assert devices.resolve_precision("bf16", "cpu") == torch.bfloat16


@pytest.mark.parametrize("capability, expected", [((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16), ((7, 5), torch.float16)])
def test_auto_on_cuda_follows_the_compute_capability(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert devices.resolve_precision("auto", "cuda") == expected


def test_bad_precisions_are_refused():
    with pytest.raises(TargetCLIPError, match="fp16 is not offered on the CPU"):
        devices.resolve_precision("fp16", "cpu")
    with pytest.raises(TargetCLIPError, match="precision must be one of"):
        devices.resolve_precision("int8", "cpu")


@pytest.fixture(scope="module")
def G_ros(rosinality32_ckpt):
    from targetclip_core.generators.load import load_generator

    return load_generator(rosinality32_ckpt, device="cpu")


def test_bf16_renders_the_reference_images_within_a_few_percent(G_ros, fixtures_dir):
    with np.load(fixtures_dir / f"{ROSINALITY_FIXTURE}.npz") as ref:
        wp, image = torch.from_numpy(ref["wplus"]), torch.from_numpy(ref["image_from_wplus"])
    ours = render_latents(G_ros, wp, precision="bf16")
    assert ours.dtype == torch.float32
    err = (ours - image).abs()
    # measured: 1.3% max, 1.0% mean of the image's range in bf16 (8 bits of mantissa); fp32 is below 1e-5
    assert float(err.max() / image.abs().max()) < 0.03 and float(err.mean() / image.abs().mean()) < 0.02
    assert float((render_latents(G_ros, wp) - image).abs().max() / image.abs().max()) < 1e-4


def test_bf16_gradients_point_where_fp32_ones_do():
    G = tiny_generator(32)
    target = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    grads = {}
    for precision in ("fp32", "bf16"):
        wp = random_wplus(G, 2, seed=3).requires_grad_(True)
        with devices.autocast(precision, "cpu"):
            images = G.synthesis(wp)
        (images.float() - target).square().mean().backward()
        grads[precision] = wp.grad.flatten()
    cos = torch.nn.functional.cosine_similarity(grads["fp32"], grads["bf16"], dim=0)
    assert cos > 0.99
    assert float(grads["bf16"].norm() / grads["fp32"].norm()) == pytest.approx(1.0, abs=0.05)


def _w_plus_grad(G, wp, target, precision, impl):
    G.modconv_impl = impl
    wp = wp.clone().requires_grad_(True)
    with devices.autocast(precision, "cpu"):
        images = G.synthesis(wp)
    (images.float() - target).square().mean().backward()
    return images.detach().float(), wp.grad.flatten()


def test_the_low_precision_backward_is_used_under_autocast(monkeypatch):
    from targetclip_core.generators import synthesis_grad

    calls = []
    original = synthesis_grad._FrozenSynthesisLayer.forward
    monkeypatch.setattr(synthesis_grad._FrozenSynthesisLayer, "forward",
                        staticmethod(lambda ctx, x, *a: calls.append(x.dtype) or original(ctx, x, *a)))
    G = tiny_generator(32)
    _w_plus_grad(G, random_wplus(G, 1), torch.zeros(1, 3, 32, 32), "bf16", "unfused")
    assert calls and set(calls) == {torch.bfloat16}  # every layer, in bf16: no fallback to autograd


def test_low_precision_gradients_match_autograd_under_autocast_and_float64():
    """The hand-written bf16 backward against autograd under the same autocast, and both against float64: ours
    must be as close to the exact gradient as autograd's (it keeps styles, demodulation and sums in fp32)."""
    import copy

    G = tiny_generator(32)
    wp = random_wplus(G, 2, seed=3)
    target = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    G64 = copy.deepcopy(G).double()
    img_exact, exact = _w_plus_grad(G64, wp.double(), target.double(), "fp32", "unfused-autograd")
    img_ours, ours = _w_plus_grad(G, wp, target, "bf16", "unfused")
    img_auto, auto = _w_plus_grad(G, wp, target, "bf16", "unfused-autograd")

    def cos(a, b):
        return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0))

    # measured: cos(ours, autocast's) 0.99986; 1 - cos to float64 1.5e-4 (ours) and 1.6e-4 (autocast's)
    assert cos(ours, auto) > 0.999
    assert 1 - cos(ours, exact) <= 1.5 * (1 - cos(auto, exact)) + 1e-4
    assert float(ours.norm() / exact.norm()) == pytest.approx(1.0, abs=0.02)
    def image_error(images):
        return float((images.double() - img_exact).abs().mean())

    assert image_error(img_ours) <= 1.5 * image_error(img_auto) + 1e-4  # measured 0.0077 vs 0.0083


def test_the_cached_low_precision_weights_follow_the_weights():
    """frozen_weight's bf16 copy is renewed when the weights change in place (a loaded state, an edit)."""
    from targetclip_core.generators.synthesis_grad import frozen_weight

    G = tiny_generator(32)
    conv = G.synthesis_blocks["b8"].conv1.conv
    first, squares = frozen_weight(conv, torch.bfloat16)
    assert first.dtype == torch.bfloat16 and frozen_weight(conv, torch.bfloat16)[0] is first
    torch.testing.assert_close(squares, (conv.weight * conv.weight_gain).square().sum((2, 3)))
    with torch.no_grad():
        conv.weight.mul_(2)
    renewed, renewed_squares = frozen_weight(conv, torch.bfloat16)
    torch.testing.assert_close(renewed.float(), (conv.weight * conv.weight_gain).bfloat16().float())
    torch.testing.assert_close(renewed_squares, 4 * squares)


@pytest.mark.parametrize("seed", [0, 1])
def test_a_200_step_essence_in_bf16_ends_where_fp32_does(seed):
    """Same seed, same target: the bf16 run's final loss is within 5% of the fp32 run's loss reduction (start
    minus final; measured at most 2.7% over seeds 0-3, the trajectories part in the last digits). A share of
    the final loss alone is no measure here: the tiny networks get near zero, where 0.020 vs 0.024 is 20%."""
    G, C = tiny_generator(32), tiny_clip()
    target = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(seed + 1)) * 2 - 1
    runs = {}
    for precision in ("fp32", "bf16"):
        losses = []
        optimize_essence(G, C, target, steps=200, n_sources=2, seed=seed, precision=precision,
                         callback=lambda info: losses.append(float(info.losses["total"].mean())))
        runs[precision] = (losses[0], min(losses[-20:]))
    (start, fp32), (bf16_start, bf16) = runs["fp32"], runs["bf16"]
    assert bf16_start == pytest.approx(start, rel=0.02)
    assert abs(bf16 - fp32) <= 0.05 * (start - fp32)


def test_cli_render_and_apply_take_a_precision(tmp_path, capsys):
    from targetclip_core.cli.main import main
    from targetclip_core.generators.load import save_generator

    gen = tmp_path / "g.safetensors"
    save_generator(tiny_generator(32), gen)
    assert main(["render", "-g", str(gen), "--seeds", "0-1", "-o", str(tmp_path / "bf16"), "--device", "cpu",
                 "--precision", "bf16"]) == 0
    assert len(list((tmp_path / "bf16").glob("*.png"))) == 2
    rc = main(["render", "-g", str(gen), "--seeds", "0", "-o", str(tmp_path / "h"), "--device", "cpu", "--precision", "fp16"])
    assert rc == 2 and "fp16 is not offered on the CPU" in capsys.readouterr().err


def test_compile_falls_back_to_eager_with_one_warning(monkeypatch):
    """A compiler that fails at the first call (no toolchain, an unsupported op) costs speed, not the run."""
    def broken_compile(fn, **kwargs):
        def run(*a, **k):
            raise RuntimeError("no C++ compiler found")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    calls = []

    def double(x):
        calls.append(1)
        return 2 * x

    f = devices.Compiled(double, "cpu", "the doubler")
    with pytest.warns(RuntimeWarning, match="the doubler runs uncompiled: RuntimeError: no C\\+\\+ compiler found"):
        assert torch.equal(f(torch.ones(2)), torch.full((2,), 2.0))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once: the second call goes straight to the eager function
        assert torch.equal(f(torch.ones(2)), torch.full((2,), 2.0))
    assert len(calls) == 2


@pytest.mark.parametrize("platform, device, reason", [("win32", "cpu", "Windows"), ("linux", "mps", "not used on mps")])
def test_compile_is_not_tried_where_it_cannot_run(monkeypatch, platform, device, reason):
    import sys

    monkeypatch.setattr(sys, "platform", platform)
    assert reason in devices.compile_supported(device)
    with pytest.warns(RuntimeWarning, match="runs uncompiled"):
        f = devices.Compiled(torch.neg, device, "neg")
    assert f.compiled is None and torch.equal(f(torch.ones(1)), -torch.ones(1))
    monkeypatch.setattr(sys, "platform", "linux")
    assert devices.compile_supported("cpu") is None and devices.compile_supported("cuda") is None


def test_optimize_with_compile_gives_the_uncompiled_essence(monkeypatch):
    """compile=True routes CLIP through devices.Compiled; with torch.compile as the identity (the compiler's
    contract: the same function) the run is bit for bit the uncompiled one."""
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)
    G, C = tiny_generator(32), tiny_clip()
    target = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    kw = dict(steps=3, n_sources=2, seed=0, precision="fp32")
    assert torch.equal(optimize_essence(G, C, target, compile=True, **kw).vector, optimize_essence(G, C, target, **kw).vector)


@pytest.mark.slow
def test_a_really_compiled_clip_encodes_as_the_eager_one():
    """torch.compile (Inductor, this machine's C++ compiler) on the tiny CLIP: the same codes as eager; where the
    compiler is missing the fallback gives them too (with its warning)."""
    import warnings

    C = tiny_clip()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        compiled = devices.Compiled(C.encode_image, "cpu", "CLIP")(x)
    torch.testing.assert_close(compiled, C.encode_image(x), atol=1e-5, rtol=1e-4)
