"""StyleGAN3 in the pack: Load StyleGAN reads it, Sample / Render Latents (with gen_images.py's translate
and rotate), Apply Essence on its W+; the translate inputs refuse other generators by name."""

from __future__ import annotations

import pytest
import torch
from helpers.generators import small_stylegan3

from helpers.comfy import loaded_generator, node  # skips the module without ComfyUI's API; must come before comfy.*

from targetclip_core.generators.stylegan3 import user_transform  # noqa: E402, I001


@pytest.fixture(scope="module")
def G3(pack):
    return loaded_generator(pack, small_stylegan3("R"), "sg3-r.safetensors")


def _comfy(images: torch.Tensor) -> torch.Tensor:
    return ((images.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1)


def test_sample_and_render_with_translate_and_rotate(pack, G3):
    assert G3.describe().endswith("StyleGAN3-R")
    (lat,) = node(pack, "TargetCLIP_SampleLatents").sample(G3, seed=1, count=2, truncation=0.7)
    render = node(pack, "TargetCLIP_RenderLatents")
    assert set(render.INPUT_TYPES()["optional"]) == {"translate_x", "translate_y", "rotate", "precision"}
    (plain,) = render.render(G3, lat, "const", 2)
    (moved,) = render.render(G3, lat, "const", 2, translate_x=0.1, translate_y=-0.2, rotate=30.0)
    with torch.no_grad():
        assert torch.allclose(plain, _comfy(G3.synthesis(lat.latents)), atol=1e-6)
        expected = _comfy(G3.synthesis(lat.latents, transform=user_transform((0.1, -0.2), 30.0)))
    assert torch.allclose(moved, expected, atol=1e-6) and not torch.allclose(moved, plain, atol=1e-3)


def test_apply_essence_on_stylegan3(pack, G3):
    from targetclip_core.methods.targetclip.essence import Essence

    (lat,) = node(pack, "TargetCLIP_SampleLatents").sample(G3, seed=0, count=1, truncation=1.0)
    vector = 0.2 * torch.randn(1, G3.n_latent, G3.w_dim, generator=torch.Generator().manual_seed(0))
    essence = Essence(vector=vector, generator=G3.identity, name="e")
    images, edited = node(pack, "TargetCLIP_ApplyEssence").apply(G3, lat, essence, 0.5, "all")
    assert torch.allclose(edited.latents, lat.latents + 0.5 * vector, atol=1e-6)
    with torch.no_grad():
        assert torch.allclose(images, _comfy(G3.synthesis(lat.latents + 0.5 * vector)), atol=1e-5)


def test_translate_on_stylegan2_is_refused(pack, G):
    (lat,) = node(pack, "TargetCLIP_SampleLatents").sample(G, seed=0, count=1, truncation=1.0)
    with pytest.raises(Exception, match="StyleGAN3"):
        node(pack, "TargetCLIP_RenderLatents").render(G, lat, "const", 1, translate_x=0.5)


def test_render_latents_in_bf16(pack, G):
    (lat,) = node(pack, "TargetCLIP_SampleLatents").sample(G, seed=1, count=2, truncation=0.7)
    render = node(pack, "TargetCLIP_RenderLatents")
    (fp32,) = render.render(G, lat, "const", 2)
    (bf16,) = render.render(G, lat, "const", 2, precision="bf16")
    assert bf16.dtype == torch.float32 and bf16.shape == fp32.shape
    assert 0 < float((bf16 - fp32).abs().max()) < 0.05  # a different precision, the same images within bf16's 8 bits

