"""What the essence-encoder training checkpoints hold, measured: best_model.pt the encoder (plus the official
layout's decoder, latent_avg and the run's sources), last.pt that plus the optimizer state a resume needs and
nothing it can rebuild (Ranger's slow weights when they equal the init's or the current weights)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.clip import tiny_clip
from helpers.generators import random_rosinality_state
from PIL import Image

from targetclip_core.encoders.e4e import EncoderConfig, StyleEncoder
from targetclip_core.methods.targetclip.encoder_training import train_essence_encoder

STAGES = ((8, 8, 1), (8, 16, 1), (16, 24, 1), (24, 32, 1))
RES, W_DIM, N_LATENT, INPUT = 32, 32, 8, 32
FAST = dict(lr=1e-3, batch_size=2, val_fraction=0.0, device="cpu", val_every=100, save_every=100)
TOP_LEVEL = {"state_dict", "opts", "global_step", "best_val_loss", "best_step", "sources", "latent_avg"}


@pytest.fixture(scope="module")
def decoder_state():
    return random_rosinality_state(resolution=RES, style_dim=W_DIM)


@pytest.fixture(scope="module")
def encoder_state():
    torch.manual_seed(0)
    return StyleEncoder(EncoderConfig(stages=STAGES, w_dim=W_DIM, n_styles=N_LATENT, input_size=INPUT)).state_dict()


@pytest.fixture(scope="module")
def e4e_file(tmp_path_factory, decoder_state, encoder_state):
    sd = {f"encoder.{k}": v for k, v in encoder_state.items()}
    sd.update({f"decoder.{k}": v for k, v in decoder_state.items()})
    path = tmp_path_factory.mktemp("e4e") / "e4e_tiny.pt"
    opts = {"encoder_type": "Encoder4Editing", "start_from_latent_avg": True, "stylegan_size": RES}
    torch.save({"state_dict": sd, "latent_avg": torch.randn(N_LATENT, W_DIM), "opts": opts}, path)
    return path


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("targets")
    for i in range(4):
        pixels = np.random.default_rng(i).integers(0, 256, (36, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"t{i}.png")
    return root


@pytest.fixture(scope="module")
def C():
    return tiny_clip()


def nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def tensors_of(obj):
    if torch.is_tensor(obj):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from tensors_of(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from tensors_of(v)


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_checkpoints_hold_the_encoder_and_what_a_resume_needs_only(tmp_path, e4e_file, image_dir, C, decoder_state,
                                                                    encoder_state):
    result = train_essence_encoder(e4e_file, image_dir, tmp_path / "run", clip=C, steps=2, **FAST)
    best, last = load(result.best_path), load(result.last_path)
    encoder_bytes = nbytes(encoder_state.values())
    param_bytes = nbytes(p for p in result.encoder.parameters())
    official = nbytes(decoder_state.values()) + nbytes([best["latent_avg"], best["sources"]])  # the e4e layout's extras

    assert set(best) == TOP_LEVEL and set(last) == TOP_LEVEL | {"optimizer", "optimizer_copies"}
    for ckpt in (best, last):
        encoder = [v for k, v in ckpt["state_dict"].items() if k.startswith("encoder.")]
        assert nbytes(encoder) == encoder_bytes
        assert set(ckpt["state_dict"]) == {f"encoder.{k}" for k in encoder_state} | {f"decoder.{k}" for k in decoder_state}
    assert nbytes(tensors_of(best)) == encoder_bytes + official

    # Ranger after 2 steps: exp_avg and exp_avg_sq per parameter; its slow weights are still the init's (the
    # first Lookahead sync is at step 6), so they are named, not stored ('param' for weights no step moved)
    moments = nbytes(tensors_of(last["optimizer"]))
    n_params = len(list(result.encoder.parameters()))
    assert param_bytes * 2 <= moments < param_bytes * 2 + 64 * n_params
    copies = {(name, source) for _, name, source in last["optimizer_copies"]}
    assert ("slow_buffer", "init") in copies and copies <= {("slow_buffer", "init"), ("slow_buffer", "param")}
    assert sorted(i for i, _, _ in last["optimizer_copies"]) == list(range(n_params))
    assert nbytes(tensors_of(last)) == encoder_bytes + official + moments
    for path in (result.best_path, result.last_path):  # the file is its tensors plus a small pickle
        assert path.stat().st_size < nbytes(tensors_of(load(path))) * 1.02 + 256 * 1024


def test_resume_from_a_lookahead_sync_rebuilds_the_slow_weights_exactly(tmp_path, e4e_file, image_dir, C):
    whole = train_essence_encoder(e4e_file, image_dir, tmp_path / "whole", clip=C, steps=8, **FAST)
    train_essence_encoder(e4e_file, image_dir, tmp_path / "split", clip=C, steps=6, **FAST)
    at_sync = load(tmp_path / "split" / "last.pt")
    assert {(name, source) for _, name, source in at_sync["optimizer_copies"]} == {("slow_buffer", "param")}
    resumed = train_essence_encoder(e4e_file, image_dir, tmp_path / "split", clip=C, steps=8, resume=True, **FAST)
    a, b = load(whole.last_path), load(resumed.last_path)
    for k in a["state_dict"]:
        torch.testing.assert_close(b["state_dict"][k], a["state_dict"][k], rtol=1e-6, atol=1e-7, msg=k)
    assert a["optimizer_copies"] == b["optimizer_copies"]
    for index, buffers in a["optimizer"]["state"].items():
        for name, value in buffers.items():
            torch.testing.assert_close(b["optimizer"]["state"][index][name], value, rtol=1e-6, atol=1e-7)
