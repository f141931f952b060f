"""Fixtures of the node tests: the tiny generator and the tiny CLIP as the pack's loader nodes give them."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def G(pack):
    from helpers.comfy import loaded_generator  # imported here: the helper skips its module without ComfyUI's API
    from helpers.generators import tiny_generator

    return loaded_generator(pack, tiny_generator(32), "tiny.safetensors")


@pytest.fixture(scope="module")
def C(pack):
    from helpers.comfy import loaded_tiny_clip

    return loaded_tiny_clip(pack)
