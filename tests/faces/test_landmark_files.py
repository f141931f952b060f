"""Landmarks given by hand in a file (`--landmarks` .npy / .json): read as data, bounded, every problem named.

Hostile files are built here: a .npy header that declares a huge shape over no data, an object array whose
pickle would create a file if it were ever loaded, JSON that is not UTF-8, not numbers, nested without end.
"""

from __future__ import annotations

import json
import pathlib
import time

import numpy as np
import pytest
from helpers.hostile import npy_header_only
from numpy.lib import format as npy

from targetclip_core.errors import TargetCLIPError
from targetclip_core.faces.landmarks import read_landmarks_file

FIVE = [[60.0, 80.0], [100.0, 80.0], [80.0, 100.0], [66.0, 120.0], [94.0, 120.0]]


def refused(path, match: str) -> TargetCLIPError:
    with pytest.raises(TargetCLIPError, match=match) as err:
        read_landmarks_file(path)
    assert str(path) in str(err.value)
    return err.value


def test_good_files_give_the_points(tmp_path):
    np.save(tmp_path / "five.npy", np.array(FIVE, dtype=np.float32))
    sixty_eight = np.arange(136, dtype=np.int64).reshape(68, 2)
    np.save(tmp_path / "68.npy", sixty_eight)
    np.save(tmp_path / "fortran.npy", np.asfortranarray(np.array(FIVE)))
    (tmp_path / "five.json").write_text(json.dumps([[int(x), y] for x, y in FIVE]), encoding="utf-8")
    for name, expected in (("five.npy", FIVE), ("68.npy", sixty_eight), ("fortran.npy", FIVE), ("five.json", FIVE)):
        got = read_landmarks_file(tmp_path / name)
        assert got.dtype == np.float64
        np.testing.assert_array_equal(got, np.asarray(expected, dtype=np.float64))


def test_wrong_shapes_and_values_are_named(tmp_path):
    for name, array in (("wide.npy", np.zeros((5, 3))), ("flat.npy", np.zeros(10)), ("swapped.npy", np.zeros((2, 5)))):
        np.save(tmp_path / name, array)
        refused(tmp_path / name, r"must have shape \[5, 2\] or \[68, 2\]")
    bad = np.array(FIVE)
    bad[2, 1] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    refused(tmp_path / "nan.npy", "NaN or infinite")
    (tmp_path / "three.json").write_text(json.dumps(FIVE[:3]), encoding="utf-8")
    refused(tmp_path / "three.json", r"got \[3, 2\]")
    (tmp_path / "inf.json").write_text("[[1e400, 2]" + ", [1, 2]" * 4 + "]", encoding="utf-8")  # JSON's inf
    refused(tmp_path / "inf.json", "NaN or infinite")
    (tmp_path / "nan.json").write_text("[[NaN, 2]" + ", [1, 2]" * 4 + "]", encoding="utf-8")
    refused(tmp_path / "nan.json", "not valid JSON")
    (tmp_path / "huge_int.json").write_text("[[1" + "0" * 400 + ", 2]" + ", [1, 2]" * 4 + "]", encoding="utf-8")
    refused(tmp_path / "huge_int.json", "too large")


def test_json_that_is_not_number_pairs_is_named(tmp_path):
    cases = {
        "object.json": '{"x": 1}',  # before: a raw TypeError from float()
        "strings.json": '[["a", "b"]]',
        "bools.json": "[[true, false], [1, 2], [1, 2], [1, 2], [1, 2]]",  # numpy would read them as 1.0, 0.0
        "ragged.json": "[[1, 2], [3]]",
        "string.json": '"landmarks"',
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
        refused(tmp_path / name, "must hold a JSON array of \\[x, y\\] number pairs")
    (tmp_path / "latin1.json").write_bytes("[[1, 2]] # caf\u00e9".encode("latin-1"))
    refused(tmp_path / "latin1.json", "not UTF-8")
    (tmp_path / "deep.json").write_text("[" * 100_000, encoding="utf-8")  # before: a raw RecursionError
    refused(tmp_path / "deep.json", "too deeply")
    (tmp_path / "big.json").write_text(" " * (2 << 20) + "[]", encoding="utf-8")
    refused(tmp_path / "big.json", "bytes, more than")
    (tmp_path / "empty.json").write_bytes(b"")
    refused(tmp_path / "empty.json", "not valid JSON")
    refused(tmp_path / "missing.json", "cannot read")


class _Marker:
    """Unpickling this would create the marker file: the proof that nothing from the .npy was run."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return pathlib.Path(self.path).touch, ()


def test_hostile_npy_files_are_refused_from_the_header(tmp_path):
    marker = tmp_path / "ran"
    np.save(tmp_path / "pickle.npy", np.array([_Marker(marker)] * 10, dtype=object).reshape(5, 2), allow_pickle=True)
    refused(tmp_path / "pickle.npy", "plain numeric array.*never unpickled")
    assert not marker.exists()

    start = time.perf_counter()  # before: numpy tried to allocate 1.46 TiB (a raw MemoryError)
    refused(npy_header_only(tmp_path / "huge.npy", (10**11, 2)), r"must have shape .*got \[100000000000, 2\]")
    refused(npy_header_only(tmp_path / "short.npy", (5, 2), data=b"\0" * 24), "80")  # 24 bytes of 80
    refused(npy_header_only(tmp_path / "record.npy", (5, 2), descr=[("x", "<f8")]), "plain numeric array")
    refused(npy_header_only(tmp_path / "text.npy", (5, 2), descr="<U4"), "plain numeric array")
    assert time.perf_counter() - start < 0.5

    (tmp_path / "empty.npy").write_bytes(b"")  # before: a raw EOFError
    refused(tmp_path / "empty.npy", "not a readable .npy landmarks file")
    (tmp_path / "noise.npy").write_bytes(b"PK\x03\x04 not numpy at all")
    refused(tmp_path / "noise.npy", "not a readable .npy landmarks file")
    with open(tmp_path / "v3.npy", "wb") as f:
        npy.write_array(f, np.zeros((5, 2)), version=(3, 0))
    refused(tmp_path / "v3.npy", r"version \(3, 0\)")
    refused(tmp_path / "missing.npy", "not a readable .npy landmarks file")
    (tmp_path / "folder.npy").mkdir()
    refused(tmp_path / "folder.npy", "not a regular file")
