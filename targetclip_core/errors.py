"""Errors the engine raises for bad input: each names the problem and the file.

Everything a user can get wrong (a file, a shape, a latent from another
generator) surfaces as one of these, never as a traceback from deep inside
PyTorch.  They subclass ValueError so generic callers still catch them.
"""

from contextlib import contextmanager
from typing import Iterator


class TargetCLIPError(ValueError):
    """Base class of every user-facing error of the engine."""


class CheckpointError(TargetCLIPError):
    """A checkpoint file cannot be used: unknown format, corrupt, wrong keys or shapes."""


class UnsafePickleError(CheckpointError):
    """A pickle asked for something outside the allow-list; nothing from it was run."""


class WeightsUnavailableError(TargetCLIPError):
    """A known checkpoint is neither on disk nor downloadable (offline, bad checksum)."""


class LatentError(TargetCLIPError):
    """A latent or style code does not fit the generator it is used with."""


# Exceptions a parser raises when the data it reads is not what the format says: wrong types
# (TypeError, AttributeError), values (ValueError), missing entries (KeyError, IndexError),
# structure nested too deep (RecursionError), or bytes that are not text (UnicodeDecodeError).
MALFORMED_DATA_ERRORS = (TypeError, AttributeError, ValueError, KeyError, IndexError, RecursionError, UnicodeDecodeError)


@contextmanager
def malformed_file(file, what: str, error: type[TargetCLIPError] = CheckpointError) -> Iterator[None]:
    """Around the parsing of a user file: a malformed-data exception becomes `error` naming the
    file and what it should have been; the project's own errors pass through unchanged.

    The last line of defence at a parse boundary, so that no hostile file reaches the user as a
    raw traceback; the specific checks (keys, shapes, types, sizes) come first and say more.
    """
    try:
        yield
    except TargetCLIPError:
        raise
    except MALFORMED_DATA_ERRORS as e:
        detail = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise error(f"{file}: not a valid {what} ({detail})") from None
