"""Errors the engine raises for bad input: each names the problem and the file.

Everything a user can get wrong (a file, a shape, a latent from another
generator) surfaces as one of these, never as a traceback from deep inside
PyTorch.  They subclass ValueError so generic callers still catch them.
"""


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
