"""Conversions between the engine's image tensors ([B,3,H,W] in [-1,1]) and files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from targetclip_core.errors import TargetCLIPError
from targetclip_core.io.files import atomic_path


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """[B,3,H,W] in [-1,1] -> uint8 [B,H,W,3] (rounded, clamped)."""
    if img.dim() != 4 or img.shape[1] != 3:
        raise TargetCLIPError(f"expected images of shape [B, 3, H, W], got {list(img.shape)}")
    x = ((img.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def save_png(img: torch.Tensor, path: str | os.PathLike) -> Path:
    """Save a single image ([1,3,H,W] or [3,H,W]) atomically as PNG."""
    from PIL import Image

    if img.dim() == 3:
        img = img[None]
    if img.shape[0] != 1:
        raise TargetCLIPError(f"save_png writes one image, got a batch of {img.shape[0]}")
    with atomic_path(path) as tmp:
        Image.fromarray(to_uint8(img)[0]).save(tmp, format="PNG")
    return Path(path)


def grid(images: torch.Tensor, cols: int) -> torch.Tensor:
    """Tile [N,3,H,W] into one [1,3,rows*H,cols*W] image (missing cells stay black)."""
    n, c, h, w = images.shape
    rows = -(-n // cols)
    canvas = images.new_full((rows * cols, c, h, w), -1.0)
    canvas[:n] = images
    canvas = canvas.reshape(rows, cols, c, h, w).permute(2, 0, 3, 1, 4).reshape(1, c, rows * h, cols * w)
    return canvas


def caption_strip(labels: list[str], cell_width: int, height: int | None = None) -> torch.Tensor:
    """One row of text captions, one per cell of width `cell_width`: [1, 3, height, len(labels) * cell_width].

    White text on black, centred, shortened with an ellipsis to fit its cell.  height
    defaults to a size readable at the cell width (at least 12 px).
    """
    from PIL import Image, ImageDraw, ImageFont

    height = height or max(12, min(40, cell_width // 8))
    try:
        font = ImageFont.load_default(size=max(8, int(height * 0.7)))
    except TypeError:  # Pillow < 10.1: one bitmap size
        font = ImageFont.load_default()
    strip = Image.new("RGB", (max(1, len(labels)) * cell_width, height))
    draw = ImageDraw.Draw(strip)
    for i, text in enumerate(labels):
        text = str(text)
        while text and draw.textlength(text, font=font) > cell_width - 4:
            text = text[:-2] + "\u2026" if len(text) > 2 else ""
        x = i * cell_width + (cell_width - draw.textlength(text, font=font)) / 2
        draw.text((x, height / 2), text, fill=(255, 255, 255), font=font, anchor="lm")
    arr = np.asarray(strip, dtype=np.float32)
    return torch.from_numpy(arr).permute(2, 0, 1)[None] / 127.5 - 1


def captioned_grid(images: torch.Tensor, cols: int, labels: list[str] | None = None) -> torch.Tensor:
    """grid() with a caption strip above the columns (labels: one per column): [1, 3, H', cols*W]."""
    tiles = grid(images, cols)
    if not labels:
        return tiles
    strip = caption_strip(list(labels)[:cols] + [""] * max(0, cols - len(labels)), images.shape[-1]).to(tiles)
    return torch.cat([strip, tiles], dim=2)


def load_image(path: str | os.PathLike, size: int | None = None) -> torch.Tensor:
    """Read an image file as [1,3,H,W] in [-1,1] (any mode converted to RGB), optionally resized square."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if size is not None:
                im = im.resize((size, size), Image.LANCZOS)
            arr = np.asarray(im, dtype=np.float32)
    except (UnidentifiedImageError, OSError) as e:
        raise TargetCLIPError(f"{path}: not a readable image ({e})") from None
    return torch.from_numpy(arr).permute(2, 0, 1)[None] / 127.5 - 1
