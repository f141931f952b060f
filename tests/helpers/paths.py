"""Where things are: the repository, the tests' own data, and ../shared (fixtures, data).

`TARGETCLIP_SHARED` names the shared folder (docs, fixtures, data); by default it is the folder
`shared` beside the repository root. Tests that need it skip with a clear reason when it is absent.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from types import ModuleType

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
TESTS_DIR = REPO_ROOT / "tests"
DATA_DIR = TESTS_DIR / "data"
SHARED_ENV = "TARGETCLIP_SHARED"
ROSINALITY_FIXTURE = "stylegan2_rosinality_32"


def shared_dir() -> Path:
    """The shared folder: $TARGETCLIP_SHARED, else `shared` beside the repository root."""
    override = os.environ.get(SHARED_ENV, "").strip()
    return Path(override).expanduser() if override else REPO_ROOT.parent / "shared"


def require_shared(*parts: str) -> Path:
    """Path inside the shared folder, or skip the test saying what is missing and how to point at it."""
    root = shared_dir()
    path = root.joinpath(*parts)
    if not path.exists():
        pytest.skip(
            f"shared test data not found: {path} is missing (set {SHARED_ENV} to the folder holding "
            "docs/, fixtures/ and data/)"
        )
    return path


def load_fixture_weights_module(fixtures: Path) -> ModuleType:
    """Import shared/fixtures/fixture_weights.py by path (it is not a package)."""
    path = fixtures / "fixture_weights.py"
    spec = importlib.util.spec_from_file_location("targetclip_test_fixture_weights", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fixture_state_dict(fixtures: Path, name: str, with_constants: bool = True) -> dict[str, torch.Tensor]:
    """The reference state dict of a fixture: drawn tensors (+ the FIR constants a real file holds)."""
    manifest = fixtures / f"{name}.json"
    sd = load_fixture_weights_module(fixtures).state_dict(str(manifest))
    if with_constants:
        constants = json.loads(manifest.read_text(encoding="utf-8")).get("constants", {})
        for key, value in constants.items():
            sd[key] = torch.tensor(value, dtype=torch.float32)
    return sd
