"""Refine Inversion and Pivotal Tuning in the pack (inside inference mode, as ComfyUI runs nodes): closer to the
photo than the encoder's latents, the tuned generator usable downstream, progress with previews, Cancel."""

from __future__ import annotations

import pytest
import torch
from helpers.generators import random_wplus

from helpers.comfy import node, pack_module  # skips the module without ComfyUI's API; must come before comfy.*

import comfy.model_management as mm  # noqa: E402, I001
import comfy.utils  # noqa: E402


@pytest.fixture(scope="module")
def photo_case(pack, G):
    true = random_wplus(G, 1, seed=1) * 0.7
    with torch.no_grad():
        photo = ((G.synthesis(true).clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1)  # a ComfyUI IMAGE
    guess = true + 0.4 * torch.randn(true.shape, generator=torch.Generator().manual_seed(2))
    return photo, guess


def _wplus(pack, G, wp):
    return pack_module("nodes.common").WPlus(wp, G.identity)


def _mse(images, photo) -> float:
    return float((images - photo).square().mean())


def test_refine_then_tune_get_closer_and_the_tuned_generator_renders_downstream(pack, G, photo_case):
    photo, guess = photo_case
    previews = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: previews.append(preview))
    try:
        with torch.inference_mode():
            start = _wplus(pack, G, guess)
            (e4e_images,) = node(pack, "TargetCLIP_RenderLatents").render(G, start, "const", 1)
            refined, recon = node(pack, "TargetCLIP_RefineInversion").refine(G, start, photo, 15, 0.03, "off")
            tuned, recon_pti = node(pack, "TargetCLIP_PivotalTuning").tune(G, refined, photo, 10, 2e-3, "off", 0, 0.0)
            (again,) = node(pack, "TargetCLIP_RenderLatents").render(tuned, refined, "const", 1)
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    assert _mse(recon, photo) < 0.7 * _mse(e4e_images, photo)
    assert _mse(recon_pti, photo) < _mse(recon, photo)
    assert torch.allclose(again, recon_pti, atol=1e-6)  # the tuned generator works in other nodes
    assert len(previews) >= 25 and previews[-1] is not None  # one update per step, with a preview image
    assert tuned is not G and tuned.tuned_from["describe"] == G.describe()


def test_cancel_stops_refinement_within_a_step(pack, G, photo_case):
    photo, guess = photo_case
    seen = []
    comfy.utils.set_progress_bar_global_hook(
        lambda value, total, preview, node_id=None: (seen.append(value), mm.interrupt_current_processing(value >= 2)))
    try:
        with pytest.raises(mm.InterruptProcessingException), torch.inference_mode():
            node(pack, "TargetCLIP_RefineInversion").refine(G, _wplus(pack, G, guess), photo, 100, 0.01, "off")
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
        mm.interrupt_current_processing(False)
    assert max(seen) <= 3


def test_missing_lpips_weights_turn_the_term_off_with_a_warning(pack, G, photo_case, monkeypatch, tmp_path):
    photo, guess = photo_case
    monkeypatch.setattr("torch.hub.get_dir", lambda: str(tmp_path / "no-hub"))
    monkeypatch.setenv("TARGETCLIP_WEIGHTS_DIR", str(tmp_path / "no-store"))
    with pytest.warns(UserWarning, match="perceptual term is off"), torch.inference_mode():
        latents, _ = node(pack, "TargetCLIP_RefineInversion").refine(G, _wplus(pack, G, guess), photo, 1, 0.01, "vgg")
    assert latents.latents.shape == guess.shape
