"""Small file helpers shared by every writer: nothing is ever half-written, and an output is checked before work starts.

`atomic_path` writes beside the target and renames on success; its temporary file carries the writer's
pid, so a later write of the same target removes what a killed writer left (never a live writer's file).
`check_output_path` says up front, naming the path, why an output could not be written (a directory in
the way, a file where a folder should be, a read-only folder, the wrong suffix for the format written).
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from targetclip_core.errors import TargetCLIPError

PART_SUFFIX = ".part"
# A temporary file whose writer cannot be asked whether it still runs (Windows, a file without a pid,
# a pid we cannot signal) is only taken for abandoned after this long.
STALE_UNSURE_SECONDS = 24 * 3600
# Even with its writer gone, a temporary file modified this recently is left alone: a writer on another
# host or in another pid namespace sharing the folder may hold it under a pid that is free here.
STALE_GRACE_SECONDS = 600


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only on success.

    The temporary file lives in the same directory so the final rename is atomic
    on POSIX and Windows; on any exception it is removed and `path` is untouched.
    It is named `.{name}.{pid}.{random}.part`; temporary files of earlier writers of
    the same target that were killed before they could clean up are removed first
    (`remove_stale_parts`).
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_parts(final)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.{os.getpid()}.", suffix=PART_SUFFIX, dir=final.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp creates 0600; the result gets what a plain open() would give (0666 & ~umask),
        # so files in a shared ComfyUI install stay readable to the other users
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` through atomic_path (newlines as given): a kill leaves the old file, never a torn one."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding=encoding, newline="") as f:
        f.write(text)
    return Path(path)


def remove_stale_parts(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files atomic_path made for `path` whose writer is gone; return what was removed.

    Only names of atomic_path's own pattern for this very target count. A file whose pid is no longer
    alive goes once it has not changed for STALE_GRACE_SECONDS; where liveness cannot be told (Windows,
    files of older versions without a pid) only files untouched for STALE_UNSURE_SECONDS go. Files of
    this process and of live processes stay. Failing to list or remove is never an error here.

    A folder is listed once per process, at its first write (`_leftover_parts`): writing N files into
    one folder then costs one listing, not N, and what a killer left there is older than that listing.
    """
    final = Path(path)
    pattern = re.compile(rf"\.{re.escape(final.name)}\.(?:(\d+)\.)?[a-z0-9_]+{re.escape(PART_SUFFIX)}")
    folder = os.path.abspath(final.parent)
    with _LEFTOVERS_LOCK:
        leftovers = _leftover_parts(folder)
        candidates = [name for name in leftovers if pattern.fullmatch(name)]
        leftovers.difference_update(candidates)
    removed: list[Path] = []
    now = time.time()
    for name in candidates:
        candidate = Path(folder, name)
        try:
            info = os.lstat(candidate)
        except OSError:
            continue
        if not stat.S_ISREG(info.st_mode):
            continue
        pid = pattern.fullmatch(name).group(1)
        alive = None if pid is None else pid_alive(int(pid))
        if alive is True or now - info.st_mtime < (STALE_GRACE_SECONDS if alive is False else STALE_UNSURE_SECONDS):
            with _LEFTOVERS_LOCK:
                leftovers.add(name)  # looked at again by the next write of this target
            continue
        with contextlib.suppress(OSError):
            os.unlink(candidate)
            removed.append(candidate)
    return removed


_LEFTOVERS: dict[str, set[str]] = {}  # folder -> names of '.*.part' files seen when this process first wrote there
_LEFTOVERS_LOCK = threading.Lock()


def _leftover_parts(folder: str) -> set[str]:
    """The hidden '.part' file names of `folder` as listed at this process's first write there (call under the lock)."""
    if folder not in _LEFTOVERS:
        try:
            with os.scandir(folder) as entries:
                names = {e.name for e in entries if e.name.startswith(".") and e.name.endswith(PART_SUFFIX)}
            _LEFTOVERS[folder] = names
        except OSError:
            _LEFTOVERS[folder] = set()
    return _LEFTOVERS[folder]


def pid_alive(pid: int) -> bool | None:
    """Whether process `pid` runs on this machine: True, False, or None when that cannot be told.

    POSIX only (signal 0 checks without signalling); on Windows os.kill would terminate the process,
    so the answer there is always None. This process counts as alive.
    """
    if pid == os.getpid():
        return True
    if os.name != "posix" or pid <= 0:  # os.kill(0, ...) would address our own process group
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    except (OSError, OverflowError):
        return None
    return True


def safe_file_name(text: str, fallback: str = "unnamed", max_length: int = 120) -> str:
    """`text` (a name read from a file's metadata, say) as one harmless file-name component.

    Path separators, control characters and the characters Windows refuses become '_', leading dots go
    (no '..', no hidden files), and the result is cut to `max_length`; an empty result is `fallback`.
    An ordinary name (letters, digits, '-', '_', '.') comes back unchanged.
    """
    name = re.sub(r'[\x00-\x1f\x7f/\\<>:"|?*]', "_", str(text)).lstrip(". ")[:max_length].rstrip()
    return name or fallback


def check_output_path(path: str | os.PathLike, what: str, *, folder: bool = False,
                      suffix: str | Sequence[str] | None = None) -> Path:
    """Refuse, before any work, an output that could not be written; return it as a Path.

    `what` names the output in the message ("essence", "output folder"). A file output (folder=False)
    must not be a directory or a special file, and must end in `suffix` (one or several, any case) when
    given -- the suffix its readers go by. A folder output (folder=True) must be a directory if it exists.
    Either way the folder the output goes into -- or, when that does not exist yet, its nearest existing
    ancestor, where it will be created -- must be a directory this process can write: checked with
    os.access and by creating and removing a probe file there. Nothing is left behind or created.
    Raises TargetCLIPError naming the path, what is wrong and what to do.
    """
    p = Path(path).expanduser()

    def refuse(why: str) -> TargetCLIPError:
        return TargetCLIPError(f"{p}: cannot write the {what} there: {why}")

    if suffix is not None and not folder:
        allowed = (suffix,) if isinstance(suffix, str) else tuple(suffix)
        if p.suffix.lower() not in {s.lower() for s in allowed}:
            names = " or ".join(allowed)
            example = p.with_suffix(allowed[0]).name
            raise refuse(f"it is written as {names}, so its name must end in {names} (e.g. {example})")
    info = _stat_or_none(p)
    if info is not None:
        if folder and not stat.S_ISDIR(info.st_mode):
            raise refuse("it is a file, not a folder; pass a folder")
        if not folder and stat.S_ISDIR(info.st_mode):
            raise refuse("it is a directory; pass a file name")
        if not folder and not stat.S_ISREG(info.st_mode):
            raise refuse("it is not a regular file (a device, a pipe or a socket); pass a file name")
    parent = p if folder and info is not None else p.parent
    while _stat_or_none(parent) is None and parent != parent.parent:
        parent = parent.parent
    parent_info = _stat_or_none(parent)
    if parent_info is None or not stat.S_ISDIR(parent_info.st_mode):
        raise refuse(f"{parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise refuse(f"the folder {parent} is not writable")
    try:  # os.access does not know read-only mounts, ACLs or full quotas; a real file does
        fd, probe = tempfile.mkstemp(prefix=".targetclip-write-check.", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise refuse(f"the folder {parent} is not writable ({e.strerror or e})") from None
    return p


def _stat_or_none(path: Path):
    """os.stat of `path`, or None when it does not exist or cannot be reached."""
    try:
        return os.stat(path)
    except (OSError, ValueError):  # ValueError: an embedded NUL byte
        return None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
