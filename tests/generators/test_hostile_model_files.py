"""Hostile and broken model files at the loaders' level: generators (rosinality, NVlabs, our
safetensors), e4e/pSp encoders, CLIP folders.

Every case must end in a correct load or one of the project's errors naming the file, in bounded
time and memory: declared sizes are checked against the architecture limits and against the file's
own tensors (a meta-device skeleton) before a network is allocated.  The container formats
themselves (torch zips, pickles) have their own hostile tests in tests/formats/.
"""

from __future__ import annotations

import json
import math
import random
import signal
import sys
from pathlib import Path

import pytest
import torch
from helpers.bounded import run_bounded
from helpers.encoders import official_checkpoint, tiny_encoder
from helpers.generators import random_rosinality_state, write_rosinality_checkpoint
from helpers.nvlabs import random_nvlabs_state, write_nvlabs_pickle

from targetclip_core.encoders.inversion import load_inverter
from targetclip_core.errors import CheckpointError, TargetCLIPError
from targetclip_core.generators.load import load_generator, save_generator
from targetclip_core.methods.optimization import check_converged, check_run_settings

POSIX = sys.platform != "win32"


@pytest.fixture(scope="module")
def model_files(tmp_path_factory) -> dict[str, Path]:
    """One small valid file per loader format."""
    d = tmp_path_factory.mktemp("valid")
    ros = random_rosinality_state(resolution=8, channels={4: 4, 8: 4}, style_dim=8, n_mlp=2)
    files = {"rosinality": write_rosinality_checkpoint(d / "ros.pt", ros)}
    nv = random_nvlabs_state(8, {4: 4, 8: 4}, 8, 8, 0, 2)
    files["nvlabs"] = write_nvlabs_pickle(d / "nv.pkl", nv, resolution=8, z_dim=8, w_dim=8, n_mlp=2,
                                          channel_base=32, channel_max=4)
    save_generator(load_generator(files["rosinality"], device="cpu"), d / "ours.safetensors")
    files["safetensors"] = d / "ours.safetensors"
    files["e4e"] = official_checkpoint(d / "e4e.pt", tiny_encoder().state_dict(), latent_avg=torch.zeros(8, 32))
    return files


LOADERS = {
    "rosinality": lambda p: load_generator(p, device="cpu"),
    "nvlabs": lambda p: load_generator(p, device="cpu"),
    "safetensors": lambda p: load_generator(p, device="cpu"),
    "e4e": lambda p: load_inverter(p, device="cpu"),
}


def _refused(load, path: Path, error=CheckpointError) -> str:
    with pytest.raises(error) as e:
        load(path)
    assert str(path) in str(e.value), str(e.value)
    return str(e.value)


def _safetensors_parts(path: Path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    return load_file(path), meta


# --------------------------------------------------------------------------- configs in our metadata


CONFIG_LIES = {
    "resolution as text": {"resolution": "8"},
    "resolution not a power of two": {"resolution": 12},
    "resolution of 2**40": {"resolution": 2**40},
    "negative resolution": {"resolution": -8},
    "channels as a list": {"channels": [4, 4]},
    "channels keyed by words": {"channels": {"a": 4, "8": 4}},
    "negative channels": {"channels": {"4": -4, "8": 4}},
    "a billion mapping layers": {"n_mlp": 10**9},
    "z_dim of a billion": {"z_dim": 10**9},
    "blur kernel as text": {"blur_kernel": "abc"},
    "a 100000-tap blur kernel": {"blur_kernel": [1] * 100000},
    "conv_clamp as text": {"conv_clamp": "x"},
    "NaN learning-rate multiplier": {"mapping_lr_mul": float("nan")},
    "mapping_lr_mul as text": {"mapping_lr_mul": "x"},
    "a million image channels": {"img_channels": 10**6},
    "no resolution": {"resolution": None},
}


@pytest.mark.parametrize("lie", list(CONFIG_LIES))
def test_safetensors_config_lies_are_refused(model_files, tmp_path, lie):
    from safetensors.torch import save_file

    tensors, meta = _safetensors_parts(model_files["safetensors"])
    cfg = {**json.loads(meta["config"]), **CONFIG_LIES[lie]}
    cfg = {k: v for k, v in cfg.items() if v is not None}
    path = tmp_path / "lie.safetensors"
    save_file(tensors, str(path), metadata={**meta, "config": json.dumps(cfg)})
    message = _refused(LOADERS["safetensors"], path)
    assert "config" in message or "shape" in message


@pytest.mark.parametrize("config", ["{", "3", "[1, 2]", '"text"'])
def test_safetensors_config_that_is_not_an_object(model_files, tmp_path, config):
    from safetensors.torch import save_file

    tensors, meta = _safetensors_parts(model_files["safetensors"])
    path = tmp_path / "bad.safetensors"
    save_file(tensors, str(path), metadata={**meta, "config": config})
    assert "'config'" in _refused(LOADERS["safetensors"], path)


@pytest.mark.skipif(not POSIX, reason="memory limits need POSIX resource limits")
def test_config_declaring_a_huge_network_is_refused_before_allocation(model_files, tmp_path):
    """4000 channels at 1024 px is within the architecture limits, but ~40 GB of weights: a 7 KB file
    declaring it must be refused by comparing the meta-device skeleton with its tensors."""
    from safetensors.torch import save_file

    tensors, meta = _safetensors_parts(model_files["safetensors"])
    cfg = json.loads(meta["config"])
    cfg.update(resolution=1024, channels={str(2**k): 4000 for k in range(2, 11)})
    path = tmp_path / "bomb.safetensors"
    save_file(tensors, str(path), metadata={**meta, "config": json.dumps(cfg)})
    assert path.stat().st_size < 20_000
    done = run_bounded(f"""
        from targetclip_core.errors import CheckpointError
        from targetclip_core.generators.load import load_generator
        try:
            load_generator({str(path)!r}, device="cpu")
        except CheckpointError as e:
            print("REFUSED", e)
    """)
    assert "REFUSED" in done.stdout and str(path) in done.stdout, done.stderr[-2000:]
    assert "does not match the architecture" in done.stdout


# --------------------------------------------------------------------------- values and keys of state dicts


BAD_VALUES = {
    "a string": "x",
    "an int": 3,
    "None": None,
    "a list": [1, 2],
    "a dict": {"a": 1},
    "a bool tensor": torch.ones(2, dtype=torch.bool),
    "a complex tensor": torch.ones(2, dtype=torch.complex64),
    "NaN weights": torch.full((4, 4), float("nan")),
    "an empty tensor": torch.zeros(0),
}


@pytest.mark.parametrize("what", list(BAD_VALUES))
def test_rosinality_state_with_a_wrong_value(tmp_path, what):
    ros = random_rosinality_state(resolution=8, channels={4: 4, 8: 4}, style_dim=8, n_mlp=2)
    for key in ("style.1.weight", "conv1.conv.weight", "to_rgb1.bias"):
        path = tmp_path / f"{key}.pt"
        torch.save({"g_ema": {**ros, key: BAD_VALUES[what]}}, path)
        _refused(LOADERS["rosinality"], path)


def test_integer_weights_where_floats_belong_are_refused(tmp_path):
    ros = random_rosinality_state(resolution=8, channels={4: 4, 8: 4}, style_dim=8, n_mlp=2)
    path = tmp_path / "ints.pt"
    torch.save({"g_ema": {**ros, "to_rgb1.bias": torch.ones(1, 3, 1, 1, dtype=torch.int64)}}, path)
    assert "floating point" in _refused(LOADERS["rosinality"], path)


@pytest.mark.parametrize("top", [
    "x", 3, [1], {"g_ema": "x"}, {"g_ema": [1]}, {1: torch.ones(1)}, {"g_ema": {1: torch.ones(1)}}, {},
    {"state_dict": "x"}, {"state_dict": {"decoder.x": 1}}, {("a", "b"): torch.ones(1)},
])
def test_checkpoint_of_the_wrong_structure(tmp_path, top):
    path = tmp_path / "wrong.pt"
    torch.save(top, path)
    _refused(LOADERS["rosinality"], path)


@pytest.mark.parametrize("latent_avg", ["x", torch.zeros(3), torch.tensor(1.0), torch.full((8, 32), float("nan"))])
def test_e4e_latent_avg_lies(tmp_path, latent_avg):
    path = official_checkpoint(tmp_path / "e4e.pt", tiny_encoder().state_dict(), latent_avg=latent_avg)
    assert "latent_avg" in _refused(LOADERS["e4e"], path)


def test_e4e_option_of_the_wrong_type(tmp_path):
    path = official_checkpoint(tmp_path / "e4e.pt", tiny_encoder().state_dict(), latent_avg=torch.zeros(8, 32),
                               start_from_latent_avg="yes")
    assert "start_from_latent_avg" in _refused(LOADERS["e4e"], path)


# --------------------------------------------------------------------------- fuzz


class _Hang(Exception):
    pass


def _mutations(data: bytes, rng: random.Random, n_flips: int) -> list[bytes]:
    cuts = sorted({0, 1, 7, 8, 20, len(data) // 2, len(data) - 1} | {rng.randrange(len(data)) for _ in range(12)})
    out = [data[:n] for n in cuts]
    for _ in range(n_flips):
        b = bytearray(data)
        for _ in range(rng.choice([1, 1, 2, 8])):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        out.append(bytes(b))
    return out


@pytest.mark.skipif(not POSIX, reason="the per-case time limit uses SIGALRM")
@pytest.mark.parametrize("kind", list(LOADERS))
def test_fuzzed_model_files_load_or_fail_with_our_errors(model_files, tmp_path, kind):
    """Truncations and seeded bit flips of valid files: a correct load or a TargetCLIPError, never
    another exception or a hang (each read is given 10 s)."""
    rng = random.Random(kind)
    data = model_files[kind].read_bytes()
    previous = signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(_Hang()))
    failures = []
    try:
        for i, mutated in enumerate(_mutations(data, rng, n_flips=30)):
            path = tmp_path / f"{i}{model_files[kind].suffix}"
            path.write_bytes(mutated)
            signal.alarm(10)
            try:
                LOADERS[kind](path)
            except TargetCLIPError as e:
                if str(path) not in str(e):
                    failures.append(f"case {i}: the message does not name the file: {e}")
            except _Hang:
                failures.append(f"case {i}: still reading after 10 s")
            except Exception as e:  # noqa: BLE001 - exactly what the test is looking for
                failures.append(f"case {i}: {type(e).__name__}: {e}")
            finally:
                signal.alarm(0)
    finally:
        signal.signal(signal.SIGALRM, previous)
    assert not failures, "\n".join(failures[:10])


# --------------------------------------------------------------------------- CLIP folders


def _clip_folder(tmp_path: Path, config: dict | None, weights: bool) -> Path:
    from helpers.clip import TINY_CLIP

    folder = tmp_path / "clip"
    folder.mkdir()
    if config is not None:
        (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": config}))
    if weights:
        import open_clip
        from safetensors.torch import save_file

        from helpers.clip import register_tiny_clip

        register_tiny_clip()
        model = open_clip.create_model(TINY_CLIP)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder


def _tiny_clip_config() -> dict:
    from helpers.clip import CLIP_CONFIG_DIR, TINY_CLIP

    return json.loads((CLIP_CONFIG_DIR / f"{TINY_CLIP}.json").read_text())


def test_clip_folder_without_weights_is_refused_not_random(tmp_path):
    """open_clip only logs a warning and runs with random weights (a different essence every run)."""
    from targetclip_core.encoders.clip import load_clip

    folder = _clip_folder(tmp_path, _tiny_clip_config(), weights=False)
    with pytest.raises(CheckpointError, match="without weights") as e:
        load_clip(f"local-dir:{folder}", None, device="cpu")
    assert str(folder) in str(e.value)


def test_clip_folder_without_config_or_missing(tmp_path):
    from targetclip_core.encoders.clip import load_clip

    folder = _clip_folder(tmp_path, None, weights=True)
    with pytest.raises(CheckpointError, match="open_clip_config.json"):
        load_clip(f"local-dir:{folder}", None, device="cpu")
    with pytest.raises(CheckpointError, match="no such CLIP folder"):
        load_clip(f"local-dir:{tmp_path / 'nowhere'}", None, device="cpu")


def test_clip_folder_config_declaring_a_huge_model_is_refused_unallocated(tmp_path):
    from targetclip_core.encoders.clip import load_clip

    config = _tiny_clip_config()
    config["vision_cfg"]["width"] = config["text_cfg"]["width"] = 64_000  # ~200 G parameters
    folder = _clip_folder(tmp_path, config, weights=True)
    with pytest.raises(CheckpointError, match="declares a") as e:
        load_clip(f"local-dir:{folder}", None, device="cpu")
    assert str(folder) in str(e.value)


# --------------------------------------------------------------------------- run settings


@pytest.mark.parametrize("lr", [float("nan"), float("inf"), -0.1, "0.1", True])
def test_learning_rates_that_cannot_train_are_refused(lr):
    with pytest.raises(TargetCLIPError, match="learning rate"):
        check_run_settings(lr=lr, steps=10)


def test_counts_are_checked():
    with pytest.raises(TargetCLIPError, match="steps"):
        check_run_settings(lr=0.1, steps=-1)
    with pytest.raises(TargetCLIPError, match="batch_size"):
        check_run_settings(lr=0.1, steps=1, batch_size=0)
    check_run_settings(lr=0.0, steps=0, batch_size=1)  # a run that keeps its start is allowed


def test_diverged_losses_are_not_a_result():
    check_converged(torch.tensor([1.0, 2.0]), "x")
    for bad in (math.nan, math.inf, torch.tensor([1.0, math.nan])):
        with pytest.raises(TargetCLIPError, match="diverged"):
            check_converged(bad, "the run")


def test_optimize_essence_refuses_a_nan_learning_rate():
    from helpers.clip import tiny_clip
    from helpers.generators import tiny_generator

    from targetclip_core.methods.targetclip.optimize import optimize_essence

    with pytest.raises(TargetCLIPError, match="learning rate"):
        optimize_essence(tiny_generator(), tiny_clip(), torch.zeros(1, 3, 32, 32), steps=2, lr=float("nan"))
