"""`.npy` files read through formats.npy.read_npy: latents and official essences, whose headers are checked
before any data is read (np.load allocates what a header declares first)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from helpers.hostile import npy_header_only

from targetclip_core.errors import LatentError
from targetclip_core.generators.latents import load_latents
from targetclip_core.methods.targetclip.essence import load_essence


def test_good_files_load_exactly(tmp_path):
    wplus = np.random.default_rng(0).standard_normal((3, 8, 16)).astype(np.float32)
    np.save(tmp_path / "w.npy", wplus)
    assert torch.equal(load_latents(tmp_path / "w.npy"), torch.from_numpy(wplus))
    direction = np.random.default_rng(1).standard_normal((1, 8, 16))
    np.save(tmp_path / "joker.npy", direction)
    assert torch.allclose(load_essence(tmp_path / "joker.npy").vector, torch.from_numpy(direction).float())


@pytest.mark.parametrize("load", [load_latents, load_essence], ids=["latents", "essence"])
def test_hostile_headers_are_refused_before_reading(tmp_path, load):
    cases = {
        "huge.npy": (npy_header_only(tmp_path / "huge.npy", (10**6, 18, 512 * 1000)), "declares|shape"),
        "short.npy": (npy_header_only(tmp_path / "short.npy", (1, 8, 16), "<f4", b"\0" * 12), "512"),  # 12 of 512 bytes
        "text.npy": (npy_header_only(tmp_path / "text.npy", (1, 8, 16), "<U4"), "plain numeric array"),
        "rank.npy": (npy_header_only(tmp_path / "rank.npy", (1, 1, 8, 16), "<f4", b"\0" * 512), "shape"),
    }
    (tmp_path / "empty.npy").write_bytes(b"")
    cases["empty.npy"] = (tmp_path / "empty.npy", "not a readable .npy")
    np.save(tmp_path / "object.npy", np.array([None] * 4, dtype=object).reshape(1, 2, 2), allow_pickle=True)
    cases["object.npy"] = (tmp_path / "object.npy", "never unpickled")
    start = time.perf_counter()
    for name, (path, match) in cases.items():
        with pytest.raises(LatentError, match=match) as e:
            load(path)
        assert str(path) in str(e.value), name
    assert time.perf_counter() - start < 1.0  # nothing declared was allocated


def test_nan_in_an_npy_latent_is_refused(tmp_path):
    bad = np.zeros((1, 8, 16), np.float32)
    bad[0, 3, 2] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(LatentError, match="NaN"):
        load_latents(tmp_path / "nan.npy")
