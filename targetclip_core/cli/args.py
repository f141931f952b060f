"""Argument helpers shared by the command families: seed and layer lists, --device, CLIP and face-alignment flags.

Kept free of heavy imports so that building the parser (`targetclip --help`) stays fast.
"""

from __future__ import annotations

import argparse

DEVICE_HELP = "cpu, cuda, mps (default: best available)"


def parse_seeds(text: str) -> list[int]:
    """'0,3,10-12' -> [0, 3, 10, 11, 12]."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-", 1)
            seeds.extend(range(int(lo), int(hi) + 1))
        else:
            seeds.append(int(part))
    if not seeds or min(seeds) < 0:
        raise ValueError("seeds must be non-negative integers")
    return seeds


def seeds_arg(text: str) -> list[int]:
    """argparse `type=` for a seed list: parse_seeds with a usage error instead of a ValueError."""
    try:
        return parse_seeds(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"cannot read seeds {text!r}: use e.g. 0,3,10-12") from None


def parse_layers(text):
    """A --layers value: None and names (all, coarse, middle, fine, comma-separated) pass through; indices -> a list."""
    if text is None or any(c.isalpha() for c in text):
        return text
    return parse_seeds(text)  # same syntax: 0-3,8


def add_device_arg(p, help: str | None = None) -> None:
    """Add --device (default: the best available device)."""
    p.add_argument("--device", default=None, help=help)


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
