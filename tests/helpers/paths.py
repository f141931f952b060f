"""Where things are: the repository, the tests' own data, and ../shared (fixtures, data).

`TARGETCLIP_SHARED` names the shared folder (docs, fixtures, data); by default it is the folder
`shared` beside the repository root. Tests that need it skip with a clear reason when it is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# the shared fixtures' weights are read as `targetclip bench gpu` reads them (one reader, re-exported here)
from targetclip_core.bench.gpu_check import SHARED_ENV, fixture_state_dict, load_fixture_weights_module  # noqa: F401

REPO_ROOT = Path(__file__).resolve().parents[2]
TESTS_DIR = REPO_ROOT / "tests"
DATA_DIR = TESTS_DIR / "data"
ROSINALITY_FIXTURE = "stylegan2_rosinality_32"


def shared_dir() -> Path:
    """The shared folder: $TARGETCLIP_SHARED, else `shared` beside this checkout (whatever the install kind)."""
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
