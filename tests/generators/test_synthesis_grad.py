"""The hand-written backward of the synthesis layer (targetclip_core/synthesis_grad.py).

Independent expectations: autograd through the rosinality-style grouped-conv synthesis
(bench_baseline, a different formulation of the same network) and through our own layer
with trainable weights (autograd's generic backward), both in float64, where the two
computations must agree to rounding; adjointness identities for the FIR filter.
"""

from __future__ import annotations

import copy

import pytest
import torch
from helpers.generators import random_wplus, rel_err, small_generator

from targetclip_core.bench.baselines import baseline_synthesis
from targetclip_core.generators import synthesis_grad
from targetclip_core.generators.fir import depthwise_fir, depthwise_fir_adjoint


def _frozen64(G):
    return copy.deepcopy(G).double().requires_grad_(False)


def _latent_grad(render, wp, weights):
    x = wp.clone().requires_grad_(True)
    img = render(x)
    (img * weights).sum().backward()
    return img.detach(), x.grad


@pytest.mark.parametrize("resolution", [16, 32])
def test_latent_gradient_equals_autograd_through_the_grouped_conv_formulation(resolution):
    G = _frozen64(small_generator(resolution))
    G.modconv_impl = "unfused"
    wp = random_wplus(G, 3, seed=2).double()
    weights = torch.randn(3, 3, resolution, resolution, generator=torch.Generator().manual_seed(5)).double()
    img, grad = _latent_grad(G.synthesis, wp, weights)
    ref_img, ref_grad = _latent_grad(lambda x: baseline_synthesis(G, x), wp, weights)
    assert rel_err(img, ref_img) < 1e-12
    assert grad.abs().max() > 0 and rel_err(grad, ref_grad) < 1e-11


@pytest.mark.parametrize("noise_mode", ["const", "random", "none"])
def test_style_code_gradient_equals_autograd_with_clamping(noise_mode):
    # a tight conv_clamp clamps many activations, so the clamp's gradient mask is exercised
    G = _frozen64(small_generator(32, conv_clamp=0.4))
    wp = random_wplus(G, 2, seed=3).double()
    weights = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(6)).double()
    results = {}
    for impl in ("unfused", "unfused-autograd"):
        G.modconv_impl = impl
        styles = {k: v.detach().requires_grad_(True) for k, v in G.styles(wp).items()}
        torch.manual_seed(0)
        img = G.synthesis_from_styles(styles, noise_mode=noise_mode)
        (img * weights).sum().backward()
        results[impl] = img.detach(), {k: v.grad for k, v in styles.items()}
    (img, grads), (ref_img, ref_grads) = results["unfused"], results["unfused-autograd"]
    clamped = sum(float((layer_out.abs() >= 0.4).float().mean()) for layer_out in _activations(G, wp, noise_mode))
    assert clamped > 0.05, "the test must clamp a real share of activations"
    assert rel_err(img, ref_img) < 1e-12
    for name, ref in ref_grads.items():
        assert ref.abs().max() > 0, name
        assert rel_err(grads[name], ref) < 1e-10, name


def _activations(G, wp, noise_mode):
    outs = []
    hooks = [layer.register_forward_hook(lambda m, i, o: outs.append(o.detach()))
             for block in G.synthesis_blocks.values() for name, layer in block.named_children() if name.startswith("conv")]
    with torch.no_grad():
        torch.manual_seed(0)
        G.synthesis(wp, noise_mode=noise_mode)
    for h in hooks:
        h.remove()
    return outs


def test_float32_gradient_is_as_close_to_float64_as_autograds():
    G = small_generator(32).requires_grad_(False)
    G64 = _frozen64(G)
    wp = random_wplus(G, 2, seed=4)
    weights = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    G64.modconv_impl = "unfused-autograd"
    _, exact = _latent_grad(G64.synthesis, wp.double(), weights.double())
    errors = {}
    for impl in ("unfused", "unfused-autograd"):
        G.modconv_impl = impl
        errors[impl] = rel_err(_latent_grad(G.synthesis, wp, weights)[1].double(), exact)
    assert errors["unfused"] < 1e-4
    assert errors["unfused"] < 5 * errors["unfused-autograd"] + 1e-6


def test_trainable_weights_fall_back_to_autograd_and_get_gradients():
    G = small_generator(16)  # parameters require grad
    G.modconv_impl = "unfused"
    x = random_wplus(G, 2).requires_grad_(True)
    G.synthesis(x).square().mean().backward()
    conv = G.synthesis_blocks["b16"].conv0.conv
    assert conv.weight.grad is not None and conv.weight.grad.abs().max() > 0
    assert x.grad.abs().max() > 0


def test_backpropagating_the_same_graph_twice_is_a_clear_error():
    G = small_generator(16).requires_grad_(False)
    x = random_wplus(G, 1).requires_grad_(True)
    loss = G.synthesis(x).square().mean()
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="already backpropagated"):
        loss.backward()


def test_unknown_impl_is_refused():
    G = small_generator(16)
    G.modconv_impl = "winograd"
    with pytest.raises(ValueError, match="modconv_impl must be one of"):
        G.synthesis(random_wplus(G, 1))


def test_forward_without_grad_equals_the_autograd_layout():
    G = small_generator(32).requires_grad_(False)
    wp = random_wplus(G, 2, seed=9)
    with torch.no_grad():
        G.modconv_impl = "unfused"
        fast = G.synthesis(wp)
        G.modconv_impl = "unfused-autograd"
        ref = G.synthesis(wp)
    assert rel_err(fast, ref) < 1e-5


@pytest.mark.parametrize("pad", [(1, 1), (2, 1), (0, 2)])
def test_fir_adjoint_is_the_adjoint(pad):
    gen = torch.Generator().manual_seed(0)
    kernel = torch.rand(4, 4, generator=gen, dtype=torch.float64)  # asymmetric on purpose
    x = torch.randn(2, 3, 9, 9, generator=gen, dtype=torch.float64)
    y = depthwise_fir(x, kernel, pad)
    g = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    adj = depthwise_fir_adjoint(g, kernel, pad)
    assert adj.shape == x.shape
    # <F x, g> == <x, F* g>
    assert abs(float((y * g).sum() - (x * adj).sum())) < 1e-10


def test_channel_dot_in_chunks_equals_a_full_product(monkeypatch):
    monkeypatch.setattr(synthesis_grad, "_CHUNK_ELEMENTS", 50)  # several chunks, a ragged last one
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(2, 3, 13, 5, generator=gen, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    b = torch.randn(2, 3, 13, 5, generator=gen, dtype=torch.float64)
    assert torch.allclose(synthesis_grad.channel_dot(a, b), (a * b).sum((2, 3)), rtol=1e-12, atol=1e-12)


def test_autocast_uses_autograd_and_still_backpropagates():
    G = small_generator(16).requires_grad_(False)
    G.modconv_impl = "unfused"
    wp = random_wplus(G, 2, seed=1)
    _, ref = _latent_grad(G.synthesis, wp, torch.ones(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x = wp.clone().requires_grad_(True)
        G.synthesis(x).float().sum().backward()
    assert torch.isfinite(x.grad).all() and rel_err(x.grad, ref) < 0.1
