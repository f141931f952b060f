"""What a new user meets first on the command line: help for every option, progress for encode and edit, warnings
as one line, and a wrong file given as --encoder named for what it is (an e4e inverter, a JPEG)."""

from __future__ import annotations

import argparse
import json
import re
import warnings

import numpy as np
import pytest
import torch
from helpers.encoders import official_checkpoint, tiny_encoder
from helpers.generators import random_rosinality_state
from PIL import Image

from targetclip_core.cli import photo as cli_photo
from targetclip_core.cli.main import build_parser, main
from targetclip_core.errors import CheckpointError
from targetclip_core.formats.checkpoints import non_checkpoint_kind, require_keys
from targetclip_core.methods.targetclip.essence import (
    Essence,
    load_essence,
    save_essence,
)

FACE_5 = [[90, 110], [166, 110], [128, 150], [98, 190], [158, 190]]  # eyes, nose, mouth corners of a 256 px photo


def _commands(parser, prefix=()):
    """(command path, its parser) for every command and nested command."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name), sub
                yield from _commands(sub, (*prefix, name))


def test_every_argument_of_every_command_has_help():
    missing, internal = [], []
    commands = list(_commands(build_parser()))
    assert len(commands) > 15
    for path, parser in commands:
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            name = " ".join(path) + " " + (action.option_strings[0] if action.option_strings else action.dest)
            if not action.help:
                missing.append(name)
            elif re.search(r"\b[a-z_]+\.[A-Z][A-Z_]{2,}\b", action.help):  # module.CONSTANT: a name, not a value
                internal.append(f"{name}: {action.help}")
    assert not missing, f"arguments without help: {missing}"
    assert not internal, f"help naming internal constants: {internal}"


def test_edit_help_shows_the_feather_value(capsys):
    from targetclip_core.faces.alignment import DEFAULT_FEATHER

    with pytest.raises(SystemExit):
        main(["edit", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"(default {DEFAULT_FEATHER:g})" in text and "DEFAULT_FEATHER" not in text


def test_warnings_print_as_one_targetclip_line_and_only_inside_main(tmp_path, monkeypatch, capsys):
    def warns(args):
        warnings.warn("SAT3D: L_bg is off: no region parser was given\n(a face parser is needed)", UserWarning)
        return 0

    monkeypatch.setitem(cli_photo.COMMANDS, "encode", warns)
    before = warnings.showwarning
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert main(["encode", "x.png", "--encoder", "e.pt", "--out", str(tmp_path / "o.safetensors")]) == 0
    err = capsys.readouterr().err
    assert err == "targetclip: warning: SAT3D: L_bg is off: no region parser was given (a face parser is needed)\n"
    assert warnings.showwarning is before


@pytest.fixture
def target_png(tmp_path):
    path = tmp_path / "target.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(path)
    return path


def test_encode_refuses_an_e4e_inverter_and_says_to_invert(tmp_path, target_png, capsys):
    inverter = official_checkpoint(tmp_path / "e4e_ffhq_encode.pt", tiny_encoder(n_styles=6, w_dim=32).state_dict(),
                                   torch.randn(6, 32))  # start_from_latent_avg True, as every e4e
    rc = main(["encode", str(target_png), "--encoder", str(inverter), "--out", str(tmp_path / "b.safetensors"),
               "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "e4e/pSp inverter" in err and "targetclip invert" in err
    assert not (tmp_path / "b.safetensors").exists()


def test_encode_names_a_jpeg_given_as_the_encoder(tmp_path, target_png, capsys):
    jpeg = tmp_path / "encoder.pt"
    Image.open(target_png).save(jpeg, format="JPEG")
    rc = main(["encode", str(target_png), "--encoder", str(jpeg), "--out", str(tmp_path / "b.safetensors"),
               "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "not a checkpoint: this is a JPEG image" in err and "non-tensor" not in err


def test_encode_shows_progress_per_target(tmp_path, target_png, capsys):
    enc = tiny_encoder(n_styles=6, w_dim=32)
    path = official_checkpoint(tmp_path / "essence.pt", enc.state_dict(), None, start_from_latent_avg=False)
    second = tmp_path / "second.png"
    second.write_bytes(target_png.read_bytes())
    rc = main(["encode", str(target_png), str(second), "--encoder", str(path), "--out", str(tmp_path / "out"),
               "--device", "cpu"])
    captured = capsys.readouterr()
    assert rc == 0 and "encode: 100%" in captured.err and "2/2" in captured.err
    assert captured.out.count("wrote ") == 2
    assert load_essence(tmp_path / "out" / "second.safetensors").vector.shape == (1, 6, 32)


def test_edit_shows_progress_per_stage(tmp_path, target_png, capsys):
    e4e = official_checkpoint(tmp_path / "e4e.pt", tiny_encoder(n_styles=6, w_dim=32).state_dict(), torch.randn(6, 32),
                              decoder_state=random_rosinality_state(resolution=16))
    essence = Essence(vector=0.5 * torch.randn(1, 6, 32, generator=torch.Generator().manual_seed(0)),
                      generator={"arch": "stylegan2", "resolution": 16, "n_latent": 6, "w_dim": 32}, name="tiny")
    save_essence(tmp_path / "tiny.safetensors", essence)
    (tmp_path / "face.json").write_text(json.dumps(FACE_5))
    rc = main(["edit", str(target_png), "--essence", str(tmp_path / "tiny.safetensors"), "--encoder", str(e4e),
               "--landmarks", str(tmp_path / "face.json"), "--strength", "0.5", "1", "--out", str(tmp_path / "out"),
               "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 0 and "edit: 100%" in err and "6/6" in err  # load, align, invert, reconstruct, 2 strengths
    assert (tmp_path / "out" / "target_tiny_x0.5.png").is_file() and (tmp_path / "out" / "target_tiny_x1.png").is_file()


def test_files_that_are_plainly_no_checkpoint_are_named():
    assert non_checkpoint_kind(b"\xff\xd8\xff\xe0\x00\x10JFIF") == "a JPEG image"
    assert non_checkpoint_kind(b"\x89PNG\r\n\x1a\n....") == "a PNG image"
    assert non_checkpoint_kind(b"RIFF\x10\x00\x00\x00WEBPVP8 ") == "a WebP image"
    assert non_checkpoint_kind(b"version https://git-lfs.github.com/spec/v1\n").startswith("a Git LFS pointer")
    assert non_checkpoint_kind(b"  <!DOCTYPE html><html>").startswith("an HTML page")
    assert non_checkpoint_kind(b"PK\x03\x04") is None and non_checkpoint_kind(b"\x80\x02\x8a\n") is None


def test_articles_in_not_a_checkpoint_messages():
    with pytest.raises(CheckpointError, match="not an ArcFace IR-SE checkpoint"):
        require_keys({}, ["input_layer.0.weight"], "f.pth", "ArcFace IR-SE")
    with pytest.raises(CheckpointError, match="not an e4e/pSp encoder checkpoint"):
        require_keys({}, ["x"], "f.pt", "e4e/pSp encoder")
    with pytest.raises(CheckpointError, match="not a rosinality StyleGAN2 checkpoint"):
        require_keys({}, ["x"], "f.pt", "rosinality StyleGAN2")
