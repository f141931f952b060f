"""Where an attribute lives in an image: the region parser SAT3D takes, and its binary masks.

A region parser is a callable `parser(images, region_name) -> [B, H, W]` soft mask in [0, 1] for
images [B, 3, H, W] in [-1, 1]; faces.parsing.load_face_parser gives one for faces (BiSeNet on the
CelebAMask-HQ classes). A parser with `check_regions` has the descriptor set's region names checked
before training starts; one with `region_mask(images, region)` gives its own hard (argmax) parse.
The paper's background loss and channel pre-selection use binary masks (`binary_region`).
"""

from __future__ import annotations

from typing import Callable

import torch

RegionParser = Callable[[torch.Tensor, str], torch.Tensor]  # (images [B,3,H,W], region) -> [B,H,W] in [0,1]


@torch.no_grad()
def binary_region(parser: RegionParser, images: torch.Tensor, region: str) -> torch.Tensor:
    """The region as a bool mask [B, H, W]: the parser's hard parse when it has one (`region_mask`),
    else its soft mask above one half."""
    hard = getattr(parser, "region_mask", None)
    if hard is not None:
        return hard(images, region).bool()
    return parser(images, region) > 0.5
