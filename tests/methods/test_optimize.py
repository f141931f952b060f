"""TargetCLIP essence optimisation (targetclip_core.optimize): the paper's losses against hand
computations, the official learning-rate schedule, and optimize_essence end to end on a tiny
random StyleGAN2 and the tiny random CLIP."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers.essence_math import hand_consistency, hand_l2, hand_similarity, hand_total, normalised
from helpers.clip import tiny_clip
from helpers.generators import tiny_generator, truncated_sources
from PIL import Image

from targetclip_core.errors import LatentError, TargetCLIPError
from targetclip_core.methods.targetclip.essence import Essence
from targetclip_core.methods.targetclip.optimize import (
    LOSS_TERMS,
    StepInfo,
    consistency_loss,
    essence_losses,
    official_lr,
    optimize_essence,
)


@pytest.fixture(scope="module")
def G():
    return tiny_generator(32)


@pytest.fixture(scope="module")
def C():
    return tiny_clip()


def rand_image(h=40, w=48, seed=5, b=1):
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def rand_codes(*shape, seed=0):
    return normalised(torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))


# --------------------------------------------------------------------------- losses by hand


def test_losses_on_a_hand_worked_example():
    # t = e1; f_1 = e1, f_2 = e2; sources e_1 = e2, e_2 = e1 -> deltas (1,-1) and (-1,1): opposite
    t = torch.tensor([[1.0, 0.0]])
    f = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    e = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    b = torch.tensor([[[3.0, 0.0], [0.0, 4.0]]])  # Frobenius norm 5
    out = essence_losses(t, e, f, b, (1.0, 0.5, 0.003))
    assert out["similarity"].tolist() == pytest.approx([0.5])  # (1 - 1 + 1 - 0) / 2
    assert out["consistency"].tolist() == pytest.approx([2.0])  # 1 - cos = 2 for both ordered pairs
    assert out["l2"].tolist() == pytest.approx([5.0])
    assert out["total"].tolist() == pytest.approx([0.5 + 0.5 * 2.0 + 0.003 * 5.0])


@pytest.mark.parametrize("n", [2, 3, 4])
@pytest.mark.parametrize("lambdas", [(1.0, 0.5, 0.003), (0.7, 2.0, 0.1)])
def test_essence_losses_match_hand_computation(n, lambdas):
    T, D = 2, 6
    t = rand_codes(T, D, seed=1)
    e = rand_codes(n, D, seed=2)
    f = rand_codes(T, n, D, seed=3)
    b = torch.randn(T, 3, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    out = essence_losses(t, e, f, b, lambdas)
    assert set(out) == set(LOSS_TERMS)
    for k in LOSS_TERMS:
        assert out[k].shape == (T,)
    for i in range(T):
        ref = hand_total(t[i], f[i], e, b[i], lambdas)
        for k in LOSS_TERMS:
            assert float(out[k][i]) == pytest.approx(ref[k], abs=1e-9), (k, i)


def test_consistency_n2_is_one_minus_cosine():
    d = torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, 1.0]], dtype=torch.float64)
    cos = (1 * 0 + 2 * 1 + 0 * 1) / (math.sqrt(5) * math.sqrt(2))
    assert float(consistency_loss(d)) == pytest.approx(1 - cos, abs=1e-12)


def test_consistency_identical_opposite_and_mixed_deltas():
    d = torch.tensor([0.3, -1.0, 2.0, 0.5])
    assert float(consistency_loss(torch.stack([d, d, d]))) == pytest.approx(0.0, abs=1e-6)
    assert float(consistency_loss(torch.stack([d, 2.5 * d]))) == pytest.approx(0.0, abs=1e-6)  # scale-free
    assert float(consistency_loss(torch.stack([d, -d]))) == pytest.approx(2.0, abs=1e-6)
    # d, d, -d: pairs (1,2) 0, (1,3) 2, (2,3) 2, each counted twice over 6 ordered pairs
    assert float(consistency_loss(torch.stack([d, d, -d]))) == pytest.approx(4 / 3, abs=1e-6)
    # orthogonal deltas: 1
    assert float(consistency_loss(torch.eye(3))) == pytest.approx(1.0, abs=1e-6)


def test_consistency_batched_and_single_source():
    d = torch.randn(2, 3, 3, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = consistency_loss(d)
    assert out.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            assert float(out[i, j]) == pytest.approx(hand_consistency(d[i, j], torch.zeros_like(d[i, j])), abs=1e-9)
    assert consistency_loss(torch.randn(4, 1, 5)).tolist() == [0.0] * 4  # one source: no pairs


# --------------------------------------------------------------------------- learning-rate schedule


def test_official_lr_schedule_hand_values():
    steps, lr = 1000, 0.2
    assert official_lr(0, steps, lr) == 0.0
    assert official_lr(2, steps, lr) == pytest.approx(0.2 * 0.002 / 0.005)  # linear warm-up
    for s in (5, 6, 100, 200, 250):  # flat from 0.5% to 25%
        assert official_lr(s, steps, lr) == pytest.approx(0.2, abs=1e-12), s
    assert official_lr(625, steps, lr) == pytest.approx(0.2 * (0.5 - 0.5 * math.cos(math.pi * 0.5)))
    assert official_lr(625, steps, lr) == pytest.approx(0.1)
    assert official_lr(400, steps, lr) == pytest.approx(0.2 * (0.5 - 0.5 * math.cos(math.pi * 0.6 / 0.75)))
    assert 0 < official_lr(999, steps, lr) < 1e-5
    ramp_down = [official_lr(s, steps, lr) for s in range(250, 1000)]
    assert all(a >= b for a, b in zip(ramp_down, ramp_down[1:]))


# --------------------------------------------------------------------------- optimize_essence end to end


def test_loss_falls_and_every_term_is_reported(G, C):
    steps = 30
    E = optimize_essence(G, C, rand_image(), steps=steps, lr=0.2, n_sources=3, init="random", seed=0)
    assert isinstance(E, Essence)
    assert set(E.losses) == set(LOSS_TERMS)
    assert all(len(v) == steps for v in E.losses.values())
    assert E.steps == steps
    total = E.losses["total"]
    assert all(math.isfinite(x) for v in E.losses.values() for x in v)
    assert min(total) < 0.8 * total[0]
    assert total[-1] < 0.85 * total[0]
    for s in range(steps):  # the total is the weighted sum of the reported terms
        expected = E.losses["similarity"][s] + 0.5 * E.losses["consistency"][s] + 0.003 * E.losses["l2"][s]
        assert total[s] == pytest.approx(expected, abs=1e-5)
    assert E.vector.shape == (1, G.n_latent, G.w_dim)
    assert E.generator == G.identity and E.clip == C.identity
    assert E.thumbnail.shape == (64, 64, 3) and E.thumbnail.dtype == torch.uint8
    assert E.source == "optimized" and E.coefficients is None


def test_deterministic_with_a_seed(G, C):
    kw = dict(steps=6, lr=0.2, n_sources=2, init="random")
    a = optimize_essence(G, C, rand_image(), seed=3, **kw)
    b = optimize_essence(G, C, rand_image(), seed=3, **kw)
    assert torch.equal(a.vector, b.vector)
    assert a.losses == b.losses
    c = optimize_essence(G, C, rand_image(), seed=4, **kw)
    assert not torch.equal(a.vector, c.vector)


def test_keeps_the_best_vector_and_its_loss_is_the_minimum(G, C):
    sources = truncated_sources(G, 3, seed=11)
    target = rand_image()
    seen = []  # b after each step: the b whose loss the next step reports
    E = optimize_essence(G, C, target, steps=20, lr=0.5, sources=sources, init="random", seed=0, precision="fp32",
                         callback=lambda info: seen.append(info.essence_vectors[0]))
    total = E.losses["total"]
    best = int(np.argmin(total))
    assert best != len(total) - 1, "this setting should overshoot, or the test checks nothing"
    assert 0 < best  # (step 0 renders the initial b)
    assert torch.equal(E.vector[0], seen[best - 1])

    # recompute the returned b's loss independently: render, encode, the paper's formula by hand
    b = E.vector
    with torch.no_grad():
        t = C.encode_image(target)[0]
        e = C.encode_image(G.synthesis(sources))
        f = C.encode_image(G.synthesis(sources + b))
    ref = hand_total(t, f, e, b)
    assert ref["total"] == pytest.approx(min(total), abs=2e-4)
    assert ref["total"] < total[-1] - 1e-3
    for k in ("similarity", "consistency", "l2"):
        assert ref[k] == pytest.approx(E.losses[k][best], abs=2e-4)


def test_several_targets_in_one_batch_equal_each_alone(G, C):
    sources = truncated_sources(G, 3, seed=12)
    init = 0.3 * torch.randn(1, G.n_latent, G.w_dim, generator=torch.Generator().manual_seed(13))
    targets = [rand_image(seed=21), rand_image(seed=22)]
    kw = dict(steps=8, lr=0.1, sources=sources, init=init, seed=0, precision="fp32")  # bf16 kernels differ by batch
    together = optimize_essence(G, C, torch.cat(targets), name="pair", **kw)
    assert isinstance(together, list) and len(together) == 2
    assert [e.name for e in together] == ["pair_0", "pair_1"]
    for target, joint in zip(targets, together):
        alone = optimize_essence(G, C, target, **kw)
        assert torch.allclose(joint.vector, alone.vector, atol=1e-3), float((joint.vector - alone.vector).abs().max())
        for k in LOSS_TERMS:
            assert joint.losses[k] == pytest.approx(alone.losses[k], abs=2e-4)


def test_target_list_path_and_pil_inputs(G, C, tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, size=(36, 44, 4), dtype=np.uint8)
    arr[..., 3] = 255  # opaque: the RGB channels are the image (compositing has its own tests in tests/io)
    pil = Image.fromarray(arr, "RGBA")
    by_hand = torch.from_numpy(arr[..., :3].astype(np.float32)).permute(2, 0, 1)[None] / 127.5 - 1
    path = tmp_path / "target.png"
    pil.save(path)
    # (a non-zero init: at b = 0 the consistency term is 0/0 and its first gradient is float noise,
    # which differs between batch sizes)
    init = 0.3 * torch.randn(1, G.n_latent, G.w_dim, generator=torch.Generator().manual_seed(3))
    kw = dict(steps=3, lr=0.1, n_sources=2, init=init, seed=0)
    ref = optimize_essence(G, C, by_hand, **kw)
    for target in (pil, path, str(path), by_hand[0]):
        E = optimize_essence(G, C, target, **kw)
        assert torch.allclose(E.vector, ref.vector, atol=1e-6)
    both = optimize_essence(G, C, [by_hand, pil], **kw)
    assert len(both) == 2 and torch.allclose(both[1].vector, ref.vector, atol=2e-4)


def test_sources_given_as_wplus_and_as_w(G, C):
    w = truncated_sources(G, 3, seed=14)[:, 0]  # [3, w_dim]
    wp = w[:, None].repeat(1, G.n_latent, 1)
    wp = wp + 0.05 * torch.randn(wp.shape, generator=torch.Generator().manual_seed(1))  # genuinely W+
    shots = []
    optimize_essence(G, C, rand_image(), steps=1, sources=wp, init="zeros", precision="fp32",
                     callback=lambda info: shots.append(info.images))
    assert shots[0].shape == (1, 3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(shots[0][0], G.synthesis(wp), atol=1e-5)  # b = 0: the sources themselves
    a = optimize_essence(G, C, rand_image(), steps=3, lr=0.1, sources=w, init="zeros")
    b = optimize_essence(G, C, rand_image(), steps=3, lr=0.1, sources=w[:, None].repeat(1, G.n_latent, 1), init="zeros")
    assert torch.equal(a.vector, b.vector)
    with pytest.raises(LatentError):
        optimize_essence(G, C, rand_image(), steps=1, sources=torch.zeros(3, G.n_latent + 1, G.w_dim))


def test_init_zeros_tensor_and_essence(G, C):
    kw = dict(steps=2, lr=0.0, n_sources=2)
    assert torch.equal(optimize_essence(G, C, rand_image(), init="zeros", **kw).vector, torch.zeros(1, G.n_latent, G.w_dim))
    v = torch.randn(G.n_latent, G.w_dim, generator=torch.Generator().manual_seed(2))
    assert torch.equal(optimize_essence(G, C, rand_image(), init=v, **kw).vector[0], v)  # [n, w]
    assert torch.equal(optimize_essence(G, C, rand_image(), init=v[None], **kw).vector[0], v)  # [1, n, w]
    two = optimize_essence(G, C, rand_image(b=2), init=torch.stack([v, -v]), **kw)  # [T, n, w]
    assert torch.equal(two[0].vector[0], v) and torch.equal(two[1].vector[0], -v)
    ess = Essence(vector=2 * v[None], generator=G.identity, name="prior")
    E = optimize_essence(G, C, rand_image(), init=ess, **kw)
    assert torch.equal(E.vector, 2 * v[None])
    # l2 of the first step is the norm of the initial b
    assert E.losses["l2"][0] == pytest.approx(hand_l2(2 * v), rel=1e-5)
    # and an init actually seeds the optimisation (non-zero lr moves away from it)
    moved = optimize_essence(G, C, rand_image(), init=ess, steps=3, lr=0.1, n_sources=2)
    assert not torch.equal(moved.vector, ess.vector)


def test_bad_init_is_refused(G, C):
    foreign = Essence(vector=torch.zeros(1, 18, 512), generator={"arch": "stylegan2", "resolution": 1024, "n_latent": 18, "w_dim": 512})
    with pytest.raises(LatentError, match="1024px"):
        optimize_essence(G, C, rand_image(), steps=1, init=foreign)
    with pytest.raises(LatentError):
        optimize_essence(G, C, rand_image(), steps=1, init=torch.zeros(1, G.n_latent, G.w_dim + 1))
    with pytest.raises(LatentError):
        optimize_essence(G, C, rand_image(), steps=1, init=torch.zeros(3, G.n_latent, G.w_dim))  # 3 inits, 1 target
    with pytest.raises(TargetCLIPError, match="init must be"):
        optimize_essence(G, C, rand_image(), steps=1, init="mean")


def test_learn_coefficients(G, C):
    n = 3
    E = optimize_essence(G, C, rand_image(), steps=10, lr=0.2, n_sources=n, init="random", learn_coefficients=True)
    assert E.coefficients is not None and E.coefficients.shape == (n,)
    assert torch.isfinite(E.coefficients).all()
    assert not torch.allclose(E.coefficients, torch.ones(n))  # they were learned
    assert E.strength == pytest.approx(float(E.coefficients.mean()), rel=1e-6)
    two = optimize_essence(G, C, rand_image(b=2), steps=2, lr=0.2, n_sources=n, learn_coefficients=True)
    assert [e.coefficients.shape for e in two] == [(n,), (n,)]


def test_callback_step_info_and_stop(G, C):
    infos = []

    def cb(info):
        infos.append(info)
        return info.step == 2

    res = optimize_essence(G, C, rand_image(b=2), steps=10, lr=0.2, n_sources=2, init="zeros", callback=cb)
    assert [i.step for i in infos] == [0, 1, 2]
    assert all(isinstance(i, StepInfo) and i.steps == 10 for i in infos)
    assert all(i.images.shape == (2, 2, 3, 32, 32) for i in infos)
    assert all(i.essence_vectors.shape == (2, G.n_latent, G.w_dim) for i in infos)
    assert all(i.losses[k].shape == (2,) for i in infos for k in LOSS_TERMS)
    assert infos[0].lr == 0.0 and infos[1].lr == pytest.approx(0.2)  # the schedule: warm-up then flat
    for e in res:
        assert e.steps == 3 and all(len(v) == 3 for v in e.losses.values())
    # the losses a callback sees are the ones recorded
    assert [float(i.losses["total"][1]) for i in infos] == pytest.approx(res[1].losses["total"])


def test_callback_vectors_are_snapshots(G, C):
    """A callback keeping info.essence_vectors must get the b of that step, not a view that the
    optimiser keeps updating in place (regression: every kept entry used to equal the final b)."""
    kept = []
    init = torch.zeros(1, G.n_latent, G.w_dim)
    optimize_essence(G, C, rand_image(), steps=5, lr=0.2, n_sources=2, init=init,
                     callback=lambda info: kept.append(info.essence_vectors))
    assert torch.equal(kept[0], init)  # step 0 has lr 0: b unchanged
    for a, b in zip(kept[1:], kept[2:]):
        assert not torch.equal(a, b)
    # and scribbling on it does not disturb the run
    def vandal(info):
        info.essence_vectors.fill_(1e3)
    a = optimize_essence(G, C, rand_image(), steps=4, lr=0.2, n_sources=2, init="zeros", callback=vandal)
    b = optimize_essence(G, C, rand_image(), steps=4, lr=0.2, n_sources=2, init="zeros")
    assert torch.equal(a.vector, b.vector)


def test_early_stop_on_a_plateau(G, C):
    E = optimize_essence(G, C, rand_image(), steps=40, lr=0.0, n_sources=2, early_stop_patience=3)
    assert E.steps == 4  # step 0 sets the best, steps 1-3 do not improve it
    assert len(E.losses["total"]) == 4
    assert len(set(E.losses["total"])) == 1
    full = optimize_essence(G, C, rand_image(), steps=7, lr=0.0, n_sources=2)
    assert full.steps == 7


def _record_out_resolutions(monkeypatch, G):
    seen = []
    synth = G.synthesis

    def spy(wp, *args, **kwargs):
        seen.append(kwargs.get("out_resolution", args[1] if len(args) > 1 else None))
        return synth(wp, *args, **kwargs)

    monkeypatch.setattr(G, "synthesis", spy)
    return seen


def test_out_resolution_auto_picks_the_smallest_at_least_clip_size(C, monkeypatch):
    G64 = tiny_generator(64)
    seen = _record_out_resolutions(monkeypatch, G64)
    shots = []
    optimize_essence(G64, C, rand_image(), steps=2, n_sources=2, callback=lambda i: shots.append(i.images))
    assert seen and set(seen) == {32}  # CLIP's input is 32 px: no need to render 64
    assert shots[0].shape[-2:] == (32, 32)
    seen.clear()
    optimize_essence(G64, C, rand_image(), steps=1, n_sources=2, out_resolution=16)
    assert set(seen) == {16}
    seen.clear()
    optimize_essence(G64, C, rand_image(), steps=1, n_sources=2, out_resolution=None)
    assert set(seen) == {32}
    with pytest.raises(TargetCLIPError, match="out_resolution"):
        optimize_essence(G64, C, rand_image(), steps=1, n_sources=2, out_resolution=24)


def test_out_resolution_auto_on_a_generator_smaller_than_clip(C, monkeypatch):
    G16 = tiny_generator(16)
    seen = _record_out_resolutions(monkeypatch, G16)
    optimize_essence(G16, C, rand_image(), steps=1, n_sources=2)
    assert set(seen) == {16}


@pytest.mark.parametrize("target,why", [
    (torch.full((1, 3, 32, 32), float("nan")), "NaN"),
    (torch.zeros(1, 4, 32, 32), "3, H, W"),
    (torch.zeros(2, 32, 32), "3, H, W"),
    (torch.zeros(32, 32), "3, H, W"),
    (torch.zeros(1, 1, 3, 32, 32), "3, H, W"),
], ids=["nan", "4-channels", "2-channels", "2d", "5d"])
def test_bad_target_is_a_targetclip_error(G, C, target, why):
    with pytest.raises(TargetCLIPError, match=why):
        optimize_essence(G, C, target, steps=1)


def test_inf_target_and_zero_steps_are_refused(G, C):
    t = torch.zeros(1, 3, 32, 32)
    t[0, 1, 2, 3] = float("inf")
    with pytest.raises(TargetCLIPError):
        optimize_essence(G, C, t, steps=1)
    with pytest.raises(TargetCLIPError, match="steps"):
        optimize_essence(G, C, rand_image(), steps=0)


# --------------------------------------------------------------------------- a planted solution


def planted_solution_metrics(seed: int) -> dict:
    """Plant b_true (norm 10) in a target G(w_t + b_true), optimise from zeros, measure by hand."""
    G = tiny_generator(32, seed=seed)
    C = tiny_clip(seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    b_true = torch.randn(1, G.n_latent, G.w_dim, generator=g)
    b_true *= 10.0 / b_true.norm()
    w_t = truncated_sources(G, 1, seed=seed + 200)
    sources = truncated_sources(G, 4, seed=seed + 300)
    with torch.no_grad():
        target = G.synthesis(w_t + b_true)
    E = optimize_essence(G, C, target, steps=80, lr=0.1, init="zeros", sources=sources, seed=seed)
    b = E.vector
    random_dir = torch.randn(b.shape, generator=g)
    random_dir *= b.norm() / random_dir.norm()
    with torch.no_grad():
        t = C.encode_image(target)[0]
        e = C.encode_image(G.synthesis(sources))
        f = C.encode_image(G.synthesis(sources + b))
        fr = C.encode_image(G.synthesis(sources + random_dir))
    return {
        "sim_edit": 1 - hand_similarity(t, f),
        "sim_source": 1 - hand_similarity(t, e),
        "sim_random": 1 - hand_similarity(t, fr),
        "cons_b": hand_consistency(f, e),
        "cons_random": hand_consistency(fr, e),
    }


def test_planted_solution_is_found():
    """Target = G(w_t + b_true): the found b must move the sources toward the target in CLIP
    space, and consistently (far more than a random direction of the same norm).

    While writing it, seeds 0-11 all passed these checks (worst cases: distance ratio 0.84 at
    seed 2, consistency 0.023 vs 0.27 for a random direction at seed 4); the test pins seed 3."""
    m = planted_solution_metrics(seed=3)
    assert m["sim_edit"] > m["sim_source"], m
    assert (1 - m["sim_edit"]) < 0.9 * (1 - m["sim_source"]), m  # a real step toward the target
    assert m["cons_b"] < 0.5 * m["cons_random"], m
    assert m["cons_b"] < 0.1, m


def test_consistency_ignores_directionless_deltas():
    # b = 0 makes every delta float noise between two renders of one image: no direction,
    # so no loss, instead of 1 - cos of noise steering the first step
    noise = torch.randn(4, 8) * 1e-7
    assert consistency_loss(noise).item() == 0.0
    d = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1e-9, 0.0]])
    # only the pair (0, 1) and (1, 0) count: 1 - cos = 1 each, over the 6 ordered pairs
    assert consistency_loss(d).item() == pytest.approx(2 / 6)


def test_zero_init_gives_the_same_first_losses_alone_and_batched(G, C):
    targets = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5)) * 2 - 1
    alone = optimize_essence(G, C, targets[:1], steps=1, init="zeros", seed=1)
    batched = optimize_essence(G, C, targets, steps=1, init="zeros", seed=1)
    assert alone.losses["consistency"][0] == 0.0
    assert batched[0].losses["consistency"][0] == 0.0


@pytest.mark.parametrize("context", ["no_grad", "inference_mode"])
def test_optimisation_works_inside_no_grad_contexts(context):
    # ComfyUI runs every node under inference_mode; models loaded there hold inference tensors
    ctx = torch.no_grad if context == "no_grad" else torch.inference_mode
    with ctx():
        G, C = tiny_generator(), tiny_clip()
        target = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
        E = optimize_essence(G, C, target, steps=4, n_sources=2, lr=0.1)
    hist = E.losses["total"]
    assert len(hist) == 4 and hist[-1] < hist[0]
