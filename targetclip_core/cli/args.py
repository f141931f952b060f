"""Argument helpers shared by the command families: the parser class, value types, shared flags, error reporting.

Every numeric flag of every command takes one of the `type=` validators below, so a value out of its
range (`--batch-size 0`, `--lr nan`, `--layers 3-`, `--out-resolution 7`) is a usage error from argparse
(exit 2, one line naming the flag) before anything is loaded. `ArgumentParser` lets values that start
with '-' and a digit (`--views -30,0:0,30:10`, `--strength -1e-3`) be values. `run_command` turns the
failures a user can cause into one `targetclip: error:` line.

Kept free of heavy imports so that building the parser (`targetclip --help`) stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import re
import sys
import warnings

from targetclip_core.errors import TargetCLIPError
from targetclip_core.generators.limits import MAX_RESOLUTION

DEVICE_HELP = "cpu, cuda, mps (default: best available)"
MAX_SEED = 2**32 - 1  # numpy's RandomState, which draws z from a seed, takes no more
MAX_LIST_ENTRIES = 1_000_000  # seeds or layer indices in one list: '0-99999999999' is a typo, not a plan
MIN_RESOLUTION = 4  # the 4x4 constant input every StyleGAN2 / EG3D network starts from


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, except that an argument starting with '-' and a digit is a value, never an option.

    argparse before Python 3.13 only takes '-1' or '-0.5' for values, so `--views -30,0:0,30:10` (the
    README's form) or `--strength -1e-3` failed with "expected one argument". This is the rule of Python
    3.13 and later; our commands have no option that looks like a number, so nothing is lost. Subparsers
    are built with the class of their parent, so every command of the `targetclip` parser gets it.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"-\.?\d")


def _value_error(text: str, should: str) -> argparse.ArgumentTypeError:
    return argparse.ArgumentTypeError(f"{should}, got {text!r}")


def _integer(text: str, should: str) -> int:
    try:
        return int(str(text).strip())
    except ValueError:
        raise _value_error(text, should) from None


def _real(text: str, should: str) -> float:
    try:
        value = float(str(text).strip())
    except ValueError:
        raise _value_error(text, should) from None
    if not math.isfinite(value):
        raise _value_error(text, should)
    return value


def positive_int(text: str) -> int:
    """argparse `type=`: an integer >= 1 (a count, a size, a number of steps)."""
    value = _integer(text, "must be a whole number >= 1")
    if value < 1:
        raise _value_error(text, "must be a whole number >= 1")
    return value


def non_negative_int(text: str) -> int:
    """argparse `type=`: an integer >= 0 (an index, a random seed)."""
    value = _integer(text, "must be a whole number >= 0")
    if value < 0:
        raise _value_error(text, "must be a whole number >= 0")
    return value


def seed_arg(text: str) -> int:
    """argparse `type=`: one random seed, 0 .. 2**32 - 1 (what numpy's RandomState accepts)."""
    should = f"must be a seed: a whole number in [0, {MAX_SEED}]"
    value = _integer(text, should)
    if not 0 <= value <= MAX_SEED:
        raise _value_error(text, should)
    return value


def finite_float(text: str) -> float:
    """argparse `type=`: any finite number (NaN and infinities refused)."""
    return _real(text, "must be a finite number")


def float_pair(text: str) -> tuple[float, float]:
    """argparse `type=`: two finite numbers 'X,Y' (a translation)."""
    parts = str(text).split(",")
    if len(parts) != 2:
        raise _value_error(text, "must be two numbers X,Y")
    return _real(parts[0], "must be two finite numbers X,Y"), _real(parts[1], "must be two finite numbers X,Y")


def positive_float(text: str) -> float:
    """argparse `type=`: a finite number > 0 (a learning rate)."""
    value = _real(text, "must be a finite number > 0")
    if value <= 0:
        raise _value_error(text, "must be a finite number > 0")
    return value


def non_negative_float(text: str) -> float:
    """argparse `type=`: a finite number >= 0 (a loss weight)."""
    value = _real(text, "must be a finite number >= 0")
    if value < 0:
        raise _value_error(text, "must be a finite number >= 0")
    return value


def float_in(lo: float, hi: float, *, open_low: bool = False, open_high: bool = False):
    """An argparse `type=` for a finite number in [lo, hi] (ends excluded with open_low / open_high)."""
    should = f"must be a number in {'(' if open_low else '['}{lo:g}, {hi:g}{')' if open_high else ']'}"

    def check(text: str) -> float:
        value = _real(text, should)
        if value < lo or value > hi or (open_low and value == lo) or (open_high and value == hi):
            raise _value_error(text, should)
        return value

    check.__name__ = f"number in [{lo:g}, {hi:g}]"
    return check


def int_in(lo: int, hi: int):
    """An argparse `type=` for a whole number in [lo, hi]."""
    should = f"must be a whole number in [{lo}, {hi}]"

    def check(text: str) -> int:
        value = _integer(text, should)
        if not lo <= value <= hi:
            raise _value_error(text, should)
        return value

    check.__name__ = f"whole number in [{lo}, {hi}]"
    return check


def resolution_arg(text: str) -> int:
    """argparse `type=`: an image size the generators render, a power of two from 4 up to their largest."""
    should = f"must be a power of two from {MIN_RESOLUTION} to {MAX_RESOLUTION} (e.g. 256)"
    value = _integer(text, should)
    if not MIN_RESOLUTION <= value <= MAX_RESOLUTION or value & (value - 1):
        raise _value_error(text, should)
    return value


def resolution_or_auto(text: str):
    """argparse `type=`: 'auto' (the size CLIP needs) or a resolution (resolution_arg); returns 'auto' or an int."""
    if str(text).strip().lower() == "auto":
        return "auto"
    try:
        return resolution_arg(text)
    except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError(f"must be 'auto' or {str(e).removeprefix('must be ')}") from None


rays_arg = int_in(MIN_RESOLUTION, MAX_RESOLUTION)
rays_arg.__doc__ = "argparse `type=`: EG3D rays per side, a whole number from 4 up to the largest resolution."


def parse_seeds(text: str) -> list[int]:
    """'0,3,10-12' -> [0, 3, 10, 11, 12]; ValueError saying what is wrong.

    Entries are whole numbers in [0, 2**32 - 1]; a range is closed on both ends and runs upwards
    ('3-', '-1' and '5-3' are refused); at most MAX_LIST_ENTRIES entries in all.
    """
    seeds: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        lo_text, dash, hi_text = part.partition("-")
        try:
            lo = int(lo_text)
            hi = int(hi_text) if dash else lo
        except ValueError:
            if dash and not (lo_text.strip() and hi_text.strip()):
                raise ValueError(f"{part!r} is not a range with both ends: write e.g. 0-7 "
                                 "(no negative numbers)") from None
            raise ValueError(f"{part!r} is not a whole number or a range like 10-12") from None
        if lo < 0 or hi < 0:
            raise ValueError(f"{part!r}: no negative numbers")
        if hi < lo:
            raise ValueError(f"{part!r} runs backwards: write {hi}-{lo}")
        if hi > MAX_SEED:
            raise ValueError(f"{part!r}: entries go up to {MAX_SEED}")
        if len(seeds) + hi - lo + 1 > MAX_LIST_ENTRIES:
            raise ValueError(f"more than {MAX_LIST_ENTRIES} entries")
        seeds.extend(range(lo, hi + 1))
    if not seeds:
        raise ValueError("no entries given")
    return seeds


def seeds_arg(text: str) -> list[int]:
    """argparse `type=` for a seed list: parse_seeds with a usage error instead of a ValueError."""
    try:
        return parse_seeds(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"cannot read seeds {text!r}: {e} (use e.g. 0,3,10-12)") from None


def parse_layers(text):
    """A --layers value: None and names (all, coarse, middle, fine, comma-separated) pass through; indices -> a list."""
    if text is None or isinstance(text, list) or any(c.isalpha() for c in text):
        return text
    return parse_seeds(text)  # same syntax: 0-3,8


def layers_arg(text: str):
    """argparse `type=` for --layers: range names (all, coarse, middle, fine; comma-separated) kept as text, or
    W+ indices and closed ranges (0-3,8) as a list (methods.targetclip.essence.parse_layer_range, which the nodes
    use too); negative indices, half-open ranges and a mix are refused."""
    from targetclip_core.methods.targetclip.essence import parse_layer_range

    try:
        return parse_layer_range(text)
    except TargetCLIPError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def views_arg(text: str) -> str:
    """argparse `type=` for --views: a frame count or yaw[:pitch] degrees (generators.cameras.parse_views), finite."""
    from targetclip_core.generators.cameras import parse_views

    try:
        yaws, pitches = parse_views(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if not all(math.isfinite(a) for a in (*yaws, *pitches)):
        raise argparse.ArgumentTypeError(f"views {text!r}: yaw and pitch must be finite numbers of degrees")
    return text


def check_out_resolution(G, value, flag: str = "--out-resolution") -> None:
    """Refuse a render size `G` cannot give (a TargetCLIPError naming the flag), before any work.

    None and 'auto' pass. A 2D generator stops synthesis at one of its G.output_resolutions; a 3D-aware
    one (EG3D) resizes its image down to any size up to G.resolution, and ignored larger ones.
    """
    if value is None or value == "auto":
        return
    if getattr(G, "is_3d", False):
        if int(value) > G.resolution:
            raise TargetCLIPError(f"{flag} {value} is larger than the {G.resolution}px the generator renders: "
                                  f"pass at most {G.resolution}")
        return
    sizes = list(getattr(G, "output_resolutions", None) or [G.resolution])
    if int(value) not in sizes:
        raise TargetCLIPError(f"{flag} {value}: a {G.describe()} renders at {', '.join(map(str, sizes))}: "
                              "pass one of them")


def add_device_arg(p, help: str | None = None) -> None:
    """Add --device (default: the best available device)."""
    p.add_argument("--device", default=None, help=help or DEVICE_HELP)


def add_precision_arg(p, default: str = "fp32") -> None:
    """Add --precision (devices.PRECISIONS; default fp32, the papers' own, where the command's output is pixels)."""
    from targetclip_core.devices import PRECISIONS

    p.add_argument("--precision", choices=PRECISIONS, default=default,
                   help=f"compute precision (default {default}): fp32; bf16 (about 2x faster on CPUs with bf16 units "
                        "and recent GPUs, images within about 1%%); fp16 (GPUs); auto: bf16 where the device has bf16 "
                        "units (recent GPUs, CPUs with AMX/AVX512-BF16), fp16 on older GPUs, else fp32")


def add_clip_args(p, paper_default: bool = False) -> None:
    """Add --clip and --pretrained (the open_clip model to load)."""
    note = ", as the paper" if paper_default else ""
    p.add_argument("--clip", default="ViT-B-32", help=f"open_clip architecture, local-dir:..., hf-hub:... (default ViT-B-32{note})")
    p.add_argument("--pretrained", default="openai", help="open_clip tag or checkpoint file (default openai); 'none' for random")


def add_alignment_args(p, with_toggle: bool = True) -> None:
    """Add the FFHQ face-alignment flags: --detector, --landmarks and (with_toggle) --no-align."""
    if with_toggle:
        p.add_argument("--no-align", action="store_true", help="the photo is already an FFHQ-aligned crop")
    p.add_argument("--detector", default="mtcnn", help="mtcnn (built in) or dlib:/path/to/shape_predictor_68_face_landmarks.dat")
    p.add_argument("--landmarks", default=None, help="landmarks by hand: .npy or .json array [5,2] or [68,2] (x, y pixels)")


@contextlib.contextmanager
def stage_bars(unit: str):
    """`update(stage, done, total, **postfix)`: one tqdm bar per stage of a long run (refine, PTI; track, invert,
    edit), made when the stage starts, all closed at the end."""
    from tqdm import tqdm

    bars: dict = {}

    def update(stage: str, done: int, total: int, **postfix) -> None:
        if stage not in bars:
            bars[stage] = tqdm(total=total, desc=stage, unit=unit, leave=False)
        bar = bars[stage]
        bar.n = done
        if postfix:
            bar.set_postfix(postfix, refresh=False)
        bar.refresh()

    try:
        yield update
    finally:
        for bar in bars.values():
            bar.close()


@contextlib.contextmanager
def one_line_warnings(stream=None):
    """While active, every warning prints as one `targetclip: warning: <message>` line on stderr (no category,
    no source line); restored after, so only the command line's own run is affected (the engine stays silent
    about how it is shown, and a script importing it keeps Python's default)."""
    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        text = " ".join(str(message).split())
        print(f"targetclip: warning: {text}", file=stream or sys.stderr)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = previous


def run_command(handler, args) -> int:
    """Run a command's handler; what a user can cause ends as one `targetclip: error:` line and exit code 2.

    That is every TargetCLIPError and every OSError about a file (a full disk, a folder that vanished,
    permissions): the message names the file and the system's reason. Ctrl-C exits with 130. Other
    exceptions are bugs and keep their traceback.
    """
    try:
        return handler(args)
    except TargetCLIPError as e:
        print(f"targetclip: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.filename is None:
            raise
        where = e.filename if e.filename2 is None else e.filename2  # a rename names its destination second
        print(f"targetclip: error: {where}: {e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("targetclip: interrupted", file=sys.stderr)
        return 130
