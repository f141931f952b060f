"""Conversions between the engine's image tensors ([B,3,H,W] in [-1,1]) and files.

Every image file the engine reads goes through one reader: `read_rgb` (float pixels, full precision),
`load_image` (the engine tensor on top of it) or `open_rgb` (an 8-bit PIL RGB image, for code that works
on 8-bit pixels); `check_image` verifies a file without decoding it.  The reader

- refuses a file with more than `max_pixels` pixels from its header, before a pixel is decoded (PIL's
  decompression-bomb warning is silenced in favour of this check, its error becomes ours);
- turns the image upright as its EXIF Orientation tag says (ImageOps.exif_transpose), as viewers show it;
- converts every mode to RGB at the right scale: 8-bit modes as PIL converts them (CMYK without a colour
  profile), transparency composited over white, 16-bit grey ("I;16", "I;16B", ..., and "I" holding
  0..65535) scaled 65535 -> 255 and float grey ("F", values in [0, 1]) scaled 1 -> 255, kept at full
  precision by read_rgb / load_image (PIL itself reads 16-bit colour PNGs as 8-bit RGB);
- resizes (to `size` x `size`, or the longer side down to `max_side`) while the pixels are still PIL's,
  so no full-size float copy of the image is ever made when a smaller one is asked for;
- raises TargetCLIPError naming the file for everything else: missing, empty or not a regular file,
  truncated or corrupt data, not an image, an unsupported mode, NaN / infinite / out-of-range values.
"""

from __future__ import annotations

import os
import stat
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from targetclip_core.errors import TargetCLIPError
from targetclip_core.io.files import atomic_path

# 128 Mpx: more than any phone photo (108 Mpx), about 400 MB once decoded as 8-bit RGB
DEFAULT_MAX_PIXELS = 1 << 27
# the longest side callers read that only embed or score an image (CLIP reads 224-336 px, BLIP 384,
# ArcFace 112): far above what they use, far below a full-size float copy of a large photo
EMBEDDING_MAX_SIDE = 1024

EIGHT_BIT_MODES = frozenset({"1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr"})
ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})  # "I": how older PIL opens 16-bit PNGs
HIGH_DEPTH_MODES = SIXTEEN_BIT_MODES | {"F"}
SUPPORTED_MODES = EIGHT_BIT_MODES | ALPHA_MODES | HIGH_DEPTH_MODES
_ORIENTATION_TAG = 0x0112


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """[B,3,H,W] in [-1,1] -> uint8 [B,H,W,3] (rounded, clamped)."""
    if img.dim() != 4 or img.shape[1] != 3:
        raise TargetCLIPError(f"expected images of shape [B, 3, H, W], got {list(img.shape)}")
    x = ((img.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def save_png(img: torch.Tensor, path: str | os.PathLike) -> Path:
    """Save a single image ([1,3,H,W] or [3,H,W]) atomically as PNG."""
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
    from PIL import ImageDraw, ImageFont

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


# --------------------------------------------------------------------------- reading


def load_image(path: str | os.PathLike, size: int | None = None, *, max_side: int | None = None,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Read an image file as [1,3,H,W] in [-1,1], upright, any mode converted to RGB (see the module docstring).

    size: resize to size x size (squashed, Lanczos); otherwise max_side: shrink (aspect kept, Lanczos) so the
    longer side is at most max_side.  Alpha is composited over white.  Raises TargetCLIPError naming the file.
    """
    arr = read_rgb(path, size=size, max_side=max_side, max_pixels=max_pixels)
    return torch.from_numpy(arr).permute(2, 0, 1)[None] / 127.5 - 1


def read_rgb(path: str | os.PathLike, *, size: int | None = None, max_side: int | None = None,
             max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """An image file as float32 [H, W, 3] in [0, 255]: upright, alpha over white, 16-bit and float grey at
    full precision (65535 -> 255, 1.0 -> 255); `size` / `max_side` as load_image, applied before the
    pixels become floats."""
    return _read(path, size, max_side, max_pixels, as_float=True)


def open_rgb(path: str | os.PathLike, *, size: int | None = None, max_side: int | None = None,
             max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """An image file as an 8-bit PIL RGB image: upright, alpha over white, 16-bit and float grey scaled
    (65535 -> 255, 1.0 -> 255) and rounded; `size` / `max_side` as load_image."""
    return _read(path, size, max_side, max_pixels, as_float=False)


def check_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """Verify an image file without decoding its pixels (header, pixel count, mode, PIL's structure check):
    its (width, height) as stored.  For naming a bad file among many up front."""
    _positive(max_pixels, "max_pixels")
    with _image_file(path, max_pixels) as im:
        _check_mode(im, path)
        if im.format != "PNG":  # the reader has verified PNGs already
            im.verify()
        return im.size


def rgb_from_pil(im: Image.Image, name, *, size: int | None = None, max_side: int | None = None,
                 as_float: bool = False):
    """The reader's conversion of an opened PIL image (any supported mode, already upright): an 8-bit RGB PIL
    image, or with as_float a float32 [H, W, 3] array in [0, 255]; `name` is what errors call it."""
    _check_mode(im, name)
    if im.mode in HIGH_DEPTH_MODES:
        grey = _resized(_grey_float(im, name), size, max_side)  # resampling is linear: scale afterwards
        full_scale = 1.0 if im.mode == "F" else 65535.0
        arr = np.clip(np.asarray(grey, dtype=np.float32) * np.float32(255.0 / full_scale), 0, 255)
        if as_float:
            return np.repeat(arr[..., None], 3, axis=2)
        return Image.fromarray(np.rint(arr).astype(np.uint8), "L").convert("RGB")
    rgb = _resized(_rgb8(im), size, max_side)
    return np.asarray(rgb, dtype=np.float32) if as_float else rgb


def _read(path, size, max_side, max_pixels, as_float: bool):
    for value, what in ((size, "size"), (max_side, "max_side")):
        if value is not None:
            _positive(value, what)
    _positive(max_pixels, "max_pixels")
    with _image_file(path, max_pixels) as im:
        return rgb_from_pil(_upright(im), path, size=size, max_side=max_side, as_float=as_float)


@contextmanager
def _image_file(path, max_pixels: int):
    """The opened image after the header checks; any failure inside the block becomes our error naming the file."""
    try:
        info = os.stat(path)
    except OSError as e:
        raise TargetCLIPError(f"{path}: not a readable image ({e.strerror or e})") from None
    if not stat.S_ISREG(info.st_mode):  # a directory, or a FIFO / device that would block or never end
        raise TargetCLIPError(f"{path}: not a readable image (not a regular file)")
    if info.st_size == 0:
        raise TargetCLIPError(f"{path}: not a readable image (the file is empty)")
    try:
        im = _open_header(path)
        with im:
            width, height = im.size  # from the header: nothing is decoded yet
            if width * height > max_pixels:
                raise TargetCLIPError(
                    f"{path}: not read: {width}x{height} = {width * height:,} pixels is more than the "
                    f"{max_pixels:,} pixel limit (a decompression bomb, or a photo to downscale first)"
                )
            if im.format != "PNG":
                yield im
                return
            im.verify()  # PIL decodes PNG pixels without checking the chunk CRCs (libpng refuses such files)
        with _open_header(path) as im:  # a verified image cannot be decoded: open it again
            yield im
    except TargetCLIPError:
        raise
    except Image.DecompressionBombError as e:  # over PIL's own hard limit, refused by Image.open itself
        raise TargetCLIPError(
            f"{path}: not read: it declares more pixels than PIL decodes ({e}); the engine reads at most "
            f"{max_pixels:,} pixels (a decompression bomb, or a photo to downscale first)"
        ) from None
    except UnidentifiedImageError:
        raise TargetCLIPError(
            f"{path}: not a readable image (not an image file, or a format PIL cannot read)"
        ) from None
    except MemoryError:
        raise TargetCLIPError(f"{path}: not enough memory to decode the image; downscale it first") from None
    except Exception as e:  # PIL's decoders raise many types for damaged files (OSError, SyntaxError, struct.error...)
        detail = str(e).splitlines()[0][:200] if str(e) else ""
        raise TargetCLIPError(f"{path}: not a readable image ({type(e).__name__}: {detail})") from None


def _open_header(path) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies instead
        return Image.open(path)


def _positive(value, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise TargetCLIPError(f"{what} must be a positive integer, got {value!r}")


def _upright(im: Image.Image) -> Image.Image:
    """The image as its EXIF Orientation tag says it is displayed."""
    try:
        orientation = im.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # a damaged EXIF block: use the pixels as stored, as viewers do; pixel errors surface later
        return im
    return ImageOps.exif_transpose(im) if orientation in range(2, 9) else im


def _check_mode(im: Image.Image, name) -> None:
    if im.mode not in SUPPORTED_MODES:
        raise TargetCLIPError(f"{name}: image mode {im.mode!r} is not supported; save it as 8-bit RGB")


def _rgb8(im: Image.Image) -> Image.Image:
    """8-bit modes -> RGB; anything transparent (an alpha band, a tRNS colour / palette entry) over white."""
    if im.mode in ALPHA_MODES or "transparency" in im.info:
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, im.convert("RGBA")).convert("RGB")
    return im.convert("RGB")


def _grey_float(im: Image.Image, name) -> Image.Image:
    """A 16-bit or float grey image as PIL "F" (values as stored), after checking they are in range."""
    if im.mode not in ("I", "F"):
        return im.convert("F")  # "I;16*" cannot leave [0, 65535]
    values = np.asarray(im)
    if im.mode == "F":
        if not np.isfinite(values).all():
            raise TargetCLIPError(f"{name}: the float image contains NaN or infinite values")
        limit, what = 1.0, "float images hold values in [0, 1]"
    else:
        limit, what = 65535.0, "16-bit images hold values in [0, 65535]"
    if values.size and (values.min() < 0 or values.max() > limit):
        raise TargetCLIPError(
            f"{name}: pixel values span [{values.min():g}, {values.max():g}], but {what}; "
            "save it as 8-bit or 16-bit RGB / grey"
        )
    return im if im.mode == "F" else im.convert("F")


def _resized(im: Image.Image, size: int | None, max_side: int | None) -> Image.Image:
    if size is not None:
        return im.resize((size, size), Image.LANCZOS)
    if max_side is not None and max(im.size) > max_side:
        scale = max_side / max(im.size)
        return im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.LANCZOS)
    return im


# --------------------------------------------------------------------------- any image -> 8-bit pixels


def rgb_array(image, name: str | None = None) -> tuple[np.ndarray, str]:
    """Any accepted image -> (uint8 [H, W, 3] RGB array, a name for error messages).

    Accepts a path (read by open_rgb: upright by its EXIF tag, alpha over white, 16-bit and
    float files scaled to 8 bits), a PIL image in an 8-bit mode (taken as it is oriented; 16-bit and float
    ones are refused, their range being the caller's choice), a [1, 3, H, W] / [3, H, W] tensor in
    [-1, 1], or a uint8 [H, W, 3] array.  Detectors and the FFHQ pipeline both work on 8-bit pixels, so
    tensors are rounded like a PNG would be.
    """
    if isinstance(image, (str, os.PathLike)):
        return np.array(open_rgb(image), dtype=np.uint8), name or str(image)
    if isinstance(image, Image.Image):
        name = name or "the image"
        if image.mode in HIGH_DEPTH_MODES:
            raise TargetCLIPError(
                f"{name}: image mode {image.mode!r} is not supported for an in-memory image; pass its file "
                "(read with 16-bit and float scaling) or convert it to 8-bit RGB"
            )
        return np.array(rgb_from_pil(image, name), dtype=np.uint8), name
    if torch.is_tensor(image):
        return _tensor_to_rgb(image, name or "the image tensor"), name or "the image tensor"
    if isinstance(image, np.ndarray):
        name = name or "the image array"
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise TargetCLIPError(
                f"{name}: expected a uint8 [H, W, 3] RGB array, got {image.dtype} {list(image.shape)}"
            )
        return np.ascontiguousarray(image), name
    raise TargetCLIPError(
        f"{name or 'image'}: expected a path, a PIL image or a [1, 3, H, W] tensor, got {type(image).__name__}"
    )


def _tensor_to_rgb(img: torch.Tensor, name: str) -> np.ndarray:
    if img.dim() == 4:
        if img.shape[0] != 1:
            raise TargetCLIPError(f"{name}: expected one image [1, 3, H, W], got a batch of {img.shape[0]}")
        img = img[0]
    if img.dim() != 3 or img.shape[0] != 3:
        raise TargetCLIPError(f"{name}: expected an image tensor [1, 3, H, W], got {list(img.shape)}")
    if not img.is_floating_point():
        raise TargetCLIPError(f"{name}: expected a float tensor in [-1, 1], got {img.dtype}")
    if min(img.shape[1:]) < 1:
        raise TargetCLIPError(f"{name}: the image is empty ({list(img.shape)})")
    img = img.detach().float().cpu()
    if not torch.isfinite(img).all():
        raise TargetCLIPError(f"{name}: the image contains NaN or infinite values")
    if img.abs().max() > 2:  # generator outputs overshoot [-1, 1] a little; [0, 255] is another convention
        raise TargetCLIPError(
            f"{name}: values span [{img.min():.3g}, {img.max():.3g}]; engine images are in [-1, 1]"
        )
    rgb = ((img.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return rgb.permute(1, 2, 0).numpy().copy()
