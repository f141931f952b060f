"""Outputs checked before work (check_output_path), atomic text writes, and what killed writers leave behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.paths import REPO_ROOT

from targetclip_core.errors import TargetCLIPError
from targetclip_core.io.files import (
    STALE_GRACE_SECONDS,
    STALE_UNSURE_SECONDS,
    atomic_path,
    check_output_path,
    pid_alive,
    remove_stale_parts,
    safe_file_name,
    write_text_atomic,
)

posix_only = pytest.mark.skipif(os.name != "posix", reason="process liveness is asked with POSIX signal 0")


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    if pid_alive(child.pid) is not False:
        pytest.skip("the pid of an exited process was reused at once")
    return child.pid


def _touch(path: Path, age_seconds: float, data: bytes = b"partial") -> Path:
    path.write_bytes(data)
    then = time.time() - age_seconds
    os.utime(path, (then, then))
    return path


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------- temp files of killed writers


@posix_only
def test_a_killed_writer_keeps_the_old_file_and_the_next_write_removes_its_part(tmp_path):
    target = tmp_path / "x.bin"
    target.write_bytes(b"old")
    writer = ("import os, signal, sys\n"
              "from targetclip_core.io.files import atomic_path\n"
              "with atomic_path(sys.argv[1]) as tmp:\n"
              "    tmp.write_bytes(b'half of the new')\n"
              "    os.kill(os.getpid(), signal.SIGKILL)\n")
    child = subprocess.run([sys.executable, "-c", writer, str(target)], env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
                           capture_output=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()
    assert target.read_bytes() == b"old"  # never torn
    (left,) = [p for p in tmp_path.iterdir() if p != target]
    assert left.name.startswith(".x.bin.") and left.name.endswith(".part")
    writer_pid = int(left.name.split(".")[3])  # .x.bin.<pid>.<random>.part
    assert pid_alive(writer_pid) is False
    _touch(left, STALE_GRACE_SECONDS + 60, left.read_bytes())  # past the grace given to writers elsewhere

    with atomic_path(target) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert _listing(tmp_path) == ["x.bin"]


def test_the_temp_file_is_named_after_the_target_and_this_process(tmp_path):
    with atomic_path(tmp_path / "out.png") as tmp:
        assert tmp.parent == tmp_path
        assert tmp.name.startswith(f".out.png.{os.getpid()}.") and tmp.name.endswith(".part")
        tmp.write_bytes(b"x")
    assert _listing(tmp_path) == ["out.png"]


@posix_only
def test_only_our_own_stale_temp_files_of_that_target_are_removed(tmp_path):
    dead, parent = _dead_pid(), os.getppid()
    old, ancient = STALE_GRACE_SECONDS + 60, STALE_UNSURE_SECONDS + 60
    stale = _touch(tmp_path / f".x.bin.{dead}.abc12_yz.part", old)
    legacy_stale = _touch(tmp_path / ".x.bin.q1w2e3r4.part", ancient)  # older versions put no pid in the name
    kept = {
        _touch(tmp_path / f".x.bin.{dead}.fresh123.part", 5),  # writer gone here, but it changed seconds ago
        _touch(tmp_path / f".x.bin.{os.getpid()}.mine1234.part", ancient),  # ours, still running
        _touch(tmp_path / f".x.bin.{parent}.live1234.part", ancient),  # another live process
        _touch(tmp_path / ".x.bin.q1w2e3r5.part", old),  # no pid and less than a day old: cannot tell
        _touch(tmp_path / f".y.bin.{dead}.abc12_yz.part", ancient),  # another target
        _touch(tmp_path / f".x.bin.bak.{dead}.abc12_yz.part", ancient),  # the target x.bin.bak's, not x.bin's
        _touch(tmp_path / "x.bin.part", ancient),  # the downloader's resumable partial file
        _touch(tmp_path / f".x.bin.{dead}.abc12_yz.part.keep", ancient),  # not of the pattern
    }
    (tmp_path / f".x.bin.{dead}.somedir1.part").mkdir()  # a directory is never removed
    os.utime(tmp_path / f".x.bin.{dead}.somedir1.part", (time.time() - ancient,) * 2)

    removed = remove_stale_parts(tmp_path / "x.bin")
    assert sorted(removed) == sorted([stale, legacy_stale])
    assert not stale.exists() and not legacy_stale.exists()
    assert all(p.exists() for p in kept) and (tmp_path / f".x.bin.{dead}.somedir1.part").is_dir()


def test_pid_alive():
    assert pid_alive(os.getpid()) is True
    assert pid_alive(0) is None  # never signals the process group
    if os.name == "posix":
        assert pid_alive(os.getppid()) is True
        assert pid_alive(_dead_pid()) is False


# --------------------------------------------------------------------------- atomic text


def test_write_text_atomic_writes_the_text_as_given(tmp_path):
    path = write_text_atomic(tmp_path / "sub" / "a.csv", "h1,h2\r\n1,é\r\n")
    assert path == tmp_path / "sub" / "a.csv"
    assert path.read_bytes() == "h1,h2\r\n1,é\r\n".encode("utf-8")  # newlines not translated


def test_write_text_atomic_failing_midway_keeps_the_old_file(tmp_path):
    path = tmp_path / "transfer.json"
    path.write_text('{"old": 1}', encoding="utf-8")
    inode = path.stat().st_ino
    with pytest.raises(UnicodeEncodeError):
        write_text_atomic(path, '{"new": "' + "x" * 10000 + '\udcff"}')  # a lone surrogate fails after 10 KB
    assert path.read_text(encoding="utf-8") == '{"old": 1}' and path.stat().st_ino == inode
    assert _listing(tmp_path) == ["transfer.json"]
    write_text_atomic(path, '{"new": 2}')
    assert path.read_text(encoding="utf-8") == '{"new": 2}'
    assert path.stat().st_ino != inode or os.name != "posix"  # replaced by rename, not rewritten in place


# --------------------------------------------------------------------------- check_output_path


def test_a_new_output_in_folders_yet_to_make_passes_and_nothing_is_created(tmp_path):
    before = _listing(tmp_path)
    assert check_output_path(tmp_path / "a" / "b" / "e.safetensors", "essence", suffix=".safetensors") \
        == tmp_path / "a" / "b" / "e.safetensors"
    assert check_output_path(tmp_path / "renders", "output folder", folder=True) == tmp_path / "renders"
    assert _listing(tmp_path) == before  # no folder made, no write probe left


def test_existing_outputs_pass(tmp_path):
    (tmp_path / "e.safetensors").write_bytes(b"old")
    (tmp_path / "renders").mkdir()
    check_output_path(tmp_path / "e.safetensors", "essence", suffix=".safetensors")
    check_output_path(tmp_path / "E.SAFETENSORS", "essence", suffix=".safetensors")  # any case
    check_output_path(tmp_path / "m.pt", "checkpoint", suffix=(".pt", ".pth"))
    check_output_path(tmp_path / "renders", "output folder", folder=True)
    assert _listing(tmp_path) == ["e.safetensors", "renders"]


@pytest.mark.parametrize("case", ["directory as a file", "file as a folder", "file among the parents",
                                  "file among the parents of a folder", "wrong suffix", "no suffix"])
def test_outputs_that_cannot_be_written_are_refused_naming_the_path(tmp_path, case):
    a_dir, a_file = tmp_path / "out.safetensors", tmp_path / "notes.txt"
    a_dir.mkdir()
    a_file.write_text("x")
    path, kwargs, why = {
        "directory as a file": (a_dir, {"suffix": ".safetensors"}, "is a directory"),
        "file as a folder": (a_file, {"folder": True}, "is a file, not a folder"),
        "file among the parents": (a_file / "sub" / "e.safetensors", {}, f"{a_file} is a file, not a folder"),
        "file among the parents of a folder": (a_file / "renders", {"folder": True}, f"{a_file} is a file"),
        "wrong suffix": (tmp_path / "e.npy", {"suffix": ".safetensors"}, "must end in .safetensors"),
        "no suffix": (tmp_path / "e", {"suffix": ".safetensors"}, "e.safetensors"),
    }[case]
    with pytest.raises(TargetCLIPError) as info:
        check_output_path(path, "essence", **kwargs)
    message = str(info.value)
    assert message.startswith(f"{path}: cannot write the essence there") and why in message


@pytest.mark.skipif(not os.path.exists("/dev/null"), reason="needs /dev/null")
def test_a_device_is_not_an_output_file():
    with pytest.raises(TargetCLIPError, match="/dev/null: .*not a regular file"):
        check_output_path("/dev/null", "grid")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="POSIX modes; root writes in read-only folders")
def test_a_read_only_folder_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        for path, folder in ((ro / "e.safetensors", False), (ro / "new" / "deeper", True), (ro, True)):
            with pytest.raises(TargetCLIPError, match="not writable") as info:
                check_output_path(path, "output", folder=folder)
            assert str(path) in str(info.value) and str(ro) in str(info.value)
    finally:
        ro.chmod(0o755)


@pytest.mark.skipif(not sys.platform.startswith("linux") or not os.path.isdir("/proc/self"), reason="Linux /proc")
def test_a_folder_the_kernel_refuses_to_create_in_is_refused():
    """/proc takes no new files, even from root (whom os.access always answers yes): the write probe tells."""
    for path, folder in (("/proc/targetclip-test-output", True), ("/proc/e.safetensors", False)):
        with pytest.raises(TargetCLIPError, match="not writable") as info:
            check_output_path(path, "output", folder=folder)
        assert str(info.value).startswith(f"{path}: ")


# --------------------------------------------------------------------------- names from files


def test_safe_file_name():
    for ordinary in ("keanu", "red_hair-2", "v1.5", "Beyoncé"):
        assert safe_file_name(ordinary) == ordinary
    for hostile in ("../../etc/cron.d/x", "..\\..\\x", "/abs/path", "a\x00b", "..", "", ".hidden"):
        name = safe_file_name(hostile)
        assert name and "/" not in name and "\\" not in name and "\x00" not in name and not name.startswith(".")
        assert (Path("out") / name).parent == Path("out")
    assert len(safe_file_name("x" * 1000)) == 120
