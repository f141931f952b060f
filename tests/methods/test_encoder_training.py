"""Training the essence encoder (`targetclip train-encoder`): a tiny e4e checkpoint in the official
layout (tiny IR-SE encoder + a rosinality-layout decoder), the tiny random CLIP, small PNG targets, CPU."""

from __future__ import annotations

import argparse
import os
import signal

import numpy as np
import pytest
import torch
from helpers.generators import random_rosinality_state, write_rosinality_checkpoint
from helpers.clip import TINY_CLIP, register_tiny_clip, tiny_clip
from PIL import Image

from targetclip_core.encoders.e4e import EncoderConfig, StyleEncoder
from targetclip_core.errors import CheckpointError, LatentError, TargetCLIPError
from targetclip_core.generators.load import load_generator
from targetclip_core.methods.targetclip.encoder_training import (
    EncoderTrainingConfig,
    EssenceObjective,
    evaluate,
    read_loss_log,
    train_essence_encoder,
)
from targetclip_core.methods.targetclip.training_data import batch_indices, flip_mask, list_images, read_training_image
from targetclip_core.methods.targetclip.essence_encoder import load_essence_encoder

STAGES = ((8, 8, 1), (8, 16, 1), (16, 24, 1), (24, 32, 1))  # distinct widths: the loader finds stages by width
RES, W_DIM, N_LATENT, INPUT = 32, 32, 8, 32
FAST = dict(lr=1e-3, batch_size=2, val_fraction=0.0, device="cpu")  # val on the training images


@pytest.fixture(scope="module")
def decoder_state():
    return random_rosinality_state(resolution=RES, style_dim=W_DIM)


@pytest.fixture(scope="module")
def e4e_file(tmp_path_factory, decoder_state):
    """e4e checkpoint in the official layout: {'state_dict': {'encoder.*', 'decoder.*'}, 'latent_avg', 'opts'}."""
    torch.manual_seed(0)
    enc = StyleEncoder(EncoderConfig(stages=STAGES, w_dim=W_DIM, n_styles=N_LATENT, input_size=INPUT))
    sd = {f"encoder.{k}": v for k, v in enc.state_dict().items()}
    sd.update({f"decoder.{k}": v for k, v in decoder_state.items()})
    path = tmp_path_factory.mktemp("e4e") / "e4e_tiny.pt"
    opts = {"encoder_type": "Encoder4Editing", "start_from_latent_avg": True, "stylegan_size": RES, "lpips_lambda": 0.8}
    torch.save({"state_dict": sd, "latent_avg": torch.randn(N_LATENT, W_DIM), "opts": opts}, path)
    return path


@pytest.fixture(scope="module")
def G(e4e_file):
    return load_generator(e4e_file, device="cpu")


@pytest.fixture(scope="module")
def C():
    return tiny_clip()


def write_png(path, seed, size=(40, 36)):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """Four targets (one in a subfolder), plus files the listing must skip."""
    root = tmp_path_factory.mktemp("targets")
    for i in range(3):
        write_png(root / f"t{i}.png", seed=i)
    write_png(root / "more" / "t3.png", seed=3)
    write_png(root / ".cache" / "hidden.png", seed=9)
    (root / "notes.txt").write_text("not an image")
    return root


def train(e4e_file, image_dir, out, C, **kw):
    return train_essence_encoder(e4e_file, image_dir, out, clip=C, **{**FAST, **kw})


def encoder_weights(path) -> dict:
    sd = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return {k: v for k, v in sd.items() if k.startswith("encoder.")}


@pytest.fixture(scope="module")
def run12(tmp_path_factory, e4e_file, image_dir, C):
    """One 12-step run shared by the read-only checks: validation every 4 steps, last.pt every 5."""
    out = tmp_path_factory.mktemp("run12") / "out"
    return train(e4e_file, image_dir, out, C, steps=12, val_every=4, save_every=5)


# --------------------------------------------------------------------------- training


def test_loss_falls_on_a_fixed_batch(tmp_path, e4e_file, image_dir, C):
    result = train(e4e_file, image_dir, tmp_path / "out", C, steps=30, batch_size=4, flip=False, val_every=30)
    rows = read_loss_log(result.log_path)
    val = [r["total"] for r in rows if r["split"] == "val"]
    train_loss = [r["total"] for r in rows if r["split"] == "train"]
    assert len(val) == 2 and len(train_loss) == 30
    assert val[-1] < 0.8 * val[0], f"validation loss did not fall: {val}"
    assert np.mean(train_loss[-5:]) < 0.7 * np.mean(train_loss[:5]), f"training loss did not fall: {train_loss}"
    assert result.best_step == 30 and result.best_val_loss == pytest.approx(val[-1], rel=1e-6)


def test_loss_log_has_one_row_per_step_and_validation(run12):
    rows = read_loss_log(run12.log_path)
    assert list(rows[0]) == ["step", "split", "total", "similarity", "consistency", "l2"]
    assert [r["step"] for r in rows if r["split"] == "train"] == list(range(1, 13))
    assert [r["step"] for r in rows if r["split"] == "val"] == [0, 4, 8, 12]  # the e4e baseline, every 4, the end
    for r in rows:
        assert r["total"] == pytest.approx(r["similarity"] + 0.5 * r["consistency"] + 0.003 * r["l2"], rel=1e-5)


def test_checkpoints_are_official_layout_and_weights_only(run12, decoder_state):
    last = torch.load(run12.last_path, map_location="cpu", weights_only=True)
    best = torch.load(run12.best_path, map_location="cpu", weights_only=True)
    for ckpt in (last, best):
        sd = ckpt["state_dict"]
        assert any(k.startswith("encoder.styles.") for k in sd)
        decoder = {k[len("decoder.") :]: v for k, v in sd.items() if k.startswith("decoder.")}
        assert decoder.keys() == decoder_state.keys()  # the generator travels along, as in e4e's files
        assert all(torch.equal(decoder[k], decoder_state[k]) for k in decoder)
        opts = ckpt["opts"]
        assert type(opts) is dict
        assert opts["encoder_type"] == "Encoder4Editing" and opts["start_from_latent_avg"] is False
        assert (opts["stylegan_size"], opts["learning_rate"], opts["num_consistency"]) == (RES, 1e-3, 5)
        assert opts["lpips_lambda"] == 0.8  # the init's own options are kept for the official scripts
        assert ckpt["latent_avg"].shape == (N_LATENT, W_DIM)
        assert ckpt["sources"].shape == (5, N_LATENT, W_DIM)
    assert last["global_step"] == 12 and "optimizer" in last and "optimizer" not in best
    val = [r for r in read_loss_log(run12.log_path) if r["split"] == "val"]
    lowest = min(val, key=lambda r: r["total"])
    assert best["global_step"] == lowest["step"] == run12.best_step
    assert best["best_val_loss"] == pytest.approx(lowest["total"], rel=1e-6) == last["best_val_loss"]


def test_last_checkpoint_reloads_to_the_trained_encoder(run12):
    loaded = load_essence_encoder(run12.last_path, device="cpu")
    assert not loaded.net.adds_latent_avg  # b is the encoder output itself
    x = torch.rand(3, 3, 48, 48) * 2 - 1
    assert torch.equal(loaded(x), run12.encoder(x))
    essence = loaded.encode(x[:1], name="t")
    assert essence.vector.shape == (1, N_LATENT, W_DIM) and essence.source == "encoder"


def test_best_checkpoint_holds_the_weights_of_its_validation_loss(run12, image_dir, G, C):
    best = load_essence_encoder(run12.best_path, device="cpu")
    sources = torch.load(run12.best_path, map_location="cpu", weights_only=True)["sources"]
    objective = EssenceObjective(G, C, sources, (1.0, 0.5, 0.003))
    images = torch.stack([read_training_image(f, INPUT) for f in list_images(image_dir)])
    losses = evaluate(best, objective, images, objective.target_codes(images), batch_size=2)
    assert losses["total"] == pytest.approx(run12.best_val_loss, rel=1e-5)


def test_resume_replays_the_uninterrupted_run(tmp_path, e4e_file, image_dir, C):
    whole = train(e4e_file, image_dir, tmp_path / "whole", C, steps=6, val_every=100, save_every=100)
    train(e4e_file, image_dir, tmp_path / "split", C, steps=3, val_every=100, save_every=100)
    with open(tmp_path / "split" / "loss_log.csv", "a") as f:  # a row a crashed run wrote after its last save
        f.write("5,train,9,9,9,9\n")
    resumed = train(e4e_file, image_dir, tmp_path / "split", C, steps=6, val_every=100, save_every=100, resume=True)
    assert resumed.global_step == 6
    a, b = encoder_weights(whole.last_path), encoder_weights(resumed.last_path)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-6, atol=1e-7, msg=k)
    split_rows, whole_rows = (train_rows(tmp_path / name / "loss_log.csv") for name in ("split", "whole"))
    assert [r["step"] for r in split_rows] == list(range(1, 7))
    assert [r["total"] for r in split_rows] == pytest.approx([r["total"] for r in whole_rows], rel=1e-5)


def train_rows(log_path) -> list[dict]:
    return [r for r in read_loss_log(log_path) if r["split"] == "train"]


def test_callback_stops_or_raises_after_saving_last(tmp_path, e4e_file, image_dir, C):
    seen = []

    def stop_at_2(info):
        seen.append((info.step, info.steps, sorted(info.losses)))
        return False if info.step == 2 else None

    result = train(e4e_file, image_dir, tmp_path / "stop", C, steps=10, save_every=100, callback=stop_at_2)
    assert result.stopped and result.global_step == 2
    assert seen == [(1, 10, ["consistency", "l2", "similarity", "total"]), (2, 10, ["consistency", "l2", "similarity", "total"])]
    assert torch.load(result.last_path, weights_only=True)["global_step"] == 2

    def interrupt(info):
        if info.step == 3:
            raise RuntimeError("interrupted by the user")

    with torch.inference_mode(), pytest.raises(RuntimeError, match="interrupted"):  # as inside a ComfyUI node
        train(e4e_file, image_dir, tmp_path / "raise", C, steps=10, save_every=100, callback=interrupt)
    assert torch.load(tmp_path / "raise" / "last.pt", weights_only=True)["global_step"] == 3


def test_sources_from_a_file_and_an_explicit_generator(tmp_path, e4e_file, image_dir, G, C):
    sources = torch.randn(3, N_LATENT, W_DIM, generator=torch.Generator().manual_seed(5))
    torch.save(sources, tmp_path / "encoder_sources_3.pt")  # the official file is a bare tensor like this
    result = train(e4e_file, image_dir, tmp_path / "out", C, steps=2, generator=G, sources=tmp_path / "encoder_sources_3.pt")
    ckpt = torch.load(result.last_path, weights_only=True)
    assert torch.equal(ckpt["sources"], sources) and ckpt["opts"]["num_consistency"] == 3
    assert not any(k.startswith("decoder.") for k in ckpt["state_dict"])  # a module has no file layout to copy
    assert ckpt["opts"]["generator"] == G.identity
    assert load_essence_encoder(result.last_path, device="cpu").cfg.n_styles == N_LATENT

    with pytest.raises(LatentError, match="does not fit"):
        train(e4e_file, image_dir, tmp_path / "bad", C, steps=1, sources=torch.randn(3, 4, W_DIM))


# --------------------------------------------------------------------------- data


def test_images_are_listed_recursively_and_read_like_e4e(image_dir):
    files = list_images(image_dir)
    assert [f.relative_to(image_dir).as_posix() for f in files] == ["more/t3.png", "t0.png", "t1.png", "t2.png"]
    with Image.open(files[1]) as im:
        expected = np.asarray(im.convert("RGB").resize((INPUT, INPUT), Image.BILINEAR), dtype=np.float32) / 127.5 - 1
    got = read_training_image(files[1], INPUT)
    assert got.shape == (3, INPUT, INPUT)
    np.testing.assert_allclose(got.permute(1, 2, 0).numpy(), expected, atol=1e-6)


def test_batches_cover_each_epoch_once_and_are_seeded():
    n, b = 7, 2
    epoch0 = sum((batch_indices(s, n, b, seed=0) for s in range(3)), [])  # 3 full batches per epoch, 1 dropped
    assert len(set(epoch0)) == 6
    assert batch_indices(3, n, b, seed=0) == batch_indices(3, n, b, seed=0) != batch_indices(3, n, b, seed=1)
    assert torch.equal(flip_mask(5, 4, seed=0), flip_mask(5, 4, seed=0))
    flips = torch.stack([flip_mask(s, 4, seed=0) for s in range(50)]).float().mean()
    assert 0.3 < flips < 0.7


# --------------------------------------------------------------------------- bad input


def test_bad_input_is_named(tmp_path, e4e_file, image_dir, C, decoder_state):
    (tmp_path / "empty").mkdir()
    with pytest.raises(TargetCLIPError, match="no images"):
        train(e4e_file, tmp_path / "empty", tmp_path / "o1", C, steps=1)
    with pytest.raises(TargetCLIPError, match="no such folder"):
        train(e4e_file, tmp_path / "missing", tmp_path / "o2", C, steps=1)

    broken = tmp_path / "broken"
    write_png(broken / "ok.png", seed=1)
    (broken / "bad.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    with pytest.raises(TargetCLIPError, match=r"bad\.jpg: not a readable image"):
        train(e4e_file, broken, tmp_path / "o3", C, steps=1)

    generator_only = write_rosinality_checkpoint(tmp_path / "stylegan2.pt", decoder_state)
    with pytest.raises(CheckpointError, match="not an e4e/pSp checkpoint"):
        train(generator_only, image_dir, tmp_path / "o4", C, steps=1)

    other_generator = random_rosinality_state(resolution=16, style_dim=W_DIM)  # 6 W+ entries, not 8
    small = write_rosinality_checkpoint(tmp_path / "stylegan2-16.pt", other_generator)
    with pytest.raises(TargetCLIPError, match="8x32 W\\+ codes, but the generator has 6x32"):
        train(e4e_file, image_dir, tmp_path / "o5", C, steps=1, generator=small)

    with pytest.raises(TargetCLIPError, match="nothing to resume"):
        train(e4e_file, image_dir, tmp_path / "o6", C, steps=1, resume=True)
    with pytest.raises(TargetCLIPError, match="lr must be > 0"):
        EncoderTrainingConfig(lr=0)


def test_existing_runs_are_not_overwritten_and_resume_keeps_settings(tmp_path, e4e_file, image_dir, C):
    train(e4e_file, image_dir, tmp_path / "out", C, steps=1)
    with pytest.raises(TargetCLIPError, match="already holds a training run"):
        train(e4e_file, image_dir, tmp_path / "out", C, steps=2)
    with pytest.raises(TargetCLIPError, match="lr: 0.001 -> 0.01"):
        train(e4e_file, image_dir, tmp_path / "out", C, steps=2, lr=1e-2, resume=True)


# --------------------------------------------------------------------------- command line


def test_cli_trains_and_resumes(tmp_path, e4e_file, image_dir, capsys):
    from targetclip_core.cli import train as cli_train

    register_tiny_clip()
    parser = argparse.ArgumentParser(prog="targetclip")
    cli_train.add_parsers(parser.add_subparsers(dest="command"))
    common = ["train-encoder", "--images", str(image_dir), "--init", str(e4e_file), "--out-dir", str(tmp_path / "run"),
              "--clip", TINY_CLIP, "--clip-pretrained", "none", "--batch-size", "2", "--val-every", "2",
              "--device", "cpu"]
    assert cli_train.cmd_train_encoder(parser.parse_args(common + ["--steps", "2"])) == 0
    out = capsys.readouterr().out
    assert "finished at step 2/2" in out and "best_model.pt" in out
    assert cli_train.cmd_train_encoder(parser.parse_args(common + ["--steps", "3", "--resume"])) == 0
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["global_step"] == 3
    assert (tmp_path / "run" / "best_model.pt").is_file()


def test_first_ctrl_c_asks_to_stop_and_the_second_aborts():
    from targetclip_core.cli.train import _StopOnInterrupt

    before = signal.getsignal(signal.SIGINT)
    with _StopOnInterrupt() as interrupt:
        os.kill(os.getpid(), signal.SIGINT)
        assert interrupt.requested
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before
