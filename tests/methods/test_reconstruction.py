"""After the encoder: W+ refinement and pivotal tuning (methods.reconstruction) on tiny networks.

The photo is rendered from a known latent; the "encoder's" latent is that latent plus a fixed error, as
an imperfect e4e would give. Expectations are orders and factors of the reconstruction error measured by
hand (pixel MSE), the untouched original network, bit-exact files, and clear refusals."""

from __future__ import annotations

import pytest
import torch
from helpers.eg3d import tiny_eg3d
from helpers.generators import fitting_case, random_wplus, tiny_generator

from targetclip_core.errors import CheckpointError, TargetCLIPError
from targetclip_core.generators.fingerprint import generator_fingerprint, lineage_fingerprints
from targetclip_core.generators.load import load_generator, save_generator
from targetclip_core.methods.reconstruction import (
    Locality,
    ReconstructionTerms,
    load_tuned_generator,
    pivotal_tuning,
    reconstruct_photo,
    refine_inversion,
    save_tuned_generator,
)

L2 = ReconstructionTerms(l2=1.0, lpips=0.0)


def _mse(a, b) -> float:
    return float((a.clamp(-1, 1) - b.clamp(-1, 1)).square().mean())


@pytest.fixture(scope="module")
def G():
    return tiny_generator(32).requires_grad_(False)


@pytest.fixture(scope="module")
def case(G):
    return fitting_case(G)


def test_refinement_then_pti_each_get_closer(G, case):
    photo, guess = case
    weights = {k: v.clone() for k, v in G.state_dict().items()}
    result = reconstruct_photo(G, photo, guess, refine_steps=25, refine_lr=0.04, refine_terms=L2, pti_steps=20,
                               pti_lr=3e-3, pti_terms=L2, locality=Locality(every=0))
    e4e, refined, pti = (float(s.metrics["mse"][0]) for s in result.stages)
    assert [s.name for s in result.stages] == ["e4e", "refined", "PTI"]
    with torch.no_grad():  # the metrics are what they say: MSE against the photo, by hand
        assert _mse(G.synthesis(guess), photo) == pytest.approx(e4e, rel=1e-4)
        assert _mse(result.final.generator.synthesis(result.final.wplus), photo) == pytest.approx(pti, rel=1e-4)
    assert refined < 0.5 * e4e and pti < 0.8 * refined
    assert float(result.stages[1].metrics["psnr"][0]) > float(result.stages[0].metrics["psnr"][0])
    # the original network is untouched and frozen (its fast frozen-weight path stays), the copy too
    assert all(torch.equal(v, weights[k]) for k, v in G.state_dict().items())
    assert not any(p.requires_grad for p in G.parameters())
    assert not any(p.requires_grad for p in result.final.generator.parameters())
    assert result.sheet().shape == (1, 3, 32, 32 * 4)


def test_refine_keeps_the_best_step_and_reports_history(G, case):
    photo, guess = case
    fit = refine_inversion(G, photo, guess, steps=5, lr=0.02, terms=L2)
    assert fit.steps_run == 5 and fit.history["total"].shape == (1, 5) and fit.history["l2"].shape == (1, 5)
    with torch.no_grad():
        assert _mse(G.synthesis(fit.wplus), photo) <= float(fit.history["total"].min()) + 1e-7
    stopped = refine_inversion(G, photo, guess, steps=50, terms=L2, callback=lambda info: info.step == 2)
    assert stopped.steps_run == 3


def test_pti_tunes_only_the_synthesis(G, case):
    photo, guess = case
    tuned = pivotal_tuning(G, photo, guess, steps=3, lr=1e-3, terms=L2, locality=Locality(every=0)).generator
    assert torch.equal(tuned.mapping_network.fc0.weight, G.mapping_network.fc0.weight)
    changed = [n for n, p in tuned.named_parameters() if not torch.equal(p, G.get_parameter(n))]
    assert changed and all(not n.startswith("mapping.") for n in changed)
    assert tuned.tuned_from["fingerprint"] == generator_fingerprint(G)


def test_locality_keeps_far_latents_closer_to_the_original(G, case):
    """Latents of the regulariser's kind (mapped at truncation 0.5, moved to distance alpha from the pivot; other
    draws than its own) drift much less from the original network's renders with the regulariser on."""
    photo, guess = case
    z = torch.randn(6, G.z_dim, generator=torch.Generator().manual_seed(99))
    with torch.no_grad():
        w = G.to_wplus(G.mapping(z, truncation=0.5))
    direction = w - guess
    probe = guess + 3.0 * direction / direction.flatten(1).norm(dim=1)[:, None, None]
    with torch.no_grad():
        before = G.synthesis(probe)
    drift = {}
    for every in (0, 1):
        tuned = pivotal_tuning(G, photo, guess, steps=25, lr=5e-3, terms=L2,
                               locality=Locality(every=every, l2=1.0, alpha=3.0, samples=2)).generator
        with torch.no_grad():
            drift[every] = _mse(tuned.synthesis(probe), before)
    assert drift[1] < 0.5 * drift[0]


def test_tuned_weights_round_trip_bit_for_bit_and_refuse_another_network(G, case, tmp_path):
    photo, guess = case
    tuned = pivotal_tuning(G, photo, guess, steps=3, lr=1e-3, terms=L2, locality=Locality(every=0)).generator
    path = tmp_path / "me_pti.safetensors"
    save_tuned_generator(tuned, path)
    again = load_tuned_generator(path, G)
    assert all(torch.equal(v, tuned.state_dict()[k]) for k, v in again.state_dict().items())
    with torch.no_grad():
        assert torch.equal(again.synthesis(guess), tuned.synthesis(guess))
    other = tiny_generator(32, seed=5)
    with pytest.raises(TargetCLIPError, match="tuned from another network") as info:
        load_tuned_generator(path, other)
    assert "me_pti.safetensors" in str(info.value)
    with pytest.raises(CheckpointError, match="not a tuned-generator"):
        save_generator(G, tmp_path / "plain.safetensors")
        load_tuned_generator(tmp_path / "plain.safetensors", G)


def test_a_full_save_keeps_the_lineage(G, case, tmp_path):
    photo, guess = case
    tuned = pivotal_tuning(G, photo, guess, steps=2, lr=1e-3, terms=L2, locality=Locality(every=0)).generator
    save_generator(tuned, tmp_path / "full.safetensors")
    again = load_generator(tmp_path / "full.safetensors", device="cpu")
    assert again.tuned_from["fingerprint"] == generator_fingerprint(G)
    assert generator_fingerprint(G) in lineage_fingerprints(again)  # SAT3D matrices of G apply to it
    assert lineage_fingerprints(G) == {generator_fingerprint(G)}


def test_the_lpips_stop_rule_and_missing_networks(G, case):
    photo, guess = case

    class Zero(torch.nn.Module):
        def forward(self, a, b):
            return (a - b).sum(dim=(1, 2, 3)) * 0

    result = pivotal_tuning(G, photo, guess, steps=10, lpips=Zero(), locality=Locality(every=0))
    assert result.steps_run == 0  # PTI stops once LPIPS <= 0.07: here at once
    with pytest.warns(UserWarning, match="perceptual term is off"):
        refine_inversion(G, photo, guess, steps=1, terms=ReconstructionTerms(l2=1.0, lpips=1.0))
    with pytest.raises(TargetCLIPError, match="every reconstruction term is off"):
        refine_inversion(G, photo, guess, steps=1, terms=ReconstructionTerms(l2=0.0, lpips=0.0))


@pytest.mark.parametrize("bad, message", [
    (lambda p, g: (p * float("nan"), g), "NaN"),
    (lambda p, g: (torch.cat([p, p]), g), "2 photos"),
])
def test_bad_inputs_are_named(G, case, bad, message):
    photo, guess = bad(*case)
    with pytest.raises(TargetCLIPError, match=message):
        refine_inversion(G, photo, guess, steps=1, terms=L2)


def test_a_camera_is_only_for_3d_generators(G, case):
    with pytest.raises(TargetCLIPError, match="3D-aware"):
        refine_inversion(G, *case, steps=1, terms=L2, camera=torch.zeros(1, 25))


def test_eg3d_from_a_known_camera():
    G3 = tiny_eg3d().requires_grad_(False)
    camera = G3.camera(yaw=15, pitch=-5)
    true = random_wplus(G3, 1, seed=3) * 0.5
    with torch.no_grad():
        photo = G3.synthesis(true, c=camera)
    guess = true + 0.4 * torch.randn(true.shape, generator=torch.Generator().manual_seed(4))
    result = reconstruct_photo(G3, photo, guess, refine_steps=15, refine_lr=0.02, refine_terms=L2, pti_steps=10,
                               pti_lr=2e-3, pti_terms=L2, locality=Locality(every=0), camera=camera)
    e4e, refined, pti = (float(s.metrics["mse"][0]) for s in result.stages)
    assert refined < e4e and pti < refined
    tuned = result.final.generator
    assert tuned.is_3d and tuned.tuned_from["fingerprint"] == generator_fingerprint(G3)
    with torch.no_grad():  # the fitted face renders from other cameras: an orbit of the user's own face
        views = [out["image"] for _, out in tuned.render_views(result.final.wplus, tuned.camera(yaw=[-20.0, 0.0, 20.0]))]
    assert len(views) == 3 and all(v.shape == photo.shape for v in views)
    assert not torch.allclose(views[0], views[2])


def test_bench_reconstruction_reports_seconds_per_step_and_memory():
    from targetclip_core.bench.benchmarks import bench_reconstruction

    lines = []
    summary = bench_reconstruction(resolution=32, steps=1, with_arcface=False, log=lines.append)
    assert summary["refine_s_per_step"] > 0 and summary["pti_s_per_step"] > 0 and summary["pti_peak_gb"] > 0
    assert any("refine_inversion" in line for line in lines)


def test_a_damaged_tuned_weights_file_is_named(G, case, tmp_path):
    photo, guess = case
    tuned = pivotal_tuning(G, photo, guess, steps=1, lr=1e-3, terms=L2, locality=Locality(every=0)).generator
    path = tmp_path / "me_pti.safetensors"
    save_tuned_generator(tuned, path)
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.safetensors"):
        load_tuned_generator(tmp_path / "cut.safetensors", G)
