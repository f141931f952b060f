"""The command line refuses what it cannot do before it does anything: values out of range are usage errors
(exit 2, argparse's one line naming the flag), outputs that cannot be written are one `targetclip: error:` line
naming the path -- before any model is loaded -- and so is any file error a command meets."""

from __future__ import annotations

import argparse
import errno
import json
import os
import shlex
import sys
import warnings

import pytest
from helpers.clip import TINY_CLIP, register_tiny_clip
from helpers.eg3d import tiny_eg3d
from helpers.generators import tiny_generator
from helpers.paths import REPO_ROOT

from targetclip_core.cli import sat3d as cli_sat3d
from targetclip_core.cli.args import run_command
from targetclip_core.cli.main import build_parser, main
from targetclip_core.errors import TargetCLIPError
from targetclip_core.generators.load import save_generator

# Each command with its required arguments (dummy files: a usage error comes before any is opened).
BASE = {
    "render": ["render", "-g", "g.pt", "--seeds", "0"],
    "optimize": ["optimize", "-t", "t.png", "-g", "g.pt", "-o", "e.safetensors"],
    "apply": ["apply", "-e", "e.safetensors", "-g", "g.pt", "--seeds", "0"],
    "edit": ["edit", "p.jpg", "--essence", "e.safetensors", "--out", "o"],
    "eval": ["eval", "-g", "g.pt", "-e", "e.npy", "-t", "t.jpg", "--seeds", "0", "-o", "o"],
    "interpret": ["interpret", "e.npy", "-g", "g.pt"],
    "fid": ["fid", "edits", "reference"],
    "bench generator": ["bench", "generator"],
    "bench invert": ["bench", "invert"],
    "bench eg3d": ["bench", "eg3d"],
    "bench optimize": ["bench", "optimize"],
    "train-encoder": ["train-encoder", "--images", "faces", "--init", "e4e.pt", "--out-dir", "run"],
    "sat3d-train": ["sat3d-train", "-g", "g.pt", "-o", "m.safetensors"],
    "sat3d-transfer": ["sat3d-transfer", "-g", "g.pt", "-m", "m.safetensors", "--source-seeds", "0",
                       "--reference-seed", "1", "-a", "Beard"],
}

# (command, flag, bad value(s)): every kind of nonsense a user trial typed, and the ends of each range.
BAD_VALUES = [
    ("render", "--batch-size", "0"), ("render", "--out-resolution", "7"), ("render", "--out-resolution", "8192"),
    ("render", "--out-resolution", "-4"), ("render", "--truncation", "nan"), ("render", "--class-idx", "-1"),
    ("render", "--fov", "0"), ("render", "--fov", "180"), ("render", "--neural-resolution", "2"),
    ("render", "--views", "nan:0"), ("render", "--views", "30:up"), ("render", "--yaw-range", "inf"),
    ("render", "--seeds", "4294967296"), ("render", "--seeds", "5-3"), ("render", "--seeds", "0-99999999999"),
    ("optimize", "--steps", "-5"), ("optimize", "--steps", "0"), ("optimize", "--lr", "nan"), ("optimize", "--lr", "-0.1"),
    ("optimize", "--n-sources", "0"), ("optimize", "--lambda-l2", "-1"), ("optimize", "--lambda-consistency", "nan"),
    ("optimize", "--early-stop", "0"), ("optimize", "--seed", "-1"), ("optimize", "--out-resolution", "7"),
    ("optimize", "--truncation", "inf"),
    ("apply", "--layers", "-1"), ("apply", "--layers", "3-"), ("apply", "--layers", "5-3"), ("apply", "--layers", "bogus"),
    ("apply", "--layers", "coarse,3"), ("apply", "--strength", "nan"), ("apply", "--strength", "1 inf"),
    ("edit", "--feather", "0.6"), ("edit", "--feather", "-0.1"), ("edit", "--strength", "nan"), ("edit", "--layers", "-2"),
    ("eval", "--batch-size", "0"), ("eval", "--sheet-columns", "-1"), ("eval", "--cell-size", "0"),
    ("eval", "--out-resolution", "100"), ("eval", "--strength", "nan"), ("eval", "--layers", "3-"),
    ("interpret", "--top-k", "0"), ("interpret", "--strength", "inf"), ("interpret", "--seeds", "-1"),
    ("fid", "--batch-size", "0"),
    ("bench generator", "--resolution", "7"), ("bench generator", "--batch", "0"), ("bench generator", "--repeats", "0"),
    ("bench generator", "--out-resolution", "3"), ("bench invert", "--batch", "1 0"), ("bench invert", "--resolution", "100"),
    ("bench eg3d", "--frames", "0"), ("bench eg3d", "--neural-resolution", "0"), ("bench optimize", "--steps", "0"),
    ("bench optimize", "--n-sources", "-1"),
    ("train-encoder", "--steps", "0"), ("train-encoder", "--lr", "0"), ("train-encoder", "--batch-size", "0"),
    ("train-encoder", "--val-fraction", "1"), ("train-encoder", "--val-every", "0"), ("train-encoder", "--save-every", "0"),
    ("train-encoder", "--seed", "-1"), ("train-encoder", "--out-resolution", "100"), ("train-encoder", "--lambda-l2", "nan"),
    ("train-encoder", "--n-sources", "0"),
    ("sat3d-train", "--steps", "-1"), ("sat3d-train", "--batch-size", "0"), ("sat3d-train", "--lr", "0"),
    ("sat3d-train", "--n-codes", "0"), ("sat3d-train", "--filter-candidates", "0"), ("sat3d-train", "--lambda-bg", "-1"),
    ("sat3d-train", "--lambda-ref", "nan"), ("sat3d-train", "--preselect-samples", "0"),
    ("sat3d-train", "--checkpoint-every", "0"), ("sat3d-train", "--seed", "4294967296"),
    ("sat3d-train", "--out-resolution", "7"), ("sat3d-train", "--truncation", "nan"),
    ("sat3d-transfer", "--delta", "4"), ("sat3d-transfer", "--delta", "-1"), ("sat3d-transfer", "--delta", "nan"),
    ("sat3d-transfer", "--instant", "0"), ("sat3d-transfer", "--compare", "-2"), ("sat3d-transfer", "--lr", "0"),
    ("sat3d-transfer", "--reference-seed", "-1"), ("sat3d-transfer", "--source-seeds", "3-"),
    ("sat3d-transfer", "--truncation", "inf"), ("sat3d-transfer", "--out-resolution", "9"),
]


@pytest.mark.parametrize(("command", "flag", "values"), BAD_VALUES, ids=[f"{c} {f} {v}" for c, f, v in BAD_VALUES])
def test_a_value_out_of_range_is_a_usage_error(command, flag, values, capsys):
    values = values.split()
    with pytest.raises(SystemExit) as info:
        main([*BASE[command], flag, *values])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"targetclip {command}: error: argument {flag}" in err, err
    assert repr(values[-1]) in err and "Traceback" not in err


def _all_actions(parser: argparse.ArgumentParser, prefix="targetclip"):
    """(command path, action) for every flag of every (sub)command."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _all_actions(sub, f"{prefix} {name}")
        else:
            yield prefix, action


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def test_every_numeric_flag_has_a_validator_and_its_default_passes_it():
    numeric = 0
    for command, action in _all_actions(build_parser()):
        if not isinstance(action, argparse._StoreAction):
            continue
        defaults = action.default if isinstance(action.default, (list, tuple)) else [action.default]
        takes_numbers = action.type in (int, float) or any(_is_number(d) for d in defaults)
        if not takes_numbers:
            continue
        numeric += 1
        where = f"{command} {'/'.join(action.option_strings)}"
        assert action.type not in (None, int, float), f"{where} takes numbers without a range check"
        if action.nargs is None and isinstance(action.default, list):  # one value that parses to a list (seeds)
            assert action.type(",".join(map(str, action.default))) == action.default, where
            continue
        for default in defaults:
            if _is_number(default):
                assert action.type(str(default)) == default, f"{where}: the default {default!r} fails its own check"
    assert numeric > 50  # the counts, sizes, rates and weights with a numeric default, across the families


def test_values_that_look_like_options_are_values():
    p = build_parser()
    assert p.parse_args([*BASE["render"], "--views", "-30,0:0,30:10"]).views == "-30,0:0,30:10"
    assert p.parse_args([*BASE["render"], "--views", "-30:5"]).views == "-30:5"
    assert p.parse_args([*BASE["apply"], "--strength", "-1", "-0.5", "2"]).strength == [-1.0, -0.5, 2.0]
    assert p.parse_args([*BASE["apply"], "--strength", "-1e-3"]).strength == [-0.001]
    assert p.parse_args([*BASE["render"], "--yaw-range", "-.5"]).yaw_range == -0.5


def test_accepted_values_come_back_parsed():
    p = build_parser()
    assert p.parse_args([*BASE["apply"], "--layers", "0-3,8"]).layers == [0, 1, 2, 3, 8]
    assert p.parse_args([*BASE["apply"], "--layers", " coarse , middle"]).layers == "coarse,middle"
    assert p.parse_args([*BASE["apply"], "--layers", "fine,all"]).layers == "all"
    assert p.parse_args([*BASE["optimize"], "--out-resolution", "auto"]).out_resolution == "auto"
    assert p.parse_args([*BASE["optimize"], "--out-resolution", "256", "--lr", "0"]).out_resolution == 256
    assert p.parse_args([*BASE["render"], "--seeds", "0-2,7"]).seeds == [0, 1, 2, 7]
    args = p.parse_args([*BASE["sat3d-transfer"], "--delta", "0", "3", "--source-seeds", "2-3"])
    assert args.delta == [0.0, 3.0] and args.source_seeds == [2, 3] and args.reference_seed == 1


def test_every_command_line_of_the_readme_parses():
    lines = [line.strip() for line in (REPO_ROOT / "README.md").read_text(encoding="utf-8").splitlines()
             if line.strip().startswith("targetclip ")]
    assert any("--views -30,0:0,30:10" in line for line in lines)
    p = build_parser()
    for line in lines:
        p.parse_args(shlex.split(line, comments=True)[1:])  # SystemExit (a usage error) fails the test


def test_render_views_as_the_readme_writes_them(tmp_path, capsys):
    gen = tmp_path / "eg3d.safetensors"
    save_generator(tiny_eg3d(), gen)
    out = tmp_path / "views"
    assert main(["render", "-g", str(gen), "--seeds", "0", "--views", "-30,0:0,30:10", "-o", str(out), "--device", "cpu"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["seed0000_view00.png", "seed0000_view01.png", "seed0000_view02.png"]
    assert "yaw -30.0, 0.0, 30.0 degrees" in capsys.readouterr().out


def test_an_out_resolution_the_generator_cannot_give_is_refused_before_rendering(tmp_path, capsys):
    gen = tmp_path / "g32.safetensors"
    save_generator(tiny_generator(32), gen)
    out = tmp_path / "renders"
    assert main(["render", "-g", str(gen), "--seeds", "0", "--out-resolution", "64", "-o", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("targetclip: error: --out-resolution 64") and "4, 8, 16, 32" in err and err.count("\n") == 1
    assert not out.exists()


# --------------------------------------------------------------------------- outputs, checked before any work


@pytest.fixture
def no_model_may_load(monkeypatch):
    """Every loader and long job a command could start fails the test if it is reached."""
    from targetclip_core.encoders import clip, inversion
    from targetclip_core.generators import load
    from targetclip_core.io import weights
    from targetclip_core.methods.targetclip import encoder_training, essence_encoder

    for module, name in ((load, "load_generator"), (clip, "load_clip"), (inversion, "load_inverter"),
                         (essence_encoder, "load_essence_encoder"), (encoder_training, "train_essence_encoder"),
                         (weights, "download")):
        def reached(*args, _name=name, **kwargs):
            raise AssertionError(f"{_name} was called although the output could not be written")

        monkeypatch.setattr(module, name, reached)


def _at(*parts):
    """A path under the test's folder, built when the case runs."""
    return lambda tmp: tmp.joinpath(*parts)


A_FILE, A_DIR = _at("notes.txt"), _at("taken.safetensors")  # made by the test: a file, and a folder named like a file
T1, T2 = _at("a", "t.png"), _at("b", "t.png")

# name -> (argv, what the error must name); callables get the test's folder.
OUTPUT_CASES = {
    "convert into a directory": (["convert", "g.pt", A_DIR], A_DIR),
    "convert under a file": (["convert", "g.pt", _at("notes.txt", "g.safetensors")], _at("notes.txt", "g.safetensors")),
    "render into a file": ([*BASE["render"], "-o", A_FILE], A_FILE),
    "render under a file": ([*BASE["render"], "-o", _at("notes.txt", "sub")], _at("notes.txt", "sub")),
    "download into a file": (["download", "stylegan2-ada-ffhq", "--dest", A_FILE], A_FILE),
    "optimize as .npy": (["optimize", "-t", "t.png", "-g", "g.pt", "-o", _at("e.npy")], _at("e.npy")),
    "optimize grid as .jpg": ([*BASE["optimize"], "--grid", _at("g.jpg")], _at("g.jpg")),
    "optimize several into one file": (["optimize", "-t", T1, "x.png", "-g", "g.pt", "-o", _at("e.safetensors")],
                                       _at("e.safetensors")),
    "optimize several into a file": (["optimize", "-t", T1, "x.png", "-g", "g.pt", "-o", A_FILE], A_FILE),
    "optimize several of one name": (["optimize", "-t", T1, T2, "-g", "g.pt", "-o", _at("ess")], "targets t share a name"),
    "apply into a file": (["apply", "-e", "e.safetensors", "-g", "g.pt", "--seeds", "0", "-o", A_FILE], A_FILE),
    "invert as .npy": (["invert", "p.jpg", "--out", _at("w.npy")], _at("w.npy")),
    "invert several under a file": (["invert", "p.jpg", "q.jpg", "--out", _at("notes.txt", "w")], _at("notes.txt", "w")),
    "encode as .pt": (["encode", "t.jpg", "--encoder", "enc.pt", "--out", _at("e.pt")], _at("e.pt")),
    "edit into a file": (["edit", "p.jpg", "--essence", "e.npy", "--out", A_FILE], A_FILE),
    "train-encoder into a file": (["train-encoder", "--images", "i", "--init", "e4e.pt", "--out-dir", A_FILE], A_FILE),
    "eval into a file": ([*BASE["eval"][:-1], A_FILE], A_FILE),
    "sat3d-train as .pt": (["sat3d-train", "-g", "g.pt", "-o", _at("m.pt")], _at("m.pt")),
    "sat3d-train into a directory": (["sat3d-train", "-g", "g.pt", "-o", A_DIR], A_DIR),
    "sat3d-train checkpoint is a directory": ([*BASE["sat3d-train"], "--checkpoint", A_DIR], A_DIR),
    "sat3d-train statistics under a file": ([*BASE["sat3d-train"], "--preselect-stats", _at("notes.txt", "s")],
                                            _at("notes.txt", "s")),
    "sat3d-transfer into a file": ([*BASE["sat3d-transfer"], "-o", A_FILE], A_FILE),
}


def test_the_output_cases_cover_every_command_that_writes():
    writers = {"convert", "download", "render", "optimize", "apply", "invert", "encode", "edit", "train-encoder",
               "eval", "sat3d-train", "sat3d-transfer"}
    assert {name.split()[0] for name in OUTPUT_CASES} == writers


@pytest.mark.parametrize("case", OUTPUT_CASES)
def test_an_output_that_cannot_be_written_fails_first_naming_it(case, tmp_path, capsys, no_model_may_load):
    A_FILE(tmp_path).write_text("x")
    A_DIR(tmp_path).mkdir()
    argv, named = OUTPUT_CASES[case]
    argv = [str(a(tmp_path)) if callable(a) else a for a in argv]
    named = str(named(tmp_path)) if callable(named) else named
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("targetclip: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert named in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing made


@pytest.mark.skipif(not sys.platform.startswith("linux") or not os.path.isdir("/proc/self"), reason="Linux /proc")
def test_a_folder_nobody_can_write_fails_first(capsys, no_model_may_load):
    """/proc takes no new files, not even from root: the real write probe tells."""
    assert main([*BASE["render"], "-o", "/proc/targetclip-renders"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("targetclip: error: /proc/targetclip-renders: ") and "not writable" in err


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="POSIX modes; root writes in read-only folders")
def test_a_read_only_folder_fails_first(tmp_path, capsys, no_model_may_load):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert main(["optimize", "-t", "t.png", "-g", "g.pt", "-o", str(ro / "e.safetensors")]) == 2
    finally:
        ro.chmod(0o755)
    err = capsys.readouterr().err
    assert str(ro / "e.safetensors") in err and "not writable" in err


def test_the_sat3d_entry_point_reports_the_same_way(tmp_path, capsys, no_model_may_load):
    (tmp_path / "out").write_text("x")
    assert cli_sat3d.main([*BASE["sat3d-transfer"], "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"targetclip: error: {tmp_path / 'out'}: ") and err.count("\n") == 1


# --------------------------------------------------------------------------- failures while running: one line


def _raising(exc):
    def handler(args):
        raise exc

    return handler


def test_a_file_error_while_running_is_one_line(capsys):
    assert run_command(_raising(OSError(errno.ENOSPC, "No space left on device", "/data/out/seed0001.png")), None) == 2
    assert capsys.readouterr().err == "targetclip: error: /data/out/seed0001.png: No space left on device\n"
    # a rename names its destination: the user's file, not the temporary one
    rename = IsADirectoryError(errno.EISDIR, "Is a directory", "/data/.m.safetensors.1.ab.part", None, "/data/m.safetensors")
    assert run_command(_raising(rename), None) == 2
    assert capsys.readouterr().err == "targetclip: error: /data/m.safetensors: Is a directory\n"
    assert run_command(_raising(TargetCLIPError("x.npy: not an essence")), None) == 2
    assert capsys.readouterr().err == "targetclip: error: x.npy: not an essence\n"


def test_an_error_that_names_no_file_is_a_bug_and_keeps_its_traceback():
    with pytest.raises(OSError, match="socket"):
        run_command(_raising(OSError("socket closed")), None)
    with pytest.raises(ZeroDivisionError):
        run_command(_raising(ZeroDivisionError()), None)


# --------------------------------------------------------------------------- SAT3D's reports, written atomically


def test_sat3d_reports_are_replaced_whole_never_rewritten_in_place(tmp_path, capsys):
    register_tiny_clip()
    gen, matrix, out = tmp_path / "g.safetensors", tmp_path / "m.safetensors", tmp_path / "cmp"
    save_generator(tiny_generator(32), gen)
    tiny = ["--clip", TINY_CLIP, "--pretrained", "none", "--out-resolution", "16", "--device", "cpu"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["sat3d-train", "-g", str(gen), "-o", str(matrix), "--steps", "1", "--n-codes", "2", "--batch-size", "1",
                     "--no-filter-training-set", *tiny]) == 0
    compare = ["sat3d-transfer", "-g", str(gen), "-m", str(matrix), "--compare", "1", "--source-seeds", "0",
               "--reference-seed", "5", "-a", "Hairstyle", "-o", str(out), *tiny]
    reports = ("transfer.json", "compare.csv", "compare.md")
    assert main(compare) == 0
    inodes = {name: (out / name).stat().st_ino for name in reports}
    assert main(compare) == 0
    for name in reports:  # a new file renamed over the old one: a kill mid-write leaves the old one whole
        assert (out / name).stat().st_ino != inodes[name], name
    assert json.loads((out / "transfer.json").read_text(encoding="utf-8"))["mode"] == "compare"
    assert (out / "compare.csv").read_text(encoding="utf-8").startswith("pair,source,winner,")
    assert (out / "compare.md").read_text(encoding="utf-8").startswith("# SAT3D: trained matrix vs instant")
    assert not [p.name for p in out.iterdir() if p.name.endswith(".part")]
    capsys.readouterr()
