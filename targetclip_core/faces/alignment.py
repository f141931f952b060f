"""FFHQ face alignment of real photos, its inverse, and pasting an edited face back.

StyleGAN's FFHQ models (and the e4e / pSp encoders trained on them) only see
faces cropped the way the FFHQ dataset was made (NVlabs ffhq-dataset,
``recreate_aligned_images``; encoder4editing's ``align_face`` is the same
recipe).  From the eyes and the mouth corners it builds an oriented square:

    eye_to_eye = right_eye - left_eye,   eye_to_mouth = mouth_centre - eye_centre
    x = eye_to_eye - rot90(eye_to_mouth), scaled to max(2 |eye_to_eye|, 1.8 |eye_to_mouth|)
    y = rot90(x),   c = eye_centre + 0.1 eye_to_mouth
    quad = (c - x - y, c - x + y, c + x + y, c + x - y)    (top-left, bottom-left, bottom-right, top-right)

then shrinks very large photos, crops around the square with a border, pads
with a blurred mirror image where the square leaves the photo, samples the
square with PIL's QUAD transform and resizes to the output size.  We follow it
step for step (same rounding, same blur and median blend) so crops match what
FFHQ and e4e users get.

The mapping between the crop and the photo is affine.  ``AlignedFace.quad``
holds the *effective* corners in the photo's pixel coordinates, i.e. including
the small offset the script's shrink step introduces, so ``to_source`` /
``to_aligned`` and ``paste_back`` agree with the pixels exactly.

Coordinates everywhere: x, y in pixels, the centre of the top-left pixel is
(0, 0) (dlib's and the FFHQ script's convention).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from targetclip_core.errors import TargetCLIPError
from targetclip_core.faces.landmarks import face_landmarks
from targetclip_core.io.images import load_image, rgb_array

__all__ = ["AlignedFace", "PasteResult", "align_face", "face_mask", "ffhq_quad", "paste_back"]

DEFAULT_FEATHER = 0.1


# --------------------------------------------------------------------------- the FFHQ square


def ffhq_quad(landmarks5: np.ndarray) -> tuple[np.ndarray, float]:
    """The FFHQ crop square of five landmarks: corners [4, 2] (float64) and its side length."""
    lm = np.asarray(landmarks5, dtype=np.float64)
    eye_left, eye_right, _, mouth_left, mouth_right = lm
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    eye_to_mouth = (mouth_left + mouth_right) * 0.5 - eye_avg

    # x points along the eyes, tilted by the eye-to-mouth direction turned 90 degrees,
    # so both cues vote for the face's roll
    x = eye_to_eye - _rot90(eye_to_mouth)
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = _rot90(x)
    c = eye_avg + eye_to_mouth * 0.1
    quad = np.stack([c - x - y, c - x + y, c + x + y, c + x - y])
    return quad, float(np.hypot(*x) * 2)


def _rot90(v: np.ndarray) -> np.ndarray:
    """(a, b) -> (-b, a): a quarter turn clockwise on screen (y points down)."""
    return np.array([-v[1], v[0]])


# --------------------------------------------------------------------------- result


@dataclass(frozen=True)
class AlignedFace:
    """An FFHQ-aligned crop and the geometry that ties it to its photo.

    image:       [1, 3, S, S] in [-1, 1]
    quad:        [4, 2] photo pixel coordinates of the crop's corners, FFHQ order
                 (top-left, bottom-left, bottom-right, top-right of the crop)
    landmarks:   [5, 2] the five points the crop was made from (photo pixels)
    source_size: (width, height) of the photo
    """

    image: torch.Tensor
    quad: np.ndarray
    landmarks: np.ndarray
    source_size: tuple[int, int]
    name: str = ""

    @property
    def size(self) -> int:
        return int(self.image.shape[-1])

    def to_source_matrix(self, size: int | None = None) -> np.ndarray:
        """3x3 affine matrix: pixel (x, y, 1) of a size x size crop -> photo pixel."""
        size = size or self.size
        origin, right, down = self.quad[0], self.quad[3] - self.quad[0], self.quad[1] - self.quad[0]
        # crop pixel centres sit at (i + 0.5) / size of the way across the square
        m = np.eye(3)
        m[:2, 0] = right / size
        m[:2, 1] = down / size
        m[:2, 2] = origin + 0.5 * (right + down) / size
        return m

    def to_source(self, points, size: int | None = None) -> np.ndarray:
        """Crop pixel coordinates [..., 2] -> photo pixel coordinates."""
        return _apply(self.to_source_matrix(size), points)

    def to_aligned(self, points, size: int | None = None) -> np.ndarray:
        """Photo pixel coordinates [..., 2] -> crop pixel coordinates."""
        return _apply(np.linalg.inv(self.to_source_matrix(size)), points)


def _apply(matrix: np.ndarray, points) -> np.ndarray:
    p = np.asarray(points, dtype=np.float64)
    return p @ matrix[:2, :2].T + matrix[:2, 2]


# --------------------------------------------------------------------------- alignment


def align_face(
    image,
    landmarks=None,
    detector: str = "mtcnn",
    output_size: int = 1024,
    transform_size: int = 4096,
    enable_padding: bool = True,
    select: str = "largest",
    device=None,
    name: str | None = None,
) -> AlignedFace:
    """Crop and align one face the FFHQ way.

    image:          path, PIL image, [1, 3, H, W] tensor in [-1, 1] or uint8 [H, W, 3] array
    landmarks:      optional [5, 2] or [68, 2] pixels; otherwise ``detector`` finds them
                    ("mtcnn" or "dlib:/path/shape_predictor_68_face_landmarks.dat";
                    ``select`` picks the "largest" or most "probability" face)
    output_size:    side of the crop (1024 = FFHQ; e4e's own script uses 256)
    transform_size: side of the intermediate QUAD warp, supersampled then resized
                    down with Lanczos (FFHQ: 4096; raised to output_size if smaller)
    enable_padding: blur-pad where the square leaves the photo (FFHQ default)
    """
    output_size = _positive_int(output_size, "output_size")
    transform_size = max(_positive_int(transform_size, "transform_size"), output_size)
    rgb, name = rgb_array(image, name)
    lm = face_landmarks(rgb, landmarks, detector, select, device, name)
    quad, qsize = ffhq_quad(lm)
    height, width = rgb.shape[:2]
    _check_overlap(quad, width, height, name)

    from PIL import Image

    img = Image.fromarray(rgb)
    img, work_quad, qsize, effective_quad = _shrink(img, quad, qsize, output_size)
    img, work_quad = _crop(img, work_quad, qsize)
    if enable_padding:
        img, work_quad = _pad(img, work_quad, qsize)
    img = img.transform(
        (transform_size, transform_size), Image.QUAD, tuple((work_quad + 0.5).flatten()), Image.BILINEAR
    )
    if output_size < transform_size:
        img = img.resize((output_size, output_size), Image.LANCZOS)

    pixels = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).permute(2, 0, 1)[None]
    return AlignedFace(pixels / 127.5 - 1, effective_quad, lm, (width, height), name)


def _positive_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise TargetCLIPError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def _bounds(quad: np.ndarray) -> tuple[int, int, int, int]:
    return (
        int(np.floor(quad[:, 0].min())),
        int(np.floor(quad[:, 1].min())),
        int(np.ceil(quad[:, 0].max())),
        int(np.ceil(quad[:, 1].max())),
    )


def _check_overlap(quad: np.ndarray, width: int, height: int, name: str) -> None:
    x0, y0, x1, y1 = _bounds(quad)
    if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
        raise TargetCLIPError(
            f"{name}: the face square {[x0, y0, x1, y1]} lies outside the {width}x{height} image; "
            "are the landmarks in this image's pixels (x, y)?"
        )


def _shrink(img, quad: np.ndarray, qsize: float, output_size: int):
    """Downscale photos whose face is more than twice the output size (Lanczos, integer factor).

    Returns the image, the quad in its pixels, the new qsize, and the quad the
    result will really show in the photo's pixels.  The script divides pixel-centre
    coordinates by the factor, which reads the square (factor - 1) / 2 pixels off
    (and the rounded new size scales each axis a little differently); the crop is
    what users get, so the reported geometry follows the pixels, not the formula.
    """
    from PIL import Image

    factor = int(np.floor(qsize / output_size * 0.5))
    if factor <= 1:
        return img, quad.copy(), qsize, quad.copy()
    size = (int(np.rint(img.size[0] / factor)), int(np.rint(img.size[1] / factor)))
    axis_scale = np.array([img.size[0] / size[0], img.size[1] / size[1]])
    shrunk = quad / factor
    return img.resize(size, Image.LANCZOS), shrunk, qsize / factor, (shrunk + 0.5) * axis_scale - 0.5


def _crop(img, quad: np.ndarray, qsize: float):
    """Cut the square's bounding box plus a 10% border (clipped to the photo)."""
    border = max(int(np.rint(qsize * 0.1)), 3)
    x0, y0, x1, y1 = _bounds(quad)
    box = (max(x0 - border, 0), max(y0 - border, 0), min(x1 + border, img.size[0]), min(y1 + border, img.size[1]))
    if box[2] - box[0] < img.size[0] or box[3] - box[1] < img.size[1]:
        img = img.crop(box)
        quad = quad - np.array(box[:2], dtype=np.float64)
    return img, quad


def _pad(img, quad: np.ndarray, qsize: float):
    """Where the square (plus border) leaves the photo: mirror, blur towards the edges, fade to the median.

    The blend weights are the FFHQ script's: a ramp that is 1 on the outer edge of
    the padding and falls to 0 inside the photo, so real pixels stay untouched.
    """
    from PIL import Image

    border = max(int(np.rint(qsize * 0.1)), 3)
    x0, y0, x1, y1 = _bounds(quad)
    width, height = img.size
    pad = (max(-x0 + border, 0), max(-y0 + border, 0), max(x1 - width + border, 0), max(y1 - height + border, 0))
    if max(pad) <= border - 4:
        return img, quad
    pad = np.maximum(pad, int(np.rint(qsize * 0.3)))
    left, top, right, bottom = (max(int(p), 1) for p in pad)
    arr = np.pad(np.asarray(img, dtype=np.float32), ((top, bottom), (left, right), (0, 0)), mode="reflect")
    h, w = arr.shape[:2]
    xs = np.arange(w, dtype=np.float32)[None, :]
    ys = np.arange(h, dtype=np.float32)[:, None]
    ramp = np.maximum(
        1.0 - np.minimum(xs / left, (w - 1 - xs) / right),
        1.0 - np.minimum(ys / top, (h - 1 - ys) / bottom),
    )[..., None]
    arr += (gaussian_filter(arr, qsize * 0.02) - arr) * np.clip(ramp * 3.0 + 1.0, 0.0, 1.0)
    arr += (np.median(arr, axis=(0, 1)) - arr) * np.clip(ramp, 0.0, 1.0)
    img = Image.fromarray(np.uint8(np.clip(np.rint(arr), 0, 255)), "RGB")
    return img, quad + np.array([left, top], dtype=np.float64)


def gaussian_filter(arr: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of an [H, W, C] float32 array over H and W.

    Same kernel and borders as ``scipy.ndimage.gaussian_filter(arr, [sigma, sigma, 0])``
    (radius int(4 sigma + 0.5), half-sample symmetric extension).  The kernel
    reaches 160+ taps on large faces, so the product runs in the Fourier domain:
    a circular convolution of the extended array whose wrapped-around part is cut off.
    """
    radius = int(4.0 * sigma + 0.5)
    if sigma <= 0 or radius == 0:
        return arr.copy()
    taps = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (taps / sigma) ** 2)
    kernel = torch.from_numpy((kernel / kernel.sum()).astype(np.float32))
    padded = np.pad(arr, ((radius, radius), (radius, radius), (0, 0)), mode="symmetric")
    x = torch.from_numpy(padded).permute(2, 0, 1)  # [C, H + 2r, W + 2r]
    size = x.shape[1:]
    spectrum = torch.fft.rfft2(x) * torch.fft.rfft2(torch.outer(kernel, kernel), s=size)
    y = torch.fft.irfft2(spectrum, s=size)[:, 2 * radius :, 2 * radius :]  # the part with no wrap-around
    return y.permute(1, 2, 0).contiguous().numpy()


# --------------------------------------------------------------------------- masks


def face_mask(
    aligned: AlignedFace, size: int | None = None, feather: float = DEFAULT_FEATHER, mask=None
) -> torch.Tensor:
    """The paste-back mask in the aligned frame, [1, 1, s, s] in [0, 1].

    Default: an ellipse around the face built from the five landmarks, generous
    enough to hold the forehead, cheeks and chin (centre a third of the way from the
    eyes to the mouth, half-axes 1.45x the eye distance across and 1.6x the
    eye-to-mouth distance down).  ``mask`` replaces it with a user mask
    ([s, s], [1, s, s] or [1, 1, s, s], values in [0, 1], aligned frame, any size).
    Either is feathered by a Gaussian whose soft edge is ``feather`` x the crop
    width wide, then faded to 0 at the crop's own border so nothing outside the
    square is ever touched.
    """
    if not (isinstance(feather, (int, float)) and 0 <= feather <= 0.5 and math.isfinite(feather)):
        raise TargetCLIPError(f"feather must be a fraction of the crop width in [0, 0.5], got {feather!r}")
    if mask is None:
        hard = _ellipse_mask(aligned, size or 256)
    else:
        hard = _user_mask(mask)
    s = hard.shape[-1]
    soft = _blur_mask(hard, feather * s / 3.0)  # +-3 sigma spans the feather band
    return (soft * _border_window(s, feather * s)).clamp(0, 1)


def _ellipse_mask(aligned: AlignedFace, size: int) -> torch.Tensor:
    lm = aligned.to_aligned(aligned.landmarks, size)
    eye_avg = (lm[0] + lm[1]) / 2
    eye_to_eye = lm[1] - lm[0]
    eye_to_mouth = (lm[3] + lm[4]) / 2 - eye_avg
    centre = eye_avg + eye_to_mouth / 3
    across = eye_to_eye / max(np.hypot(*eye_to_eye), 1e-6)
    down = _rot90(across)
    semi_across = 1.45 * np.hypot(*eye_to_eye)
    semi_down = 1.6 * np.hypot(*eye_to_mouth)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    d = np.stack([xs - centre[0], ys - centre[1]], axis=-1)
    r2 = (d @ across / semi_across) ** 2 + (d @ down / semi_down) ** 2
    return torch.from_numpy((r2 <= 1.0).astype(np.float32))[None, None]


def _user_mask(mask) -> torch.Tensor:
    m = torch.as_tensor(mask.detach().cpu() if torch.is_tensor(mask) else np.asarray(mask)).float()
    while m.dim() > 2 and m.shape[0] == 1:
        m = m[0]
    if m.dim() != 2 or m.shape[0] != m.shape[1] or m.shape[0] < 2:
        raise TargetCLIPError(f"mask must be a square [S, S] map in the aligned frame, got {list(np.shape(mask))}")
    if not torch.isfinite(m).all() or m.min() < 0 or m.max() > 1:
        raise TargetCLIPError("mask values must be finite and within [0, 1]")
    return m[None, None]


def _blur_mask(mask: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur with zero padding, truncated at 3 sigma (so zeros far away stay exactly zero)."""
    radius = math.ceil(3 * sigma)
    if radius < 1:
        return mask
    taps = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum()
    x = F.conv2d(mask, kernel.view(1, 1, 1, -1), padding=(0, radius))
    return F.conv2d(x, kernel.view(1, 1, -1, 1), padding=(radius, 0))


def _border_window(size: int, band: float) -> torch.Tensor:
    """1 inside, ramping to 0 at the crop edge over `band` pixels."""
    if band <= 0:
        return torch.ones(1, 1, size, size)
    centres = torch.arange(size, dtype=torch.float32) + 0.5
    edge = torch.minimum(centres, size - centres)
    ramp = (edge / band).clamp(0, 1)
    return torch.minimum(ramp[:, None], ramp[None, :])[None, None]


# --------------------------------------------------------------------------- paste back


class PasteResult(NamedTuple):
    """The photo with the face pasted in ([B, 3, H, W]) and the mask used ([1, H, W], photo frame)."""

    image: torch.Tensor
    mask: torch.Tensor


def paste_back(
    original, edited: torch.Tensor, aligned: AlignedFace, feather: float = DEFAULT_FEATHER, mask=None
) -> PasteResult:
    """Warp an edited aligned face (any square size, batch allowed) back into its photo.

    original: the photo the crop came from (path, PIL image or [1, 3, H, W] in [-1, 1])
    edited:   [B, 3, s, s] in [-1, 1], in the aligned frame (e.g. a 256 or 1024 generator output)
    mask:     optional user mask in the aligned frame (see ``face_mask``)

    Pixels where the mask is 0 are returned bit for bit from ``original``.
    """
    photo = _photo_tensor(original, aligned)
    edited = _edited_tensor(edited)
    device = edited.device
    photo = photo.to(device)
    _, _, height, width = photo.shape
    out = photo.expand(edited.shape[0], -1, -1, -1).clone()
    full_mask = torch.zeros(1, height, width, device=device)

    region = _region(aligned.quad, width, height)
    if region is None:
        return PasteResult(out, full_mask)
    x0, y0, x1, y1 = region
    grid = _sampling_grid(aligned, x0, y0, x1, y1).to(device)
    weights = face_mask(aligned, feather=feather, mask=mask).to(device)
    m = F.grid_sample(weights, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    face = F.grid_sample(
        _prefilter(edited, aligned), grid.expand(edited.shape[0], -1, -1, -1),
        mode="bilinear", padding_mode="border", align_corners=False,
    )
    patch = out[:, :, y0:y1, x0:x1]
    blended = patch + (face - patch) * m
    out[:, :, y0:y1, x0:x1] = torch.where(m > 0, blended, patch)
    full_mask[:, y0:y1, x0:x1] = m
    return PasteResult(out, full_mask)


def _photo_tensor(original, aligned: AlignedFace) -> torch.Tensor:
    if torch.is_tensor(original):
        photo = original[None] if original.dim() == 3 else original
        if photo.dim() != 4 or photo.shape[:2] != (1, 3):
            raise TargetCLIPError(f"original: expected one image [1, 3, H, W], got {list(original.shape)}")
        if not torch.isfinite(photo).all():
            raise TargetCLIPError("original: the image contains NaN or infinite values")
        photo = photo.float()
    elif isinstance(original, (str, os.PathLike)):
        photo = load_image(original)  # the one reader: upright as its EXIF tag says, like align_face's read
    else:
        rgb, _ = rgb_array(original)
        photo = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 127.5 - 1
    size = (photo.shape[3], photo.shape[2])
    if tuple(size) != tuple(aligned.source_size):
        raise TargetCLIPError(
            f"original is {size[0]}x{size[1]} but the face was aligned from a "
            f"{aligned.source_size[0]}x{aligned.source_size[1]} image{f' ({aligned.name})' if aligned.name else ''}"
        )
    return photo


def _edited_tensor(edited) -> torch.Tensor:
    if not torch.is_tensor(edited):
        raise TargetCLIPError(f"edited: expected a [B, 3, S, S] tensor, got {type(edited).__name__}")
    e = edited[None] if edited.dim() == 3 else edited
    if e.dim() != 4 or e.shape[1] != 3 or e.shape[2] != e.shape[3] or e.shape[2] < 2 or e.shape[0] < 1:
        raise TargetCLIPError(f"edited: expected square aligned faces [B, 3, S, S], got {list(edited.shape)}")
    if not torch.isfinite(e).all():
        raise TargetCLIPError("edited: the image contains NaN or infinite values")
    return e.detach().float()


def _region(quad: np.ndarray, width: int, height: int):
    """Integer pixel box covering the square (one pixel of slack), clipped; None if off-image."""
    x0, y0, x1, y1 = _bounds(quad)
    x0, y0 = max(x0 - 1, 0), max(y0 - 1, 0)
    x1, y1 = min(x1 + 2, width), min(y1 + 2, height)
    return None if x1 <= x0 or y1 <= y0 else (x0, y0, x1, y1)


def _sampling_grid(aligned: AlignedFace, x0: int, y0: int, x1: int, y1: int) -> torch.Tensor:
    """grid_sample coordinates ([-1, 1] across the crop, align_corners=False) of photo pixels."""
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    origin, right, down = aligned.quad[0], aligned.quad[3] - aligned.quad[0], aligned.quad[1] - aligned.quad[0]
    # photo pixel p = origin + a * right + b * down, with (a, b) in [0, 1] across the square
    inverse = np.linalg.inv(np.stack([right, down], axis=1))
    ab = np.stack([xs - origin[0], ys - origin[1]], axis=-1) @ inverse.T
    return torch.from_numpy((ab * 2 - 1).astype(np.float32))[None]


def _prefilter(edited: torch.Tensor, aligned: AlignedFace) -> torch.Tensor:
    """Downscale (antialiased) an edited face larger than its footprint in the photo.

    Bilinear sampling alone would alias when e.g. a 1024 crop lands on a 300 px face.
    """
    footprint = max(math.ceil(np.hypot(*(aligned.quad[3] - aligned.quad[0]))), 2)
    if edited.shape[-1] <= footprint:
        return edited
    return F.interpolate(edited, size=(footprint, footprint), mode="bilinear", antialias=True, align_corners=False)
