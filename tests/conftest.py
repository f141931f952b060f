"""Fixtures shared by the tests (the helpers themselves live in tests/helpers/, one module per concern).

Tests that need ../shared (conformance fixtures, data) find it through $TARGETCLIP_SHARED or the folder
`shared` beside the repository root, and skip with a clear reason when it is absent (helpers.paths).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

TESTS_DIR = Path(__file__).resolve().parent
for _path in (TESTS_DIR.parent, TESTS_DIR):  # targetclip_core and the helpers, wherever pytest runs from
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from helpers.generators import small_generator, write_rosinality_checkpoint  # noqa: E402
from helpers.paths import ROSINALITY_FIXTURE, fixture_state_dict, require_shared  # noqa: E402

from targetclip_core.generators.stylegan2 import StyleGAN2Generator  # noqa: E402


@pytest.fixture(scope="session")
def shared() -> Path:
    return require_shared()


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return require_shared("fixtures")


@pytest.fixture(scope="session")
def rosinality32_state(fixtures_dir: Path) -> dict[str, torch.Tensor]:
    """Fixture weights of rosinality Generator(32, 512, 8, channel_multiplier=2). Do not mutate: copy."""
    return fixture_state_dict(fixtures_dir, ROSINALITY_FIXTURE)


@pytest.fixture(scope="session")
def rosinality32_ref(fixtures_dir: Path) -> dict[str, np.ndarray]:
    """Inputs and reference outputs computed by rosinality's own code for those weights."""
    with np.load(fixtures_dir / f"{ROSINALITY_FIXTURE}.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="session")
def rosinality32_ckpt(tmp_path_factory: pytest.TempPathFactory, rosinality32_state) -> Path:
    """The fixture weights written as a rosinality .pt (without latent_avg, like a bare g_ema file)."""
    return write_rosinality_checkpoint(tmp_path_factory.mktemp("ros32") / "stylegan2-32.pt", rosinality32_state)


@pytest.fixture
def tiny_G() -> StyleGAN2Generator:
    return small_generator(32)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    """A temporary ComfyUI models/ and output/ (see helpers.comfy; skips without ComfyUI's API)."""
    from helpers.comfy import temporary_models_dir

    yield from temporary_models_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def pack(models_dir):
    """The pack imported as ComfyUI imports a custom node folder (see helpers.comfy)."""
    from helpers.comfy import imported_pack

    yield from imported_pack()
