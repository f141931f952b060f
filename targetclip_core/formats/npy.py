"""`.npy` files as data: the header's declared shape and dtype are checked before any data is read.

`np.load` allocates what a header declares before it reads a byte of data, so a 64-byte file can ask
for terabytes; and with `allow_pickle` it would unpickle objects.  `read_npy` reads the header
first, lets the caller check the shape (landmarks must be [5, 2], a latent [N, n_latent, w_dim], ...),
checks that the file holds exactly the bytes the header declares, and only then reads them.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Callable

import numpy as np

from targetclip_core.errors import TargetCLIPError

NUMERIC_KINDS = "biuf"  # bool, signed / unsigned integers, floats: what a numeric array may hold


def read_npy(path: str | os.PathLike, what: str, *, check_shape: Callable[[tuple], str | None] | None = None,
             max_bytes: int = 1 << 30, kinds: str = NUMERIC_KINDS, error: type[TargetCLIPError] = TargetCLIPError
             ) -> np.ndarray:
    """The array of a `.npy` file, every declared size checked before it is read.

    what: what the file should be, for messages ("landmarks file", "latent file").
    check_shape: called with the header's shape; returns a message when the shape is wrong (raised as
      `error` naming the file).  max_bytes: the most data the array may declare.  kinds: allowed
      numpy dtype kinds (object arrays are never read: nothing is unpickled).
    """
    from numpy.lib import format as npy

    p = Path(path)
    try:
        if not stat.S_ISREG(os.stat(p).st_mode):  # a FIFO or a device would block or never end
            raise error(f"{p}: not a regular file; a {what} must be a plain .npy file")
        with open(p, "rb") as f:
            version = npy.read_magic(f)
            if version not in ((1, 0), (2, 0)):  # 3.0 only adds UTF-8 field names: never numeric arrays
                raise error(f"{p}: .npy format version {version} is not one numpy writes for numbers")
            header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
            shape, fortran_order, dtype = header(f)
            if dtype.hasobject or dtype.kind not in kinds:
                raise error(f"{p}: a {what} must be a plain numeric array, this .npy holds {dtype} "
                            "(Python objects are never unpickled)")
            problem = check_shape(tuple(shape)) if check_shape is not None else None
            if problem:  # from the header, before reading (or allocating) any data
                raise error(f"{p}: {problem}")
            expected = int(np.prod(shape, dtype=object)) * dtype.itemsize
            if expected > max_bytes:
                raise error(f"{p}: the .npy header declares {expected:,} bytes of data, more than a {what} can "
                            f"hold ({max_bytes:,})")
            data = f.read(expected + 1)
    except TargetCLIPError:
        raise
    except (OSError, ValueError, EOFError, SyntaxError) as e:  # missing, unreadable, not .npy, malformed header
        detail = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise error(f"{p}: not a readable .npy {what} ({detail})") from None
    if len(data) != expected:
        raise error(f"{p}: the .npy data is {len(data)} bytes, its header declares {expected} (truncated or padded)")
    return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran_order else "C").copy()
