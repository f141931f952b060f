"""Hostile and broken files of the methods' own formats: essences, latents, SAT3D matrices, pre-selection statistics,
descriptor files, vocabularies, training logs and resume files.  Each is built here, tiny, and must be refused with
one of our errors naming the file -- never a raw TypeError / KeyError / RecursionError, never accepted when its
values are wrong (a NaN matrix renders black) -- and the files we write are the same bytes in every process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.forged_safetensors import forged_safetensors
from safetensors.torch import save_file

from targetclip_core.errors import CheckpointError, LatentError, TargetCLIPError
from targetclip_core.generators.latents import load_latents, save_latents
from targetclip_core.generators.stylespace import StyleLayout
from targetclip_core.methods.sat3d.checkpoint import load_checkpoint, save_checkpoint
from targetclip_core.methods.sat3d.descriptors import load_descriptors
from targetclip_core.methods.sat3d.losses import LOSS_TERMS
from targetclip_core.methods.sat3d.matrix import SAT3DMatrix, load_sat3d_matrix, save_sat3d_matrix
from targetclip_core.methods.sat3d.preselect import (
    PreselectStatistics,
    load_preselect_statistics,
    save_preselect_statistics,
)
from targetclip_core.methods.targetclip.encoder_training import (
    CHECKPOINT_FORMAT as ENCODER_FORMAT,
)
from targetclip_core.methods.targetclip.encoder_training import (
    LossLog,
    load_optimizer_state,
    read_loss_log,
    train_essence_encoder,
)
from targetclip_core.methods.targetclip.essence import Essence, load_essence, save_essence
from targetclip_core.metrics.interpret import read_vocabulary

REPO = Path(__file__).resolve().parents[2]
LAYOUT = StyleLayout((("b4.conv1", 3), ("b8.conv0", 2)))
ATTRS = ["hair", "glasses"]
IDENTITY = {"arch": "stylegan2", "resolution": 8, "n_latent": 4, "w_dim": 8}


def _refused(load, path, match, error=TargetCLIPError):
    """load(path) raises `error` matching `match` and naming the file."""
    with pytest.raises(error, match=match) as info:
        load(path)
    assert str(path) in str(info.value), str(info.value)
    return info.value


def _matrix() -> SAT3DMatrix:
    return SAT3DMatrix(logits=torch.linspace(-1, 1, 15).reshape(3, 5), attributes=list(ATTRS), layout=LAYOUT,
                       generator=dict(IDENTITY), fingerprint="f" * 64, descriptors="builtin:faces", steps=3,
                       losses={"total": [1.0, 0.5, 0.25]}, preselection="none", objective={"name": "paper"})


def _with_metadata(path: Path, tensors: dict, meta: dict, **changes) -> Path:
    """A copy of a file's tensors and metadata with some entries changed (None: removed)."""
    meta = dict(meta)
    for key, value in changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    save_file(tensors, str(path), metadata=meta)
    return path


def _read(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()  # noqa: SIM118 - safe_open is not a dict


# --------------------------------------------------------------------------- deterministic writes


WRITE_ALL = """
import sys, torch
from pathlib import Path
sys.path[:0] = ["tests", "tests/methods"]
from test_hostile_method_files import IDENTITY, _matrix, _statistics
from targetclip_core.generators.latents import save_latents
from targetclip_core.methods.sat3d.matrix import save_sat3d_matrix
from targetclip_core.methods.sat3d.preselect import save_preselect_statistics
from targetclip_core.methods.targetclip.essence import Essence, save_essence
out = Path(sys.argv[1])
g = torch.Generator().manual_seed(0)
save_essence(out / "e.safetensors", Essence(vector=torch.randn(1, 4, 8, generator=g), generator=dict(IDENTITY),
             clip={"name": "tiny", "pretrained": ""}, losses={"total": [2.0, 1.0]}, steps=2, strength=0.8, name="x",
             thumbnail=torch.zeros(4, 4, 3, dtype=torch.uint8), coefficients=torch.ones(2)))
save_latents(out / "l.safetensors", torch.randn(2, 4, 8, generator=g), dict(IDENTITY))
save_sat3d_matrix(out / "m.safetensors", _matrix())
save_preselect_statistics(out / "s.safetensors", _statistics())
"""


def test_our_files_are_the_same_bytes_in_two_processes(tmp_path):
    runs = []
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        subprocess.run([sys.executable, "-c", WRITE_ALL, str(tmp_path / name)], check=True, cwd=REPO, timeout=120)
        runs.append({p.name: p.read_bytes() for p in sorted((tmp_path / name).iterdir())})
    assert sorted(runs[0]) == ["e.safetensors", "l.safetensors", "m.safetensors", "s.safetensors"]
    assert runs[0] == runs[1]
    assert load_sat3d_matrix(tmp_path / "one" / "m.safetensors").losses == {"total": [1.0, 0.5, 0.25]}
    assert load_essence(tmp_path / "one" / "e.safetensors").strength == 0.8


# --------------------------------------------------------------------------- SAT3D matrices


@pytest.fixture
def matrix_file(tmp_path):
    return _read(save_sat3d_matrix(tmp_path / "good.safetensors", _matrix()))


def test_a_good_matrix_round_trips(tmp_path):
    m = load_sat3d_matrix(save_sat3d_matrix(tmp_path / "m.safetensors", _matrix()))
    assert torch.equal(m.logits, _matrix().logits) and m.attributes == ATTRS and m.layout == LAYOUT and m.steps == 3


@pytest.mark.parametrize("changes, match", [
    ({"attributes": "5"}, "'attributes' of the SAT3D matrix file is a number, not an array"),
    ({"attributes": '["hair", 3]'}, "attributes must be a list of distinct names"),
    ({"attributes": '["hair", "hair"]'}, "attributes must be a list of distinct names"),
    ({"layout": '{"b4.conv1": 3}'}, "'layout' of the SAT3D matrix file is an object, not an array"),
    ({"layout": '[["b4.conv1", "3"], ["b8.conv0", 2]]'}, "list of \\[layer name, channel count\\] pairs"),
    ({"generator": "[1]"}, "'generator' of the SAT3D matrix file is an array, not an object"),
    ({"generator": "{"}, "'generator' is not valid JSON"),
    ({"fingerprint": None}, "has no 'fingerprint' metadata entry"),
    ({"steps": "abc"}, "'steps' of the SAT3D matrix file is 'abc', not a whole number"),
    ({"steps": "-1"}, "less than 0"),
    ({"losses": "[1]"}, "'losses' of the SAT3D matrix file is an array, not an object"),
    ({"losses": '{"total": "high"}'}, "holds a string for 'total'"),
    ({"objective": "5"}, "'objective' of the SAT3D matrix file is a number, not an object"),
    ({"clip": '"ViT"'}, "'clip' of the SAT3D matrix file is a string, not an object or null"),
    ({"training_set": "null"}, "'training_set' of the SAT3D matrix file is null, not an object"),
])
def test_mistyped_matrix_metadata_is_refused(tmp_path, matrix_file, changes, match):
    tensors, meta = matrix_file
    _refused(load_sat3d_matrix, _with_metadata(tmp_path / "bad.safetensors", tensors, meta, **changes), match)


@pytest.mark.parametrize("logits, match, error", [
    (torch.full((3, 5), float("nan")), "tensor 'logits' of the SAT3D matrix file contains NaN", TargetCLIPError),
    (torch.tensor([[0.0] * 5, [float("inf")] * 5, [0.0] * 5]), "contains NaN or infinite", TargetCLIPError),
    (torch.zeros(3, 5, dtype=torch.int64), "torch.int64, not a floating-point tensor", TargetCLIPError),
    (torch.zeros(15), "not 2 dimensions", TargetCLIPError),
    (torch.zeros(2, 5), "does not fit 2 attributes", LatentError),
])
def test_bad_matrix_logits_are_refused(tmp_path, matrix_file, logits, match, error):
    _, meta = matrix_file
    _refused(load_sat3d_matrix, _with_metadata(tmp_path / "bad.safetensors", {"logits": logits}, meta), match, error)


def test_a_matrix_without_logits_is_refused(tmp_path, matrix_file):
    _, meta = matrix_file
    path = _with_metadata(tmp_path / "bad.safetensors", {"other": torch.zeros(1)}, meta)
    _refused(load_sat3d_matrix, path, "has no tensor 'logits' \\(it has: other\\)")


def test_a_matrix_with_a_lying_header_is_refused(tmp_path):
    path = forged_safetensors(tmp_path / "bomb.safetensors", {"__metadata__": {"format": "targetclip.sat3d.matrix"}},
                              declared_length=1 << 50)
    _refused(load_sat3d_matrix, path, "unreadable SAT3D matrix file \\(its safetensors header claims")


# --------------------------------------------------------------------------- pre-selection statistics


def _statistics() -> PreselectStatistics:
    return PreselectStatistics(["hair", "eyes"], torch.arange(10, dtype=torch.float64).reshape(2, 5),
                               torch.tensor([2, 1]), 2, 3, 0, None, "f" * 64)


@pytest.mark.parametrize("changes, match", [
    ({"regions": "5"}, "'regions' of the SAT3D pre-selection statistics is a number, not an array"),
    ({"regions": "[1, 2]"}, "regions \\[1, 2\\] are not distinct names"),
    ({"resolution": '"x"'}, "'resolution' of the SAT3D pre-selection statistics is a string, not a number or null"),
    ({"resolution": "0"}, "render size 0"),
    ({"done": "4"}, "4 of 3 images done"),
    ({"n_samples": "0"}, "'n_samples' .* is 0, less than 1"),
    ({"seed": None}, "has no 'seed' metadata entry"),
])
def test_mistyped_statistics_metadata_is_refused(tmp_path, changes, match):
    tensors, meta = _read(save_preselect_statistics(tmp_path / "good.safetensors", _statistics()))
    _refused(load_preselect_statistics, _with_metadata(tmp_path / "bad.safetensors", tensors, meta, **changes), match)


@pytest.mark.parametrize("tensors, match", [
    ({"sums": torch.full((2, 5), float("nan"), dtype=torch.float64)}, "tensor 'sums' .* contains NaN"),
    ({"sums": torch.zeros(3, 5, dtype=torch.float64)}, "sums must be a float tensor \\[2 regions, channels\\]"),
    ({"sums": -torch.ones(2, 5, dtype=torch.float64)}, "negative values"),
    ({"sums": torch.zeros(2, 5)}, "tensor 'sums' .* is torch.float32, not torch.float64"),
    ({"counts": torch.zeros(2)}, "tensor 'counts' .* is torch.float32, not torch.int64"),
    ({"counts": torch.tensor([5, 0])}, "image counts \\[5, 0\\] outside 0..2"),
    ({"counts": torch.tensor([1, 1, 1])}, "counts must be whole numbers \\[2 regions\\]"),
])
def test_bad_statistics_tensors_are_refused(tmp_path, tensors, match):
    good, meta = _read(save_preselect_statistics(tmp_path / "good.safetensors", _statistics()))
    _refused(load_preselect_statistics, _with_metadata(tmp_path / "bad.safetensors", {**good, **tensors}, meta), match)


# --------------------------------------------------------------------------- essences and latents


@pytest.fixture
def essence_file(tmp_path):
    e = Essence(vector=torch.ones(1, 4, 8), generator=dict(IDENTITY), thumbnail=torch.zeros(4, 4, 3, dtype=torch.uint8))
    return _read(save_essence(tmp_path / "good.safetensors", e))


@pytest.mark.parametrize("changes, match", [
    ({"generator": '"x"'}, "'generator' of the essence file is a string, not an object"),
    ({"clip": "5"}, "'clip' of the essence file is a number, not an object or null"),
    ({"losses": "[1]"}, "'losses' of the essence file is an array, not an object"),
    ({"steps": "1.5"}, "'steps' of the essence file is '1.5', not a whole number"),
    ({"strength": "inf"}, "'strength' of the essence file is 'inf', not a finite number"),
])
def test_mistyped_essence_metadata_is_refused(tmp_path, essence_file, changes, match):
    tensors, meta = essence_file
    _refused(load_essence, _with_metadata(tmp_path / "bad.safetensors", tensors, meta, **changes), match)


@pytest.mark.parametrize("tensors, match, error", [
    ({"essence": torch.zeros(1, 4, 8, dtype=torch.int32)}, "tensor 'essence' .* not a floating-point", TargetCLIPError),
    ({"essence": None}, "has no tensor 'essence'", TargetCLIPError),
    ({"thumbnail": torch.zeros(2)}, "tensor 'thumbnail' .* is torch.float32, not torch.uint8", TargetCLIPError),
    ({"thumbnail": torch.zeros(4, 4, 4, dtype=torch.uint8)}, "thumbnail is an RGB image", TargetCLIPError),
    ({"coefficients": torch.tensor([float("nan")])}, "tensor 'coefficients' .* contains NaN", LatentError),
    ({"essence": torch.full((1, 4, 8), float("nan"))}, "tensor 'essence' .* contains NaN", LatentError),
])
def test_bad_essence_tensors_are_refused(tmp_path, essence_file, tensors, match, error):
    good, meta = essence_file
    merged = {k: v for k, v in {**good, **tensors}.items() if v is not None}
    _refused(load_essence, _with_metadata(tmp_path / "bad.safetensors", merged, meta), match, error)


def test_latent_files_with_a_lying_header_or_nan_are_latent_errors(tmp_path):
    path = forged_safetensors(tmp_path / "bomb.safetensors", {"__metadata__": {}}, declared_length=1 << 40)
    _refused(load_latents, path, "unreadable latent file", LatentError)
    bad = torch.zeros(1, 4, 8)
    bad[0, 1, 2] = float("nan")
    _refused(load_latents, save_latents(tmp_path / "nan.safetensors", bad), "contains NaN", LatentError)
    good = torch.randn(2, 4, 8)
    assert torch.equal(load_latents(save_latents(tmp_path / "ok.safetensors", good, dict(IDENTITY))), good)


def test_a_pickle_latent_file_runs_nothing_and_is_a_latent_error(tmp_path):
    import pickle

    marker = tmp_path / "RAN"

    class Boom:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / "latents.pt"
    path.write_bytes(pickle.dumps({"wplus": Boom()}, protocol=2))
    _refused(load_latents, path, "nothing from", LatentError)  # the checkpoint reader refused it
    assert not marker.exists()


# --------------------------------------------------------------------------- descriptor files


def _json(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_a_descriptor_file_extending_itself_is_refused_not_recursed(tmp_path):
    path = tmp_path / "self.json"
    _json(path, {"extends": str(path), "attributes": {"x": [["a", "b"]]}})
    _refused(load_descriptors, path, "'extends' makes a cycle")


def test_a_cycle_of_extends_is_refused_naming_every_file(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    _json(a, {"extends": str(b), "attributes": {"x": [["a", "b"]]}})
    _json(b, {"extends": str(a), "attributes": {"y": [["c", "d"]]}})
    err = _refused(load_descriptors, a, "cycle")
    assert "a.json -> " in str(err) and "b.json -> " in str(err)


def test_a_long_chain_of_extends_is_refused(tmp_path):
    files = [tmp_path / f"d{i}.json" for i in range(20)]
    for i, f in enumerate(files):
        _json(f, {"extends": str(files[i + 1]) if i + 1 < len(files) else "faces", "attributes": {f"a{i}": [["p", "q"]]}})
    _refused(load_descriptors, files[0], "a chain of more than 16 'extends'")
    assert load_descriptors(files[10]).names[-1] == "a10"  # 10 files and faces: fine


def test_a_descriptor_file_extending_a_builtin_still_works(tmp_path):
    path = _json(tmp_path / "mine.json", {"extends": "faces", "attributes": {"freckles": [["freckles", "no freckles"]]}})
    got = load_descriptors(path)
    assert got.names[-1] == "freckles" and got.names[:-1] == load_descriptors("faces").names


@pytest.mark.parametrize("raw, match", [
    ('{"attributes": {"h\xe9": [["a", "b"]]}}'.encode("latin-1"), "not UTF-8 text \\(byte 0xe9 at offset 18\\)"),
    (b"[" * 100_000 + b"]" * 100_000, "too deeply"),
    (b'{"attributes": {"x": [["a", "b"]]}, "template": NaN}', "NaN is not a JSON value"),
    (b'{"attributes": {"x": 5}}', "attribute 'x' must be an object"),
    (b'{"attributes": {"x": {"groups": 5}}}', "'groups' of 'x' must be a list"),
    (b'{"template": 5, "attributes": {"x": [["a", "b"]]}}', "'template' must be a string, got a number"),
    (b'{"template": "{} {name}", "attributes": {"x": [["a", "b"]]}}', "must hold one '\\{\\}' and no other braces"),
    (b'{"attributes": {"x": {"groups": [["a", "b"]], "region": 5}}}', "'region' of 'x' must be a region name"),
    (b'{"attributes": {"x": {"groups": [["a", "b"]], "complex": "no"}}}', "'complex' of 'x' must be true or false"),
    (b'{"domain": [1], "attributes": {"x": [["a", "b"]]}}', "'domain' must be a string, got an array"),
    (b'{"extends": 5, "attributes": {"x": [["a", "b"]]}}', "'extends' names a built-in set"),
])
def test_malformed_descriptor_files_are_refused(tmp_path, raw, match):
    path = tmp_path / "d.json"
    path.write_bytes(raw)
    _refused(load_descriptors, path, match)


def test_a_huge_descriptor_file_is_refused_by_its_size(tmp_path):
    path = tmp_path / "big.json"
    with open(path, "wb") as f:
        f.truncate(1 << 30)  # sparse: a GiB claimed, nothing on disk; refused from its size alone
    _refused(load_descriptors, path, "1,073,741,824 bytes, more than the 4,194,304")


# --------------------------------------------------------------------------- vocabularies and loss logs


def test_a_non_utf8_vocabulary_is_refused(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_bytes("red hair\ncaf\xe9\n".encode("latin-1"))
    _refused(read_vocabulary, path, "vocabulary is not UTF-8 text \\(byte 0xe9 at offset 12\\)")
    path.write_bytes("\ufeffred hair\n# comment\ncafé\n".encode("utf-8"))
    assert read_vocabulary(path) == ["red hair", "café"]  # a BOM is not part of the first phrase


HEADER = "step,split,total,similarity,consistency,l2"


@pytest.mark.parametrize("text, match", [
    ("step,split,total\n1,train,1\n", "not a training loss log \\(no column similarity, consistency, l2"),
    (HEADER + "\nx,train,1,1,1,1\n", "line 2 of the training loss log does not parse"),
    (HEADER + "\n1,train,1,1,1,1\n2,train\n", "line 3 of the training loss log does not parse"),
    (HEADER + "\n1,test,1,1,1,1\n", "line 2"),
    (HEADER + "\n1,train,1,1,1,1,9\n", "line 2"),
    (HEADER + "\n1,train,one,1,1,1\n", "line 2"),
])
def test_malformed_loss_logs_are_refused_on_read_and_resume(tmp_path, text, match):
    path = tmp_path / "loss_log.csv"
    path.write_text(text)
    _refused(read_loss_log, path, match)
    _refused(lambda p: LossLog(p, resume_step=3), path, match)
    assert path.read_text() == text  # a refused log is left as it was


def test_a_non_utf8_loss_log_is_refused(tmp_path):
    path = tmp_path / "loss_log.csv"
    path.write_bytes((HEADER + "\n1,tr\xe9in,1,1,1,1\n").encode("latin-1"))
    _refused(read_loss_log, path, "training loss log is not UTF-8 text")


def test_a_resumed_log_keeps_the_rows_up_to_the_step(tmp_path):
    path = tmp_path / "loss_log.csv"
    rows = "".join(f"\n{s},train,{s}.5,1,0.25,1e-05" for s in (1, 2, 3, 4)) + "\n3,val,0.125,1,1,1"
    path.write_text(HEADER + rows + "\n")
    LossLog(path, resume_step=3)
    assert [(r["step"], r["split"], r["total"]) for r in read_loss_log(path)] == [
        (1, "train", 1.5), (2, "train", 2.5), (3, "train", 3.5), (3, "val", 0.125)]
    assert path.read_text().splitlines()[1] == "1,train,1.5,1,0.25,1e-05"  # written as the run writes rows


# --------------------------------------------------------------------------- SAT3D training checkpoints


class _Identity:
    def __init__(self):
        self.identity = dict(IDENTITY)


REMOVE = object()


def _sat3d_checkpoint(path: Path, steps: int = 2, **changes) -> Path:
    """A checkpoint of `steps` training steps as save_checkpoint writes it, then `changes` (REMOVE: key dropped)."""
    logits = torch.nn.Parameter(torch.zeros(len(ATTRS) + 1, LAYOUT.n_channels))
    opt = torch.optim.Adam([logits])
    logits.grad = torch.ones_like(logits)
    opt.step()
    log = {k: [0.5] * steps for k in LOSS_TERMS}
    save_checkpoint(path, _Identity(), list(ATTRS), LAYOUT, logits, opt, steps, torch.Generator().get_state(), 2, 1, log,
                    ["hair"] * steps, "none", statistics=_statistics().to_state(), objective={"summary": "paper"})
    if changes:
        state = torch.load(path, weights_only=True)
        for key, value in changes.items():
            if value is REMOVE:
                state.pop(key)
            else:
                state[key] = value
        torch.save(state, path)
    return path


def _load_sat3d(path):
    return load_checkpoint(path, None, list(ATTRS), LAYOUT)


def test_a_good_sat3d_checkpoint_loads(tmp_path):
    state = _load_sat3d(_sat3d_checkpoint(tmp_path / "run.ckpt"))
    assert state["step"] == 2 and state["logits"].shape == (3, 5)


@pytest.mark.parametrize("changes, match", [
    ({"attributes": REMOVE}, "incomplete SAT3D training checkpoint \\(no attributes\\)"),
    ({"layout": 5}, "StyleSpace layout must be a list"),
    ({"attributes": torch.zeros(2)}, "checkpoint of another run"),
    ({"step": "2"}, "step '2' is not a whole number"),
    ({"logits": torch.zeros(7)}, "logits must be a float tensor \\[3, 5\\]"),
    ({"logits": torch.full((3, 5), float("nan"))}, "logits hold NaN"),
    ({"optimizer": None}, "logits and optimizer state must be stored together"),
    ({"optimizer": {"state": {0: {"exp_avg": torch.zeros(4, 4)}}, "param_groups": [{"params": [0]}]}},
     "optimizer's 'exp_avg' has shape \\[4, 4\\]"),
    ({"rng": torch.zeros(3)}, "sampler state is not a CPU random generator state"),
    ({"log": {"total": [1.0, 2.0]}}, "the loss log must hold"),
    ({"log_attribute": ["hair", "beard"]}, "attribute log must name one of hair, glasses"),
    ({"preselect_statistics": {"regions": "hair"}}, "unusable pre-selection statistics"),
    ({"training_set": {"report": {}, "bank": torch.full((2, 8), float("nan"))}}, "latent bank is not a finite"),
    ({"objective": "paper"}, "objective is str, not a dict"),
    ({"batch_size": 0}, "batch_size 0"),
])
def test_damaged_sat3d_checkpoints_are_refused(tmp_path, changes, match):
    _refused(_load_sat3d, _sat3d_checkpoint(tmp_path / "run.ckpt", **changes), match)


def test_a_sat3d_checkpoint_of_another_format_is_refused(tmp_path):
    path = tmp_path / "other.ckpt"
    torch.save({"format": "something else"}, path)
    _refused(_load_sat3d, path, "not a SAT3D training checkpoint")
    path.write_bytes(b"garbage")
    _refused(_load_sat3d, path, None)  # whatever the reader makes of it: our error, naming the file


# --------------------------------------------------------------------------- essence-encoder last.pt


def _last_pt(folder: Path, **changes) -> Path:
    ckpt = {"state_dict": {"encoder.w": torch.zeros(2)}, "optimizer": {"state": {}, "param_groups": []},
            "opts": {"format": ENCODER_FORMAT, "targetclip_train": {"steps": 3}, "sources": "tensor"},
            "global_step": 2, "best_val_loss": 0.5, "best_step": 2, "sources": torch.zeros(1, 4, 8)}
    for key, value in changes.items():
        if key.startswith("opts."):
            ckpt["opts"][key[5:]] = value
        else:
            ckpt[key] = value
    folder.mkdir(exist_ok=True)
    torch.save(ckpt, folder / "last.pt")
    return folder / "last.pt"


def _resume(path):
    return train_essence_encoder("unused-init", [], path.parent, resume=True)


@pytest.mark.parametrize("changes, match", [
    ({"opts.format": "other"}, "not a resumable essence-encoder training checkpoint"),
    ({"opts.targetclip_train": [1]}, "its opts lack the run's settings"),
    ({"opts.targetclip_train": {"steps": torch.zeros(3)}}, "its opts lack the run's settings"),
    ({"opts.sources": 5}, "its opts lack the run's settings"),
    ({"state_dict": {"encoder.w": [1, 2]}}, "'state_dict' is not a dict of tensors"),
    ({"optimizer": [1]}, "'optimizer' is not an optimizer state_dict"),
    ({"global_step": -1}, "global_step -1"),
    ({"best_val_loss": float("nan")}, "best_val_loss nan is not a finite number"),
    ({"best_step": 9}, "best_step 9 does not go with"),
    ({"best_val_loss": None}, "does not go with best_val_loss None"),
    ({"sources": torch.full((1, 4, 8), float("inf"))}, "'sources' are not finite W\\+ latents"),
    ({"sources": torch.zeros(4, 8)}, "'sources' are not finite W\\+ latents"),
])
def test_damaged_encoder_resume_files_are_refused(tmp_path, changes, match):
    _refused(_resume, _last_pt(tmp_path / "run", **changes), match, CheckpointError)


def test_an_optimizer_state_of_other_shapes_is_refused(tmp_path):
    param = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.Adam([param])
    good = {"state": {0: {"step": torch.tensor(1.0), "exp_avg": torch.zeros(3), "exp_avg_sq": torch.zeros(3)}},
            "param_groups": [{**opt.param_groups[0], "params": [0]}]}
    load_optimizer_state(opt, good, "last.pt")
    bad = {**good, "state": {0: {**good["state"][0], "exp_avg": torch.zeros(5)}}}
    with pytest.raises(CheckpointError, match="last.pt: its optimizer's 'exp_avg' has shape \\[5\\]"):
        load_optimizer_state(torch.optim.Adam([param]), bad, "last.pt")
    with pytest.raises(CheckpointError, match="last.pt: its optimizer state does not fit"):
        load_optimizer_state(torch.optim.Adam([param]), {**good, "param_groups": [{"params": [0, 1]}]}, "last.pt")
