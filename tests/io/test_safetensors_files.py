"""io.safetensors_files: our safetensors files are the same bytes in every process, and reading one checks its
header against the file and types its metadata before anything is used."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.forged_safetensors import float32_entry, forged_safetensors
from helpers.bounded import run_limited
from safetensors import safe_open

from targetclip_core.errors import LatentError, TargetCLIPError
from targetclip_core.io.safetensors_files import (
    canonical_header,
    meta_float,
    meta_int,
    meta_json,
    meta_number_lists,
    meta_str,
    read_safetensors,
    require_tensor,
    save_safetensors,
)

REPO = Path(__file__).resolve().parents[2]
# a dozen keys: the chance that two processes' HashMaps iterate them in the same order is 1 in 12!
METADATA = {f"key{i:02d}": f"value {i}" for i in range(12)} | {"format": "test", "unicode": "é 😀 \u2028 \"q\"\n"}

WRITE_IN_A_FRESH_PROCESS = """
import sys, torch
from targetclip_core.io.safetensors_files import save_safetensors
meta = {meta!r}
tensors = {{"b": torch.arange(6.0).reshape(2, 3), "a": torch.arange(3, dtype=torch.int64),
            "Z": torch.tensor([1, 2], dtype=torch.uint8), "h": torch.ones(3, dtype=torch.float16)}}
save_safetensors(tensors, sys.argv[1], meta)
"""


def _write_in_fresh_process(path: Path) -> bytes:
    subprocess.run([sys.executable, "-c", WRITE_IN_A_FRESH_PROCESS.format(meta=METADATA), str(path)], check=True,
                   cwd=REPO, timeout=120)
    return path.read_bytes()


def test_two_processes_write_the_same_bytes_and_safetensors_reads_them(tmp_path):
    first, second = _write_in_fresh_process(tmp_path / "1.safetensors"), _write_in_fresh_process(tmp_path / "2.safetensors")
    assert first == second
    (length,) = struct.unpack("<Q", first[:8])
    assert length % 8 == 0  # the header is padded so the data starts 8-aligned
    header = json.loads(first[8 : 8 + length])
    assert list(header) == ["__metadata__", "Z", "a", "b", "h"] and list(header["__metadata__"]) == sorted(METADATA)
    with safe_open(str(tmp_path / "1.safetensors"), framework="pt") as f:
        assert f.metadata() == METADATA
        assert torch.equal(f.get_tensor("b"), torch.arange(6.0).reshape(2, 3))
        assert torch.equal(f.get_tensor("a"), torch.arange(3))
        assert torch.equal(f.get_tensor("Z"), torch.tensor([1, 2], dtype=torch.uint8))
        assert torch.equal(f.get_tensor("h"), torch.ones(3, dtype=torch.float16))


def test_the_canonical_header_keeps_the_data_offsets():
    header = {"b": {"data_offsets": [0, 4], "shape": [1], "dtype": "F32"}, "__metadata__": {"y": "1", "x": "2"},
              "a": {"shape": [], "dtype": "I8", "data_offsets": [4, 5]}}
    raw = canonical_header(header)
    (length,) = struct.unpack("<Q", raw[:8])
    assert length == len(raw) - 8 and length % 8 == 0 and raw[8 + len(raw[8:].rstrip(b" ")) :].strip() == b""
    assert raw[8:].rstrip(b" ") == (b'{"__metadata__":{"x":"2","y":"1"},"a":{"dtype":"I8","shape":[],"data_offsets":[4,5]},'
                                    b'"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}')


def test_a_failed_write_leaves_the_previous_file(tmp_path, monkeypatch):
    import safetensors.torch

    path = save_safetensors({"x": torch.zeros(2)}, tmp_path / "x.safetensors", {"format": "test"})
    before = path.read_bytes()
    monkeypatch.setattr(safetensors.torch, "save_file", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        save_safetensors({"x": torch.ones(2)}, path, {"format": "test"})
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["x.safetensors"]


def test_a_written_file_reads_back(tmp_path):
    path = save_safetensors({"v": torch.tensor([1.5, -2.0]), "n": torch.tensor([3])}, tmp_path / "r.safetensors",
                            {"format": "test", "steps": "4"})
    tensors, meta = read_safetensors(path, "test file")
    assert meta == {"format": "test", "steps": "4"}
    assert torch.equal(tensors["v"], torch.tensor([1.5, -2.0])) and torch.equal(tensors["n"], torch.tensor([3]))


# --------------------------------------------------------------------------- hostile headers


def _refused(path, match, error=TargetCLIPError):
    with pytest.raises(error, match=match) as info:
        read_safetensors(path, "latent file", error=error)
    assert str(path) in str(info.value)
    return info.value


def test_a_header_longer_than_the_file_is_refused_before_reading(tmp_path):
    path = forged_safetensors(tmp_path / "bomb.safetensors", {"__metadata__": {}}, declared_length=1 << 40)
    _refused(path, "header claims 1,099,511,627,776 bytes but the file has", LatentError)


def test_a_header_over_the_librarys_bound_is_refused_without_reading_it(tmp_path):
    path = tmp_path / "sparse.safetensors"
    with open(path, "wb") as f:  # 4 GiB of holes whose header length claims 3 GiB: within the file, over the bound
        f.write(struct.pack("<Q", 3 << 30) + b"{")
        f.truncate(4 << 30)
    got = run_limited(f"""
        import json
        from targetclip_core.errors import TargetCLIPError
        from targetclip_core.io.safetensors_files import read_safetensors
        try:
            read_safetensors({str(path)!r}, "latent file")
            print(json.dumps({{"error": None}}))
        except TargetCLIPError as e:
            print(json.dumps({{"error": type(e).__name__, "msg": str(e)}}))
    """)
    assert got["error"] == "TargetCLIPError" and "sparse.safetensors" in got["msg"] and "3,221,225,472" in got["msg"]


def test_a_file_shorter_than_the_length_prefix_is_refused(tmp_path):
    path = tmp_path / "short.safetensors"
    path.write_bytes(b"\x01\x02")
    _refused(path, "2 bytes, shorter than a safetensors header")


@pytest.mark.parametrize("header, data, match", [
    (b"[1, 2]", b"", "header is an array, not an object"),
    (b'{"a": ', b"", "not valid JSON"),
    (b'{"x": "\xff"}', b"", "not UTF-8"),
    ({"__metadata__": {"format": 5}}, b"", "metadata must map names to strings"),
    ({"__metadata__": ["format"]}, b"", "metadata must map names to strings"),
    ({"t": [1]}, b"", "tensor 't' is described by an array"),
    ({"t": {"dtype": "F99", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, "unknown dtype 'F99'"),
    ({"t": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4, "shape \\[-1\\]"),
    ({"t": {"dtype": "F32", "shape": [1], "data_offsets": [0]}}, b"\0" * 4, "data_offsets \\[0\\]"),
    ({"t": float32_entry([1 << 20, 1 << 20])}, b"\0" * 4, "lies at bytes 0..4398046511104 of a data section of 4"),
    ({"t": {"dtype": "F32", "shape": [1 << 30], "data_offsets": [0, 4]}}, b"\0" * 4, "needs 4,294,967,296 bytes"),
])
def test_malformed_headers_are_refused_by_name(tmp_path, header, data, match):
    _refused(forged_safetensors(tmp_path / "bad.safetensors", header, data), match)


def test_a_nan_or_infinite_float_tensor_is_refused_and_others_pass(tmp_path):
    for bad in (float("nan"), float("inf")):
        path = save_safetensors({"w": torch.tensor([0.0, bad])}, tmp_path / "nan.safetensors")
        err = _refused(path, "tensor 'w' of the latent file contains NaN or infinite values", LatentError)
        assert isinstance(err, LatentError)
    path = save_safetensors({"w": torch.tensor([0.0, float("nan")]), "i": torch.tensor([1])}, tmp_path / "ok.safetensors")
    tensors, _ = read_safetensors(path, "latent file", finite=False)  # a caller may check itself
    assert tensors["w"].isnan().any()


# --------------------------------------------------------------------------- typed metadata


META = {"steps": "12", "neg": "-3", "word": "abc", "strength": "0.5", "nan": "nan", "generator": '{"resolution": 8}',
        "list": "[1, 2]", "bool": "true", "null": "null", "bad": "{", "losses": '{"total": [1, 2.5]}',
        "bad_losses": '{"total": ["x"]}', "flag_losses": '{"total": [true]}'}


def test_meta_readers_return_typed_values_and_defaults():
    f = "m.safetensors"
    assert meta_str(META, "word", f, "matrix file") == "abc"
    assert meta_int(META, "steps", f, "matrix file", minimum=0) == 12
    assert meta_float(META, "strength", f, "matrix file") == 0.5
    assert meta_json(META, "generator", dict, f, "matrix file") == {"resolution": 8}
    assert meta_json(META, "null", (dict, type(None)), f, "matrix file") is None
    assert meta_number_lists(META, "losses", f, "matrix file") == {"total": [1, 2.5]}
    assert meta_int(META, "absent", f, "matrix file", default=7) == 7
    assert meta_json(META, "absent", dict, f, "matrix file", default={}) == {}


@pytest.mark.parametrize("read, match", [
    (lambda f: meta_str(META, "absent", f, "matrix file"), "has no 'absent' metadata entry"),
    (lambda f: meta_int(META, "word", f, "matrix file"), "'word' of the matrix file is 'abc', not a whole number"),
    (lambda f: meta_int(META, "neg", f, "matrix file", minimum=0), "'neg' of the matrix file is -3, less than 0"),
    (lambda f: meta_int(META, "absent", f, "matrix file"), "has no 'absent'"),
    (lambda f: meta_float(META, "nan", f, "matrix file"), "'nan' of the matrix file is 'nan', not a finite number"),
    (lambda f: meta_float(META, "word", f, "matrix file"), "not a finite number"),
    (lambda f: meta_json(META, "list", dict, f, "matrix file"), "'list' of the matrix file is an array, not an object"),
    (lambda f: meta_json(META, "bool", int, f, "matrix file"), "is true/false, not a number"),
    (lambda f: meta_json(META, "generator", (list, type(None)), f, "matrix file"), "not an array or null"),
    (lambda f: meta_json(META, "bad", dict, f, "matrix file"), "metadata entry 'bad' is not valid JSON"),
    (lambda f: meta_number_lists(META, "bad_losses", f, "matrix file"), "holds an array for 'total'"),
    (lambda f: meta_number_lists(META, "flag_losses", f, "matrix file"), "not a list of numbers"),
    (lambda f: meta_number_lists(META, "list", f, "matrix file"), "is an array, not an object"),
])
def test_meta_readers_refuse_missing_and_mistyped_entries_naming_file_and_key(read, match):
    with pytest.raises(TargetCLIPError, match=match) as info:
        read("m.safetensors")
    assert "m.safetensors" in str(info.value)


def test_meta_readers_keep_the_callers_error_type():
    with pytest.raises(LatentError):
        meta_int(META, "word", "m.safetensors", "latent file", error=LatentError)


def test_require_tensor_checks_presence_dtype_and_dimensions():
    tensors = {"v": torch.zeros(1, 2, 3), "i": torch.zeros(2, dtype=torch.int64)}
    assert require_tensor(tensors, "v", "e.safetensors", "essence file", floating=True, ndim=3) is tensors["v"]
    assert require_tensor(tensors, "thumb", "e.safetensors", "essence file", optional=True) is None
    for kwargs, match in [({"name": "x"}, "has no tensor 'x' \\(it has: i, v\\)"),
                          ({"name": "i", "floating": True}, "torch.int64, not a floating-point tensor"),
                          ({"name": "v", "dtype": torch.uint8}, "torch.float32, not torch.uint8"),
                          ({"name": "v", "ndim": 2}, "shape \\[1, 2, 3\\], not 2 dimensions")]:
        name = kwargs.pop("name")
        with pytest.raises(TargetCLIPError, match=match) as info:
            require_tensor(tensors, name, "e.safetensors", "essence file", **kwargs)
        assert "e.safetensors" in str(info.value)
