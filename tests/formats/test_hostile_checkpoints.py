"""Hostile and broken checkpoint containers: torch zips, legacy torch files, network pickles, TorchScript.

Every file is forged here, a few KB at most (tests/helpers/hostile.py writes the containers).  Bombs
and inputs that used to crash or hang the reader are read in a child process whose address space
may grow only 2 GB (`read_in_child`): each must be refused by our checks (a TargetCLIPError naming
the file) in well under a second, without the memory its sizes claim.  The rest run in-process.
"""

from __future__ import annotations

import argparse
import io
import pickle
import random
import warnings
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from helpers.hostile import (
    Call,
    Storage,
    Tensor,
    deep_list,
    deep_tuple,
    floats,
    key_pickle,
    nvlabs_module_graph,
    nvlabs_tensor,
    op_dict,
    op_str,
    patch_declared_size,
    read_in_child,
    rewrite_zip,
    shared_tuple,
    torch_legacy_bytes,
    torchscript_module_graph,
    value_pickle,
    write_torch_legacy,
    write_torch_zip,
)
from helpers.nvlabs import random_nvlabs_state, write_nvlabs_pickle

from targetclip_core.errors import CheckpointError
from targetclip_core.formats.checkpoints import few_keys, require_keys, torch_load_safely
from targetclip_core.formats.limits import MAX_EXPANDED_VALUES, check_structure, require_key, short_repr
from targetclip_core.formats.network_pickle import load_network_pickle

BIG = 60000  # a 60000 x 60000 float32 view is 14.4 GB


def _legacy_storage_bytes(numel_claimed: int, values: bytes, numel_written: int | None = None) -> bytes:
    """torch.save(storage) in the legacy format, as network pickles embed storages."""
    written = numel_claimed if numel_written is None else numel_written
    return torch_legacy_bytes(Storage("0", numel_claimed), {"0": (written, values)})


def _network_pickle(path: Path, tensor: Call) -> Path:
    path.write_bytes(pickle.dumps({"G_ema": None, "w": tensor}, protocol=2))
    return path


def _scripted(path: Path, module: torch.nn.Module) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, its archives are not
        torch.jit.save(torch.jit.script(module), str(path))
    return path


class _Holder(torch.nn.Module):
    def __init__(self, buffer: torch.Tensor):
        super().__init__()
        self.register_buffer("b", buffer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.b.sum()


# ---------------------------------------------------------------- memory bombs


def _bombs(d: Path) -> dict[str, tuple[str, Path, str]]:
    """name -> (reader, file, what our refusal says)."""
    one = Storage("0", 1)
    out = {
        "zip: stride-0 view of 60000x60000 over one float": (
            "torch", write_torch_zip(d / "stride0.pt", {"w": Tensor(one, (BIG, BIG), (0, 0))}, {"0": floats(1)}),
            "stride-0 or overlapping view"),
        "zip: 60000x60000 view over one float": (
            "torch", write_torch_zip(d / "pastend.pt", {"w": Tensor(one, (BIG, BIG))}, {"0": floats(1)}),
            "past the end of storage"),
        "zip: storage claiming 3.6e9 floats over a 4-byte record": (
            "torch", write_torch_zip(d / "numel.pt", {"w": Tensor(Storage("0", BIG * BIG), (BIG, BIG))},
                                     {"0": floats(1)}),
            "but its record holds 4 bytes"),
        "zip: bytearray of 2**40 bytes": (
            "torch", write_torch_zip(d / "bytearray.pt", None, {}, data_pkl=b"\x80\x02c__builtin__\nbytearray\n"
                                     b"\x8a\x06\x00\x00\x00\x00\x00\x01\x85R."),
            "bytearray of 1099511627776 bytes"),
        "legacy: storage claiming 2**29 floats (2 GB)": (
            "torch", write_torch_legacy(d / "legacy_numel.pt", {"w": Tensor(Storage("7", 1 << 29), (2,))},
                                        {"7": (1 << 29, floats(1, 2))}),
            "more than the file holds"),
        "legacy: stride-0 view of 60000x60000": (
            "torch", write_torch_legacy(d / "legacy_stride0.pt", {"w": Tensor(Storage("7", 1), (BIG, BIG), (0, 0))},
                                        {"7": (1, floats(1))}),
            "stride-0 or overlapping view"),
        "network pickle: storage bytes claiming 2**29 floats": (
            "nvlabs", _network_pickle(d / "nv_numel.pkl", nvlabs_tensor(_legacy_storage_bytes(1 << 29, floats(1)),
                                                                         (1,), (1,))),
            "more than the file holds"),
        "network pickle: stride-0 view of 60000x60000": (
            "nvlabs", _network_pickle(d / "nv_stride0.pkl", nvlabs_tensor(_legacy_storage_bytes(1, floats(1)),
                                                                           (BIG, BIG), (0, 0))),
            "stride-0 or overlapping view"),
        "torchscript: stride-0 buffer of 60000x60000": (
            "torchscript", _scripted(d / "ts_stride0.pt", _Holder(torch.zeros(1).expand(BIG, BIG))),
            "stride-0 or overlapping view"),
    }
    # A record that claims to inflate 3.9 GB from a few bytes: torch would allocate the claim first.
    numel = 975_000_000
    path = write_torch_zip(d / "deflate_lie.pt", {"w": Tensor(Storage("0", numel), (numel,))},
                           {"0": bytes(4096)}, compress={"0": zipfile.ZIP_DEFLATED})
    patch_declared_size(path, "archive/data/0", numel * 4)
    out["zip: DEFLATED record claiming 3.9 GB"] = ("torch", path, "a zip bomb?")
    # An honest deflate bomb: 64 MB of zeros in 64 KB.
    numel = 1 << 24
    out["zip: DEFLATED record of 64 MB of zeros"] = (
        "torch", write_torch_zip(d / "deflate_zeros.pt", {"w": Tensor(Storage("0", numel), (numel,))},
                                 {"0": bytes(numel * 4)}, compress={"0": zipfile.ZIP_DEFLATED}),
        "a zip bomb?")
    return out


# ---------------------------------------------------------------- unbounded work and crashes in the pickle machine


def _work(d: Path) -> dict[str, tuple[str, Path, str]]:
    """name -> (reader, file, what our refusal says): inputs that hung or crashed the readers."""

    def write(name: str, data: bytes) -> Path:
        (d / name).write_bytes(data)
        return d / name

    ts = _scripted(d / "ts_ok.pt", torch.nn.Linear(2, 2))
    return {
        "network pickle: modules sharing their children, 25 levels": (
            "nvlabs", write("dag_modules.pkl", nvlabs_module_graph(25, shared=True)), "expands to more than"),
        "network pickle: init_kwargs sharing their parts, 60 levels": (
            "nvlabs", write("dag_kwargs.pkl", nvlabs_module_graph(
                1, shared=False, init_kwargs_ops=op_dict((op_str("z"), shared_tuple(60))))), "expands to more than"),
        "network pickle: modules nested 3000 deep": (
            "nvlabs", write("deep_modules.pkl", nvlabs_module_graph(3000, shared=False)), "nests more than"),
        "network pickle: init_kwargs nested 100000 deep": (
            "nvlabs", write("deep_kwargs.pkl", nvlabs_module_graph(
                1, shared=False, init_kwargs_ops=op_dict((op_str("z"), deep_list(100_000))))), "nests more than"),
        "network pickle: dict key nested 200000 deep (segfault)": (
            "nvlabs", write("deep_key.pkl", key_pickle(deep_tuple(200_000))), "hashed safely"),
        "network pickle: dict key sharing its parts (exponential hash)": (
            "nvlabs", write("dag_key.pkl", key_pickle(shared_tuple(60))), "hashed safely"),
        "zip: dict key nested 200000 deep (segfault in torch.load)": (
            "torch", write_torch_zip(d / "deep_key.pt", None, {}, data_pkl=key_pickle(deep_tuple(200_000))),
            "hashed safely"),
        "zip: dict key sharing its parts (torch.load hangs)": (
            "torch", write_torch_zip(d / "dag_key.pt", None, {}, data_pkl=key_pickle(shared_tuple(60))),
            "hashed safely"),
        "zip: list nested 100000 deep": (
            "torch", write_torch_zip(d / "deep_list.pt", None, {}, data_pkl=value_pickle(deep_list(100_000))),
            "nests more than"),
        "zip: tuples sharing their parts, 60 levels": (
            "torch", write_torch_zip(d / "dag_value.pt", None, {}, data_pkl=value_pickle(shared_tuple(60))),
            "expands to more than"),
        "torchscript: data.pkl with a dict key nested 200000 deep": (
            "torchscript", rewrite_zip(ts, d / "ts_deep_key.pt", {"data.pkl": key_pickle(deep_tuple(200_000))}),
            "hashed safely"),
        "torchscript: modules sharing their children, 30 levels": (
            "torchscript", rewrite_zip(ts, d / "ts_dag.pt", {"data.pkl": torchscript_module_graph(30, shared=True)}),
            "expands to more than"),
        "torchscript: modules nested 3000 deep": (
            "torchscript", rewrite_zip(ts, d / "ts_deep.pt", {"data.pkl": torchscript_module_graph(3000, False)}),
            "nests more than"),
    }


@pytest.fixture(scope="module")
def refused(tmp_path_factory) -> dict[str, tuple[dict, Path, str]]:
    d = tmp_path_factory.mktemp("hostile")
    cases = {**_bombs(d), **_work(d)}
    results = read_in_child([(reader, path) for reader, path, _ in cases.values()])
    return {name: (result, path, said) for (name, (_, path, said)), result in zip(cases.items(), results)}


BOMB_NAMES = [
    "zip: stride-0 view of 60000x60000 over one float",
    "zip: 60000x60000 view over one float",
    "zip: storage claiming 3.6e9 floats over a 4-byte record",
    "zip: bytearray of 2**40 bytes",
    "zip: DEFLATED record claiming 3.9 GB",
    "zip: DEFLATED record of 64 MB of zeros",
    "legacy: storage claiming 2**29 floats (2 GB)",
    "legacy: stride-0 view of 60000x60000",
    "network pickle: storage bytes claiming 2**29 floats",
    "network pickle: stride-0 view of 60000x60000",
    "torchscript: stride-0 buffer of 60000x60000",
]
WORK_NAMES = [
    "network pickle: modules sharing their children, 25 levels",
    "network pickle: init_kwargs sharing their parts, 60 levels",
    "network pickle: modules nested 3000 deep",
    "network pickle: init_kwargs nested 100000 deep",
    "network pickle: dict key nested 200000 deep (segfault)",
    "network pickle: dict key sharing its parts (exponential hash)",
    "zip: dict key nested 200000 deep (segfault in torch.load)",
    "zip: dict key sharing its parts (torch.load hangs)",
    "zip: list nested 100000 deep",
    "zip: tuples sharing their parts, 60 levels",
    "torchscript: data.pkl with a dict key nested 200000 deep",
    "torchscript: modules sharing their children, 30 levels",
    "torchscript: modules nested 3000 deep",
]


@pytest.mark.parametrize("name", BOMB_NAMES + WORK_NAMES)
def test_refused_by_our_checks_fast_and_small(refused, name: str) -> None:
    result, path, said = refused[name]
    assert not result["ok"], f"{name}: loaded"
    assert result["ours"], f"{name}: {result['error']}: {result['message']}"
    assert said in result["message"] and path.name in result["message"], result["message"]
    # bombs are refused from the sizes alone; 200000-opcode pickles take the restricted unpickler a moment
    assert result["seconds"] < (0.5 if name in BOMB_NAMES else 2.0), result
    assert result["rss_growth_mb"] < 300, result  # the claimed gigabytes were never allocated


def test_every_case_has_a_name(tmp_path) -> None:
    assert sorted(_bombs(tmp_path)) == sorted(BOMB_NAMES) and sorted(_work(tmp_path)) == sorted(WORK_NAMES)


def test_module_dag_is_tiny() -> None:
    # the files that never finished loading are a few KB
    assert len(nvlabs_module_graph(25, shared=True)) < 8000 and len(torchscript_module_graph(30, shared=True)) < 2000


# ---------------------------------------------------------------- honest files stay readable


def test_honest_torch_files_still_load(tmp_path) -> None:
    lin = torch.nn.Linear(2, 2)
    opt = torch.optim.Adam(lin.parameters())
    lin(torch.ones(1, 2)).sum().backward()
    opt.step()
    shared = torch.arange(4.0)
    ckpt = {"sd": lin.state_dict(), "opt": opt.state_dict(), "args": argparse.Namespace(lr=0.1, sizes=[1, 2]),
            "tied_a": shared, "tied_b": shared, "expanded": torch.zeros(3).expand(4, 3), "channels": {4: 512, 8: 256},
            "half": torch.ones(2, dtype=torch.bfloat16), "step": 3}
    for legacy in (False, True):
        path = tmp_path / f"honest{int(legacy)}.pt"
        torch.save(ckpt, path, _use_new_zipfile_serialization=not legacy)
        got = torch_load_safely(path)
        assert torch.equal(got["sd"]["weight"], lin.weight) and got["opt"]["state"][0]["step"] == 1
        assert got["args"].sizes == [1, 2] and got["channels"] == {4: 512, 8: 256}
        assert torch.equal(got["expanded"], torch.zeros(4, 3)) and got["tied_a"] is got["tied_b"]
    # a zip repacked with DEFLATED records (weights barely compress) stays readable
    with zipfile.ZipFile(tmp_path / "honest0.pt") as src, \
            zipfile.ZipFile(tmp_path / "deflated.pt", "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    assert torch.equal(torch_load_safely(tmp_path / "deflated.pt")["sd"]["bias"], lin.bias)


# ---------------------------------------------------------------- raw exceptions become our errors, naming the file


def _refusal(path: Path, cls: type = CheckpointError) -> str:
    with pytest.raises(cls) as info:
        torch_load_safely(path)
    assert str(path) in str(info.value)
    return str(info.value)


def test_empty_file(tmp_path) -> None:
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    assert "empty" in _refusal(path)  # was IndexError: torch's message was empty


def test_missing_file(tmp_path) -> None:
    assert "No such file" in _refusal(tmp_path / "absent.pt")


def test_not_a_torch_file(tmp_path) -> None:
    path = tmp_path / "text.pt"
    path.write_bytes(b"hello, not a checkpoint")
    assert "not a PyTorch checkpoint" in _refusal(path)


@pytest.mark.parametrize("key, said", [(0, "the key 0, a int"), (("a", 1), "the key ('a', 1), a tuple"),
                                       (2.5, "the key 2.5, a float")])
@pytest.mark.parametrize("legacy", [False, True])
def test_state_dict_keys_must_be_strings(tmp_path, key, said: str, legacy: bool) -> None:
    write = write_torch_legacy if legacy else write_torch_zip
    storages = {"0": (2, floats(1, 2))} if legacy else {"0": floats(1, 2)}
    path = write(tmp_path / "keys.pt", {"ok": Tensor(Storage("0", 2), (2,)), key: Tensor(Storage("0", 2), (2,))},
                 storages)
    assert said in _refusal(path) and "state dict keys are strings" in _refusal(path)


def test_non_tensor_dicts_may_have_int_keys_but_not_others(tmp_path) -> None:
    path = write_torch_zip(tmp_path / "opt.pt", {"state": {0: {"step": 1}}, "groups": [{"params": [0]}]}, {})
    assert torch_load_safely(path) == {"state": {0: {"step": 1}}, "groups": [{"params": [0]}]}
    path = write_torch_zip(tmp_path / "nonekey.pt", {"opts": {None: 1}}, {})
    assert "keys are strings or ints" in _refusal(path)


@pytest.mark.parametrize("size, stride, said", [
    ((2,), (1, 1), "differ in length"),
    ((-1,), (1,), "non-negative ints"),
    (("2",), (1,), "non-negative ints"),
    ((1 << 70,), (1,), "non-negative ints"),
    ((2,) * 65, (0,) * 65, "non-negative ints"),
])
def test_shape_lies(tmp_path, size, stride, said: str) -> None:
    zip_path = write_torch_zip(tmp_path / "shape.pt", {"w": Tensor(Storage("0", 2), size, stride)}, {"0": floats(1, 2)})
    assert said in _refusal(zip_path)
    storage = _legacy_storage_bytes(2, floats(1, 2))
    nv_path = _network_pickle(tmp_path / "shape.pkl", nvlabs_tensor(storage, size, stride))
    with pytest.raises(CheckpointError, match=said) as info:
        load_network_pickle(nv_path)
    assert str(nv_path) in str(info.value)


def test_negative_offset_and_bad_storage_ids(tmp_path) -> None:
    path = write_torch_zip(tmp_path / "offset.pt", {"w": Tensor(Storage("0", 2), (1,), (1,), offset=-1)},
                           {"0": floats(1, 2)})
    assert "storage offset" in _refusal(path)
    path = write_torch_zip(tmp_path / "pid.pt", None, {}, data_pkl=b"\x80\x02)Q.")  # an empty persistent id
    assert "persistent id" in _refusal(path)
    path = write_torch_zip(tmp_path / "norecord.pt", {"w": Tensor(Storage("9", 2), (2,))}, {"0": floats(1, 2)})
    assert "no record data/9" in _refusal(path)


def test_non_dict_tensor_metadata(tmp_path) -> None:
    class WithMetadata(Tensor):
        def __reduce__(self):
            return (torch._utils._rebuild_tensor_v2,
                    (self.storage, 0, (2,), (1,), False, OrderedDict(), "not a dict"))

    path = write_torch_zip(tmp_path / "meta.pt", {"w": WithMetadata(Storage("0", 2), (2,))}, {"0": floats(1, 2)})
    _refusal(path)  # torch's own TypeError, as our error
    blob = _legacy_storage_bytes(2, floats(1, 2))
    tensor = Call(torch._utils._rebuild_tensor_v2, (Call(torch.storage._load_from_bytes, (blob,)), 0, (2,), (1,),
                                                   False, OrderedDict(), torch.ones(3)))
    with pytest.raises(CheckpointError, match="metadata"):
        load_network_pickle(io.BytesIO(pickle.dumps(tensor, protocol=2)))


def test_legacy_layout_lies(tmp_path) -> None:
    obj = {"w": Tensor(Storage("7", 2), (2,))}
    path = write_torch_legacy(tmp_path / "count.pt", obj, {"7": (3, floats(1, 2, 3))})
    assert "stored with 3" in _refusal(path)
    path = write_torch_legacy(tmp_path / "keys.pt", obj, {"8": (2, floats(1, 2))})
    assert "storage keys do not match" in _refusal(path)  # torch would leave storage 7 uninitialised
    raw = torch_legacy_bytes(obj, {"7": (2, floats(1, 2))})
    (tmp_path / "cut.pt").write_bytes(raw[:-3])
    assert "more than the file holds" in _refusal(tmp_path / "cut.pt")


def test_zip_directory_lies(tmp_path) -> None:
    path = write_torch_zip(tmp_path / "stored.pt", {"w": Tensor(Storage("0", 2), (2,))}, {"0": floats(1, 2)})
    patch_declared_size(path, "archive/data/0", 1 << 31)
    assert "stored record archive/data/0 claims 2147483648 bytes" in _refusal(path)
    path = write_torch_zip(tmp_path / "crc.pt", {"w": Tensor(Storage("0", 2), (2,))}, {"0": floats(1, 2)})
    raw = bytearray(path.read_bytes())
    raw[raw.index(floats(1, 2))] ^= 0x40  # one flipped bit in the weights: torch alone would load it
    path.write_bytes(bytes(raw))
    assert "CRC" in _refusal(path)


def test_state_dict_values_are_checked_where_they_are_read(tmp_path) -> None:
    sd = {"style.1.weight": "hello", "input.input": torch.zeros(1)}
    with pytest.raises(CheckpointError, match="style.1.weight is a str, expected a tensor") as info:
        require_keys(sd, ["style.1.weight", "input.input"], tmp_path / "x.pt", "rosinality StyleGAN2")
    assert "x.pt" in str(info.value)
    with pytest.raises(CheckpointError, match="expected a state dict"):
        require_keys(["style.1.weight"], ["style.1.weight"], "x.pt", "rosinality StyleGAN2")
    assert few_keys([0, ("a", 1), "b"]) == "0, ('a', 1), b"  # was TypeError from str.join


def test_limits_helpers() -> None:
    assert require_key(("a", 1, 2.0)) == ("a", 1, 2.0)
    deep: tuple = ()
    for _ in range(100):
        deep = (deep,)
    for bad in ([1], (1, [2]), deep, frozenset()):
        with pytest.raises(CheckpointError):
            require_key(bad)
    dag: list = [0]
    for _ in range(40):
        dag = [dag, dag]
    with pytest.raises(CheckpointError, match="expands"):
        check_structure(dag)
    cyclic: list = []
    cyclic.append(cyclic)
    with pytest.raises(CheckpointError, match="cycle"):
        check_structure({"a": cyclic})
    check_structure([[1, 2]] * (MAX_EXPANDED_VALUES // 4))  # large but honest
    assert short_repr(1 << 20000) == "<20001-bit int>" and len(short_repr(dag)) < 200


# ---------------------------------------------------------------- fuzz: truncations and bit flips


def _valid_files(d: Path) -> dict[str, tuple[str, Path, bool]]:
    """format -> (reader, a small valid file, whether a checksum protects all of what is read)."""
    torch.manual_seed(0)
    sd = OrderedDict(weight=torch.randn(3, 4), bias=torch.randn(3), steps=torch.tensor(7))
    torch.save({"state_dict": sd, "opts": {"lr": 0.1}}, d / "zip.pt")
    torch.save({"state_dict": sd, "opts": {"lr": 0.1}}, d / "legacy.pt", _use_new_zipfile_serialization=False)
    channels = {4: 4, 8: 4}
    state = random_nvlabs_state(8, channels, z_dim=4, w_dim=4, c_dim=0, n_mlp=2)
    write_nvlabs_pickle(d / "network.pkl", state, with_d=False, resolution=8, z_dim=4, w_dim=4, n_mlp=2,
                        channel_base=32, channel_max=4)
    _scripted(d / "script.pt", torch.nn.Linear(4, 3))
    return {"torch zip": ("torch", d / "zip.pt", True), "torch legacy": ("torch", d / "legacy.pt", False),
            "network pickle": ("nvlabs", d / "network.pkl", False),
            "torchscript": ("torchscript", d / "script.pt", True)}


def _mutations(raw: bytes, seed: int) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    cuts = sorted({0, 1, len(raw) - 1, *(len(raw) * i // 18 for i in range(1, 18))})
    out = [(f"cut at {n}", raw[:n]) for n in cuts]
    for _ in range(50):
        i, bit = rng.randrange(len(raw)), rng.randrange(8)
        flipped = bytearray(raw)
        flipped[i] ^= 1 << bit
        out.append((f"bit {bit} of byte {i} flipped", bytes(flipped)))
    return out


def test_fuzz_truncations_and_bit_flips(tmp_path) -> None:
    files = _valid_files(tmp_path)
    cases, meta = [], []
    for seed, (fmt, (reader, path, checksummed)) in enumerate(files.items()):
        cases.append((reader, path))
        meta.append((fmt, "original", checksummed))
        for what, data in _mutations(path.read_bytes(), seed):
            mutated = tmp_path / f"{path.stem}_{len(meta)}{path.suffix}"
            mutated.write_bytes(data)
            cases.append((reader, mutated))
            meta.append((fmt, what, checksummed))
    results = read_in_child(cases, per_read_s=3.0)
    originals = {fmt: r["digest"] for (fmt, what, _), r in zip(meta, results) if what == "original" and r["ok"]}
    assert sorted(originals) == sorted(files), [r for r in results if not r["ok"]]
    problems = []
    for (fmt, what, checksummed), r in zip(meta, results):
        if not r["ok"] and not (r["ours"] and Path(r["path"]).name in r["message"]):
            problems.append(f"{fmt}, {what}: {r['error']}: {r['message']}")
        elif r["ok"] and checksummed and r["digest"] != originals[fmt]:
            problems.append(f"{fmt}, {what}: loaded different weights from a checksummed file")
        elif r["seconds"] > 2.0:
            problems.append(f"{fmt}, {what}: took {r['seconds']:.1f} s")
    assert not problems, "\n".join(problems)
    refused = sum(not r["ok"] for r in results)
    assert refused > len(files) * 20  # every truncation at least
