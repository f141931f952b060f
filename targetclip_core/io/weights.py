"""Known checkpoints: where they live on disk, where they come from, how to fetch them.

The catalogue is `weights/manifest.json`.  Files are looked up in the local store
(the repository's `weights/` folder, or `$TARGETCLIP_WEIGHTS_DIR`) and can be
downloaded with resume support and checksum verification.  When a file cannot be
had, the error always says which file to get from where and which folder to put
it in, because most of these weights are licence-restricted or only on Google
Drive and users have to fetch them by hand.

Plain Python: no ComfyUI, no torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from tqdm.auto import tqdm

from targetclip_core.errors import CheckpointError, TargetCLIPError, WeightsUnavailableError

__all__ = [
    "ENV_VAR",
    "MANIFEST_PATH",
    "ManifestError",
    "WeightEntry",
    "download",
    "find_local",
    "load_manifest",
    "resolve",
    "sha256_file",
    "weights_dir",
]

ENV_VAR = "TARGETCLIP_WEIGHTS_DIR"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_WEIGHTS_DIR = REPO_ROOT / "weights"
MANIFEST_PATH = DEFAULT_WEIGHTS_DIR / "manifest.json"
FORMAT_VERSION = 1
KINDS = frozenset({"stylegan2", "stylegan3", "eg3d", "e4e", "psp", "arcface", "face-parsing", "essence-encoder", "perceptual"})

_CHUNK = 1 << 20
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_CONTENT_RANGE_RE = re.compile(r"^bytes\s+(\d+)-(\d+)/(\d+|\*)$")
_USER_AGENT = "targetclip-weights/1 (+urllib)"


class ManifestError(TargetCLIPError):
    """`weights/manifest.json` is malformed; the message names the entry and field."""


@dataclass(frozen=True)
class WeightEntry:
    """One known checkpoint, as described in the manifest."""

    name: str
    kind: str
    filename: str
    format: str
    description: str
    source_page: str
    licence: str
    urls: tuple[str, ...] = ()
    manual_url: str | None = None  # a page a human opens (Google Drive): never fetched
    resolution: int | None = None
    size: int | None = None
    sha256: str | None = None
    notes: str = ""


# --------------------------------------------------------------------------- manifest


def _is_http(value: object) -> bool:
    return isinstance(value, str) and value.startswith(("https://", "http://"))


def _entry_from_json(raw: object, where: str) -> WeightEntry:
    if not isinstance(raw, dict):
        raise ManifestError(f"{where}: each entry must be a JSON object, got {type(raw).__name__}")
    if isinstance(raw.get("name"), str):
        where = f"{where} ({raw['name']!r})"

    def text(key: str) -> str:
        value = raw.get(key)
        if not isinstance(value, str) or not value.strip():
            raise ManifestError(f"{where}: field {key!r} must be a non-empty string, got {value!r}")
        return value

    def url(key: str) -> str:
        value = text(key)
        if not _is_http(value):
            raise ManifestError(f"{where}: field {key!r} must be an http(s) URL, got {value!r}")
        return value

    def count(key: str) -> int | None:
        value = raw.get(key)
        # bool is an int subclass; a JSON true is never a valid size.
        if value is None or (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            return value
        raise ManifestError(f"{where}: field {key!r} must be a positive integer or null, got {value!r}")

    unknown = sorted(set(raw) - set(WeightEntry.__dataclass_fields__))
    if unknown:
        raise ManifestError(f"{where}: unknown field(s) {unknown}")
    filename = text("filename")
    if Path(filename).name != filename or filename in (".", ".."):
        raise ManifestError(f"{where}: 'filename' must be a bare file name, got {filename!r}")
    kind = text("kind")
    if kind not in KINDS:
        raise ManifestError(f"{where}: 'kind' must be one of {sorted(KINDS)}, got {kind!r}")
    urls = raw.get("urls", [])
    if not isinstance(urls, list) or not all(_is_http(u) for u in urls):
        raise ManifestError(f"{where}: 'urls' must be a list of http(s) URLs, got {urls!r}")
    sha = raw.get("sha256")
    if sha is not None and not (isinstance(sha, str) and _SHA256_RE.match(sha)):
        raise ManifestError(f"{where}: 'sha256' must be 64 lowercase hex digits or null, got {sha!r}")
    notes = raw.get("notes", "")
    if not isinstance(notes, str):
        raise ManifestError(f"{where}: 'notes' must be a string, got {notes!r}")

    return WeightEntry(
        name=text("name"),
        kind=kind,
        filename=filename,
        format=text("format"),
        description=text("description"),
        source_page=url("source_page"),
        licence=text("licence"),
        urls=tuple(urls),
        manual_url=url("manual_url") if raw.get("manual_url") is not None else None,
        resolution=count("resolution"),
        size=count("size"),
        sha256=sha,
        notes=notes,
    )


def load_manifest(path: str | os.PathLike | None = None) -> dict[str, WeightEntry]:
    """Parse and validate the manifest; return its entries keyed by name, in file order."""
    path = Path(path) if path is not None else MANIFEST_PATH
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"weights manifest not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"weights manifest {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ManifestError(f"weights manifest {path}: top level must be a JSON object")
    if data.get("format_version") != FORMAT_VERSION:
        raise ManifestError(
            f"weights manifest {path}: format_version must be {FORMAT_VERSION}, "
            f"got {data.get('format_version')!r}"
        )
    raw_entries = data.get("weights")
    if not isinstance(raw_entries, list):
        raise ManifestError(f"weights manifest {path}: 'weights' must be a list")

    entries: dict[str, WeightEntry] = {}
    filenames: dict[str, str] = {}
    for i, raw in enumerate(raw_entries):
        entry = _entry_from_json(raw, f"weights manifest {path}, entry {i}")
        if entry.name in entries:
            raise ManifestError(f"weights manifest {path}: duplicate name {entry.name!r}")
        # Filenames double as lookup keys and share one folder, so they must be unique too.
        if entry.filename in filenames:
            raise ManifestError(
                f"weights manifest {path}: {entry.name!r} and {filenames[entry.filename]!r} "
                f"share the file name {entry.filename!r}"
            )
        entries[entry.name] = entry
        filenames[entry.filename] = entry.name
    return entries


def _lookup(key: str, manifest: Mapping[str, WeightEntry]) -> WeightEntry | None:
    """A manifest entry by name, or else by file name."""
    if key in manifest:
        return manifest[key]
    return next((e for e in manifest.values() if e.filename == key), None)


# --------------------------------------------------------------------------- local store


def weights_dir() -> Path:
    """The local store: `$TARGETCLIP_WEIGHTS_DIR` if set, else the repository's `weights/`."""
    override = os.environ.get(ENV_VAR, "").strip()
    return Path(override).expanduser() if override else DEFAULT_WEIGHTS_DIR


def find_local(
    name_or_filename: str,
    search_dirs: Iterable[str | os.PathLike] = (),
    *,
    manifest: Mapping[str, WeightEntry] | None = None,
) -> Path | None:
    """Find a known checkpoint (by manifest name or file name) in `search_dirs`, then the store."""
    manifest = load_manifest() if manifest is None else manifest
    entry = _lookup(name_or_filename, manifest)
    filename = entry.filename if entry else name_or_filename
    # Only bare file names are looked up; anything with a path is the caller's own path.
    if Path(filename).name != filename or filename in ("", ".", ".."):
        return None
    for folder in (*[Path(d).expanduser() for d in search_dirs], weights_dir()):
        candidate = folder / filename
        if candidate.is_file():
            return candidate
    return None


def _how_to_get(entry: WeightEntry, folder: Path) -> str:
    """The 'download file X from Y and put it into folder Z' sentence for one entry."""
    if entry.urls:
        where = " or ".join(entry.urls)
        cli = f"or run `targetclip download {entry.name}` to fetch it"
    else:
        where = entry.manual_url or entry.source_page
        if entry.manual_url:
            where += f" (listed on {entry.source_page})"
        cli = (
            f"`targetclip download {entry.name}` cannot fetch this one: "
            "the official copy is only offered for download in a browser"
        )
    return (
        f"Download {entry.filename} from {where} and put it into the folder {folder} "
        f"(keep the file name {entry.filename}); {cli}. Licence: {entry.licence}."
    )


def resolve(name_or_path: str | os.PathLike, search_dirs: Iterable[str | os.PathLike] = ()) -> Path:
    """Turn a path, a manifest name or a known file name into an existing checkpoint path."""
    as_path = Path(name_or_path).expanduser()
    if as_path.is_file():
        return as_path
    search_dirs = tuple(search_dirs)
    manifest = load_manifest()
    key = os.fspath(name_or_path)
    found = find_local(key, search_dirs, manifest=manifest)
    if found is not None:
        return found

    folder = weights_dir()
    looked = ", ".join(str(Path(d).expanduser()) for d in (*search_dirs, folder))
    entry = _lookup(key, manifest)
    if entry is None:
        raise WeightsUnavailableError(
            f"No file {key!r} exists and it is not a known checkpoint name or file name "
            f"(looked in: {looked}). Known names: {', '.join(manifest)}."
        )
    raise WeightsUnavailableError(
        f"Checkpoint {entry.name!r} ({entry.filename}) is not on disk (looked in: {looked}). "
        + _how_to_get(entry, folder)
    )


def resolve_checkpoint(path) -> Path:
    """An existing checkpoint file, else a manifest or file name looked up in the store (see `resolve`)."""
    p = Path(os.fspath(path)).expanduser()
    if p.exists():
        if p.is_dir():
            raise CheckpointError(f"{p} is a directory, not a checkpoint file")
        return p
    return resolve(str(path))


# --------------------------------------------------------------------------- download


def sha256_file(path: str | os.PathLike, chunk_size: int = _CHUNK) -> str:
    """Hex SHA-256 of a file, read in chunks so multi-GB checkpoints fit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


class _Incomplete(OSError):
    """The connection ended before the announced length; the .part is kept for resuming."""


def _open(url: str, offset: int, timeout: float) -> http.client.HTTPResponse:
    headers = {"User-Agent": _USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _fetch_into(url: str, part: Path, expected_size: int | None, progress: bool, timeout: float) -> None:
    """Stream `url` into `part`, appending to what is already there when the server allows it."""
    offset = part.stat().st_size if part.exists() else 0
    if expected_size is not None and offset > expected_size:
        part.unlink()  # longer than the real file: it is not a prefix of it
        offset = 0
    if expected_size is not None and offset == expected_size:
        return  # a previous run got every byte but stopped before verifying

    resp = _open_resumable(url, part, offset, timeout)
    with resp:
        if offset and resp.status == 206:
            total = _range_total(resp)
            mode = "ab"
        else:
            # 200 (the server ignored Range, or we asked for none): the body is the whole file.
            offset, total, mode = 0, None, "wb"
        length = resp.headers.get("Content-Length", "")
        if total is None and length.isdigit():
            total = offset + int(length)
        if total is None:
            total = expected_size

        with open(part, mode) as fh, tqdm(
            total=total,
            initial=offset,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=part.name.removesuffix(".part"),
            disable=not progress,
            leave=False,
        ) as bar:
            while block := resp.read(_CHUNK):
                fh.write(block)
                bar.update(len(block))

    got = part.stat().st_size
    if total is not None and got > total:
        part.unlink()  # cannot be the file the server described; start clean next time
        raise _Incomplete(f"received {got} bytes but the server announced {total}")
    if total is not None and got < total:
        raise _Incomplete(f"connection closed after {got} of {total} bytes")


def _open_resumable(url: str, part: Path, offset: int, timeout: float) -> http.client.HTTPResponse:
    """Open `url` from byte `offset`; fall back to a fresh full request when resuming is impossible."""
    if not offset:
        return _open(url, 0, timeout)
    try:
        resp = _open(url, offset, timeout)
    except urllib.error.HTTPError as exc:
        if exc.code != 416:
            raise
        exc.close()  # 416: our offset is at or past the end, so the part is not a prefix
    else:
        if resp.status != 206 or _range_start(resp) == offset:
            return resp  # a 200 is handled by the caller: it rewrites the part from byte 0
        resp.close()  # a 206 for some other range: useless for appending
    part.unlink()
    return _open(url, 0, timeout)


def _range_start(resp: http.client.HTTPResponse) -> int | None:
    match = _CONTENT_RANGE_RE.match(resp.headers.get("Content-Range", "").strip())
    return int(match.group(1)) if match else None


def _range_total(resp: http.client.HTTPResponse) -> int | None:
    match = _CONTENT_RANGE_RE.match(resp.headers.get("Content-Range", "").strip())
    return int(match.group(3)) if match and match.group(3) != "*" else None


def download(
    name: str,
    dest_dir: str | os.PathLike | None = None,
    *,
    progress: bool = True,
    urls: Sequence[str] | None = None,
    timeout: float = 30,
) -> Path:
    """Download a known checkpoint into `dest_dir` (default: the store) and return its path.

    Resumes `<file>.part` left by an interrupted run, verifies size and sha256 where the
    manifest knows them, and only then renames the file into place.  `urls` overrides the
    manifest's URLs (tried in order).
    """
    manifest = load_manifest()
    entry = _lookup(name, manifest)
    if entry is None:
        raise WeightsUnavailableError(f"Unknown checkpoint {name!r}. Known names: {', '.join(manifest)}.")
    folder = Path(dest_dir).expanduser() if dest_dir is not None else weights_dir()
    final = folder / entry.filename
    part = folder / (entry.filename + ".part")

    if final.is_file() and _matches(entry, final):
        return final

    sources = tuple(urls) if urls is not None else entry.urls
    if not sources:
        raise WeightsUnavailableError(
            f"Checkpoint {entry.name!r} has no direct download URL. " + _how_to_get(entry, folder)
        )

    folder.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    for url in sources:
        try:
            _fetch_into(url, part, entry.size, progress, timeout)
            break
        except (OSError, http.client.HTTPException) as exc:
            # OSError covers URLError/HTTPError (refused, DNS, 404), timeouts and resets
            # mid-stream; HTTPException covers truncated bodies.  The .part stays for resuming.
            plain_url_error = isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError)
            failures.append(f"{url}: {exc.reason if plain_url_error else exc}")
    else:
        kept = f" The partial file {part} is kept and will be resumed." if part.exists() else ""
        raise WeightsUnavailableError(
            f"Could not download {entry.filename} ({'; '.join(failures)}).{kept} "
            + _how_to_get(entry, folder)
        )

    _verify_or_discard(entry, part, folder)
    os.replace(part, final)  # same folder, so the rename is atomic
    return final


def _matches(entry: WeightEntry, path: Path) -> bool:
    """Whether an existing file is the one the manifest describes (as far as it knows)."""
    if entry.size is not None and path.stat().st_size != entry.size:
        return False
    if entry.sha256 is not None and sha256_file(path) != entry.sha256:
        return False
    return True  # with neither known, trust what the user put there


def _verify_or_discard(entry: WeightEntry, part: Path, folder: Path) -> None:
    """Check size then sha256; on mismatch delete the part file (it can never become right)."""
    problem = None
    got_size = part.stat().st_size
    if entry.size is not None and got_size != entry.size:
        problem = f"size mismatch: expected {entry.size} bytes, got {got_size}"
    elif entry.sha256 is not None:
        got_sha = sha256_file(part)
        if got_sha != entry.sha256:
            problem = f"sha256 mismatch: expected {entry.sha256}, got {got_sha}"
    if problem:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
        raise WeightsUnavailableError(
            f"Downloaded {entry.filename} failed verification ({problem}); the partial file was deleted. "
            + _how_to_get(entry, folder)
        )
