"""io.text: every text file a user hands us is read bounded, as UTF-8, with errors that name the file."""

from __future__ import annotations

import json
import os

import pytest
from helpers.bounded import run_limited

from targetclip_core.errors import CheckpointError, TargetCLIPError
from targetclip_core.io.text import parse_json, read_json, read_text


def test_utf8_text_is_read_as_is_and_a_byte_order_mark_is_dropped(tmp_path):
    path = tmp_path / "v.txt"
    path.write_bytes("\ufeffcafé\r\nnaïve\n".encode("utf-8"))
    assert read_text(path, "vocabulary") == "café\r\nnaïve\n"  # newlines as the file has them


def test_non_utf8_text_names_the_file_and_the_offset_of_the_bad_byte(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("ab\ncaf\xe9\n".encode("latin-1"))  # é is 0xe9 in Latin-1: byte 6
    with pytest.raises(TargetCLIPError) as info:
        read_text(path, "vocabulary")
    msg = str(info.value)
    assert str(path) in msg and "not UTF-8" in msg and "0xe9 at offset 6" in msg


def test_the_offset_counts_a_dropped_byte_order_mark(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbfa\xff")
    with pytest.raises(TargetCLIPError, match="0xff at offset 4"):
        read_text(path, "vocabulary")


def test_missing_directory_and_special_files_are_our_errors(tmp_path):
    with pytest.raises(TargetCLIPError, match="cannot read the vocabulary") as info:
        read_text(tmp_path / "nope.txt", "vocabulary")
    assert "nope.txt" in str(info.value)
    with pytest.raises(TargetCLIPError, match="is a directory"):
        read_text(tmp_path, "vocabulary")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(TargetCLIPError, match="not a regular file"):  # reading it would block forever
        read_text(fifo, "vocabulary")


def test_the_callers_error_type_is_kept(tmp_path):
    with pytest.raises(CheckpointError):
        read_text(tmp_path / "nope.txt", "log", error=CheckpointError)


def test_a_file_over_the_bound_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "big.json"
    path.write_bytes(b" " * 101 + b"{}")
    with pytest.raises(TargetCLIPError) as info:
        read_json(path, "descriptor file", max_bytes=100)
    assert str(path) in str(info.value) and "103 bytes, more than the 100" in str(info.value)
    assert read_json(path, "descriptor file", max_bytes=103) == {}


def test_a_huge_sparse_file_is_refused_without_the_memory_to_read_it(tmp_path):
    path = tmp_path / "huge.json"
    with open(path, "wb") as f:
        f.truncate(8 << 30)  # 8 GiB of holes: no disk, but far more than the child's 2.5 GiB address space
    got = run_limited(f"""
        import json
        from targetclip_core.errors import TargetCLIPError
        from targetclip_core.io.text import read_json
        try:
            read_json({str(path)!r}, "descriptor file", max_bytes=1 << 20)
            print(json.dumps({{"error": None}}))
        except TargetCLIPError as e:
            print(json.dumps({{"error": type(e).__name__, "msg": str(e)}}))
    """)
    assert got["error"] == "TargetCLIPError" and "huge.json" in got["msg"] and "8,589,934,592 bytes" in got["msg"]


def test_invalid_json_names_the_file_line_and_column(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('{\n  "a": [1, 2,]\n}')  # column 14: the ']' after a trailing comma
    with pytest.raises(TargetCLIPError) as info:
        read_json(path, "descriptor file")
    assert str(path) in str(info.value) and "line 2, column 14" in str(info.value)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_not_json(tmp_path, literal):
    path = tmp_path / "d.json"
    path.write_text(f'{{"threshold": {literal}}}')
    with pytest.raises(TargetCLIPError, match=f"{literal} is not a JSON value"):
        read_json(path, "descriptor file")


def test_json_nested_too_deep_is_refused_not_a_recursion_error(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(TargetCLIPError, match="too deeply") as info:
        read_json(path, "descriptor file")
    assert str(path) in str(info.value)


def test_parse_json_names_its_source():
    with pytest.raises(TargetCLIPError, match="essence.safetensors: the metadata entry is not valid JSON"):
        parse_json("{", "essence.safetensors", "metadata entry")
    assert parse_json(json.dumps({"a": [1, 2.5, None]}), "x", "y") == {"a": [1, 2.5, None]}
