"""Text files a user hands us (descriptor JSON, vocabularies, training logs), read with bounds and clear errors.

Every reader of a text file goes through `read_text` (or `read_json` on top of it): the size is checked
against a bound before a byte is read, the bytes must be UTF-8 (a leading byte-order mark is dropped, as
Windows editors write one), and every failure -- a missing file, a directory, a special file, an
encoding error (named by its byte offset), JSON that is not valid or nests too deeply -- is one of the
engine's errors naming the file and what to do, never an OSError / UnicodeDecodeError / RecursionError.
Newlines are kept as the file has them (str.splitlines and the csv module read them all).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from targetclip_core.errors import TargetCLIPError

MiB = 1 << 20
DEFAULT_MAX_TEXT_BYTES = 64 * MiB
_BOM = b"\xef\xbb\xbf"


def read_text(path: str | os.PathLike, what: str, max_bytes: int = DEFAULT_MAX_TEXT_BYTES,
              error: type[TargetCLIPError] = TargetCLIPError) -> str:
    """The UTF-8 text of `path` (a `what`, e.g. "vocabulary", as messages name it), at most `max_bytes` long.

    Raises `error` naming the file when it cannot be read, is not a regular file, is larger than
    `max_bytes` (checked before reading) or is not UTF-8 (naming the byte offset of the first bad byte)."""
    p = Path(path)
    try:
        info = os.stat(p)
    except OSError as e:
        raise error(f"{p}: cannot read the {what} ({e.strerror or e})") from None
    if stat.S_ISDIR(info.st_mode):
        raise error(f"{p}: is a directory, not a {what} file")
    if not stat.S_ISREG(info.st_mode):  # a FIFO or a device would block or never end
        raise error(f"{p}: not a regular file; a {what} must be a plain file")
    check_text_size(p, info.st_size, what, max_bytes, error)
    try:
        with open(p, "rb") as f:
            data = f.read(max_bytes + 1)  # the file may have grown since the stat
    except OSError as e:
        raise error(f"{p}: cannot read the {what} ({e.strerror or e})") from None
    check_text_size(p, len(data), what, max_bytes, error)
    return decode_utf8(data, p, what, error)


def check_text_size(path, size: int, what: str, max_bytes: int, error: type[TargetCLIPError] = TargetCLIPError) -> None:
    """Refuse a `what` of `size` bytes when it is over `max_bytes`, naming the file and both sizes."""
    if size > max_bytes:
        raise error(f"{path}: the {what} is {size:,} bytes, more than the {max_bytes:,} a {what} may have; "
                    "is this the right file?")


def decode_utf8(data: bytes, path, what: str, error: type[TargetCLIPError] = TargetCLIPError) -> str:
    """`data` as UTF-8 text (a leading byte-order mark dropped); a bad byte raises `error` naming its offset."""
    skip = len(_BOM) if data.startswith(_BOM) else 0
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as e:
        offset = skip + e.start
        raise error(f"{path}: the {what} is not UTF-8 text (byte 0x{data[offset]:02x} at offset {offset}): "
                    "save it with the UTF-8 encoding") from None


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON value")


def parse_json(text: str, source, what: str, error: type[TargetCLIPError] = TargetCLIPError):
    """The value of JSON `text` (from `source`, a `what`): strict JSON (no NaN / Infinity); invalid or too deeply
    nested JSON raises `error` naming the source and where the problem is."""
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as e:
        raise error(f"{source}: the {what} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except ValueError as e:  # NaN / Infinity
        raise error(f"{source}: the {what} is not valid JSON ({e})") from None
    except RecursionError:
        raise error(f"{source}: the {what} nests JSON arrays/objects too deeply to be read") from None


def read_json(path: str | os.PathLike, what: str, max_bytes: int = DEFAULT_MAX_TEXT_BYTES,
              error: type[TargetCLIPError] = TargetCLIPError):
    """The JSON value of the UTF-8 file `path` (read_text's checks, then parse_json's)."""
    return parse_json(read_text(path, what, max_bytes, error), Path(path), what, error)


def type_name(value) -> str:
    """How a message names the JSON type of `value` (object, array, string, number, true/false, null)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
