"""One face followed through a clip, its landmarks smoothed over time, each frame FFHQ-aligned.

A detector run frame by frame jitters by a pixel or two even on a still face; the FFHQ square
is built from the eyes and mouth, so that jitter shakes the aligned crop (and everything pasted
back from it).  The pipeline here:

1. ``track_landmarks``: five points per frame (None where no face).  With several faces the
   track follows the one nearest the face it followed last (not simply the largest), so it does
   not jump between people when someone else walks in.
2. ``smooth_landmarks``: a Gaussian over time of every coordinate, inside each continuous run
   of frames with a face.  At the ends of a run (where a one-sided average would lag behind a
   moving face) it is a Gaussian-weighted straight-line fit, which is the same number as the
   Gaussian wherever the whole window lies inside the run.
3. ``align_frames``: ``align_face`` on each frame with the smoothed points.
4. ``crop_jitter``: how much the crop shakes, in source pixels (mean length of the second
   difference of the crop corners: smooth motion, even accelerating slowly, scores about 0).

Frames are uint8 [T, H, W, 3] (tensor or array, or a sequence of [H, W, 3] frames); float
frames in [0, 1] (ComfyUI's IMAGE) are rounded to 8 bits, as the detectors read 8-bit pixels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from targetclip_core.errors import TargetCLIPError
from targetclip_core.faces.alignment import AlignedFace, align_face
from targetclip_core.faces.landmarks import Face, detect_faces, five_points

__all__ = [
    "DEFAULT_MAX_GAP",
    "DEFAULT_SIGMA",
    "align_frames",
    "crop_jitter",
    "smooth_landmarks",
    "track_landmarks",
]

# sigma in frames. 1.5 averages ~5 frames (the weights' effective count 2 sqrt(pi) sigma), which
# cuts the detector's frame-to-frame noise several times over (tests/faces/test_tracking.py:
# crop jitter on a synthetic moving, zooming clip falls well below 0.7x), while the straight-line
# fit keeps constant-velocity motion exact and a slow zoom's curvature error under sigma^2 / 2 x
# the acceleration (sub-pixel for real head motion at video rates).
DEFAULT_SIGMA = 1.5
# missing frames are not bridged by default: a frame with no face is as often a cut as a
# detector miss, and smoothing across a cut drags one shot's crop into the other
DEFAULT_MAX_GAP = 0
EDGES = ("linear", "normalized")

ProgressCallback = Callable[[int, int], None]


# --------------------------------------------------------------------------- frames


def _frames_list(frames) -> list[np.ndarray]:
    """[T, H, W, 3] tensor / array or a sequence of [H, W, 3] -> list of uint8 contiguous arrays."""
    if torch.is_tensor(frames):
        frames = frames.detach().cpu().numpy()
    items = list(frames) if not isinstance(frames, np.ndarray) or frames.ndim == 4 else None
    if items is None:
        raise TargetCLIPError(f"frames: expected [T, H, W, 3] pixels, got shape {list(frames.shape)}")
    out = []
    for t, frame in enumerate(items):
        arr = frame.detach().cpu().numpy() if torch.is_tensor(frame) else np.asarray(frame)
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise TargetCLIPError(f"frame {t}: expected [H, W, 3] RGB pixels, got shape {list(arr.shape)}")
        if arr.dtype != np.uint8:
            if not np.issubdtype(arr.dtype, np.floating):
                raise TargetCLIPError(f"frame {t}: expected uint8 or float [0, 1] pixels, got {arr.dtype}")
            if not np.isfinite(arr).all():
                raise TargetCLIPError(f"frame {t}: the pixels contain NaN or infinite values")
            arr = np.rint(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8)
        arr = np.ascontiguousarray(arr)
        out.append(arr if arr.flags.writeable else arr.copy())  # torch warns on read-only arrays
    return out


# --------------------------------------------------------------------------- tracking


def _centre_and_size(points: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre of the five points and the face's scale (eye distance or eye-to-mouth, the larger)."""
    eyes = (points[0] + points[1]) / 2
    mouth = (points[3] + points[4]) / 2
    size = max(float(np.hypot(*(points[1] - points[0]))), float(np.hypot(*(mouth - eyes))), 1.0)
    return points.mean(axis=0), size


def _follow(faces: list[Face], previous: np.ndarray | None) -> Face:
    """The face to keep: the detector's best first time, later the one nearest the last one followed."""
    if previous is None or len(faces) == 1:
        return faces[0]
    centre, _ = _centre_and_size(previous)
    distances = [float(np.hypot(*(_centre_and_size(five_points(f.landmarks))[0] - centre))) for f in faces]
    return faces[int(np.argmin(distances))]


def track_landmarks(
    frames,
    detector: str = "mtcnn",
    select: str = "largest",
    device=None,
    on_frame: ProgressCallback | None = None,
) -> list[np.ndarray | None]:
    """Five landmarks (float64 [5, 2], x, y pixels) per frame, None where no face is found.

    ``select`` ("largest" / "probability") picks the face in the first frame that has one; after
    that the track follows the face nearest (by the centre of its five points) the face followed
    last, across frames without a face too, so it stays on one person.  The track is not gated:
    if that person leaves and someone else is the only face, it moves to them.
    ``on_frame(done, total)`` is called after each frame (it may raise to cancel).
    """
    pixels = _frames_list(frames)
    track: list[np.ndarray | None] = []
    previous = None
    for t, frame in enumerate(pixels):
        faces = detect_faces(frame, detector, select, device, name=f"frame {t}")
        if faces:
            previous = five_points(_follow(faces, previous).landmarks, f"frame {t}")
            track.append(previous.copy())
        else:
            track.append(None)
        if on_frame is not None:
            on_frame(t + 1, len(pixels))
    return track


# --------------------------------------------------------------------------- smoothing


def _segments(track: Sequence[np.ndarray | None], max_gap: int) -> list[list[int]]:
    """Frame indices with landmarks, grouped into runs; gaps of at most max_gap frames do not split."""
    segments: list[list[int]] = []
    last = None
    for t, lm in enumerate(track):
        if lm is None:
            continue
        if last is None or t - last - 1 > max_gap:
            segments.append([])
        segments[-1].append(t)
        last = t
    return segments


def _smooth_segment(times: np.ndarray, values: np.ndarray, sigma: float, edge: str) -> np.ndarray:
    """values [N, D] at frame times [N] -> smoothed [N, D] (Gaussian window truncated at 3 sigma)."""
    out = np.empty_like(values)
    radius = math.ceil(3 * sigma)
    for i, t in enumerate(times):
        near = np.abs(times - t) <= radius
        dt = (times[near] - t).astype(np.float64)
        w = np.exp(-0.5 * (dt / sigma) ** 2)
        w /= w.sum()
        mean_t = float(w @ dt)
        mean_v = w @ values[near]
        spread = float(w @ (dt - mean_t) ** 2)
        if edge == "normalized" or spread < 1e-12:
            out[i] = mean_v
            continue
        # weighted least-squares line through the window, read at dt = 0; with a symmetric
        # window mean_t = 0 and this is exactly the Gaussian average
        slope = (w * (dt - mean_t)) @ (values[near] - mean_v) / spread
        out[i] = mean_v - slope * mean_t
    return out


def smooth_series(values: np.ndarray, sigma: float = DEFAULT_SIGMA, edge: str = "linear") -> np.ndarray:
    """Any per-frame values [T, ...] of one continuous run (e.g. a clip's latents) smoothed over time as
    smooth_landmarks smooths each coordinate: a Gaussian of `sigma` frames, a local line at the ends."""
    values = np.asarray(values, dtype=np.float64)
    if sigma <= 0 or len(values) < 2:
        return values.copy()
    flat = values.reshape(len(values), -1)
    return _smooth_segment(np.arange(len(values)), flat, sigma, edge).reshape(values.shape)


def smooth_landmarks(
    track: Sequence[np.ndarray | None],
    sigma: float = DEFAULT_SIGMA,
    max_gap: int = DEFAULT_MAX_GAP,
    edge: str = "linear",
) -> list[np.ndarray | None]:
    """Temporal smoothing of every landmark coordinate, run by run; frames with no face stay None.

    sigma:   Gaussian width in frames (0 returns the track unchanged)
    max_gap: runs separated by at most this many frames without a face are smoothed as one (the
             missing frames simply carry no weight and stay None); 0 = never bridge (default)
    edge:    "linear" (default): near a run's ends, a Gaussian-weighted straight-line fit, so a
             moving face is not pulled back towards where it was; "normalized": the plain Gaussian
             average renormalised over the frames present (lags by about 0.8 sigma x the velocity
             at the ends).  Both equal the Gaussian average where the whole window is inside a run.
    """
    if not (isinstance(sigma, (int, float)) and not isinstance(sigma, bool) and math.isfinite(sigma) and sigma >= 0):
        raise TargetCLIPError(f"sigma must be a finite number of frames >= 0, got {sigma!r}")
    if isinstance(max_gap, bool) or not isinstance(max_gap, (int, np.integer)) or max_gap < 0:
        raise TargetCLIPError(f"max_gap must be a whole number of frames >= 0, got {max_gap!r}")
    if edge not in EDGES:
        raise TargetCLIPError(f"edge must be one of {', '.join(EDGES)}, got {edge!r}")
    points = [None if lm is None else five_points(lm, f"frame {t}") for t, lm in enumerate(track)]
    out: list[np.ndarray | None] = [None] * len(points)
    for segment in _segments(points, int(max_gap)):
        values = np.stack([points[t].reshape(-1) for t in segment])
        smoothed = values if sigma == 0 else _smooth_segment(np.asarray(segment), values, float(sigma), edge)
        for t, row in zip(segment, smoothed):
            out[t] = row.reshape(5, 2).copy()
    return out


# --------------------------------------------------------------------------- alignment and jitter


def align_frames(
    frames,
    track: Sequence[np.ndarray | None],
    output_size: int = 1024,
    transform_size: int = 4096,
    enable_padding: bool = True,
    on_frame: ProgressCallback | None = None,
) -> list[AlignedFace | None]:
    """``align_face`` of each frame with its (smoothed) landmarks; frames without a face give None."""
    pixels = _frames_list(frames)
    if len(track) != len(pixels):
        raise TargetCLIPError(f"the track has {len(track)} frames but the clip has {len(pixels)}")
    out: list[AlignedFace | None] = []
    for t, (frame, lm) in enumerate(zip(pixels, track)):
        if lm is None:
            out.append(None)
        else:
            out.append(align_face(frame, landmarks=lm, output_size=output_size, transform_size=transform_size,
                                  enable_padding=enable_padding, name=f"frame {t}"))
        if on_frame is not None:
            on_frame(t + 1, len(pixels))
    return out


def _quad(item) -> np.ndarray | None:
    if item is None:
        return None
    quad = np.asarray(item.quad if isinstance(item, AlignedFace) else item, dtype=np.float64)
    if quad.shape != (4, 2):
        raise TargetCLIPError(f"crop_jitter: expected AlignedFace or [4, 2] quads, got shape {list(quad.shape)}")
    return quad


def crop_jitter(aligned_list: Sequence[AlignedFace | np.ndarray | None]) -> float:
    """Mean length (source pixels) of the second difference in time of the crop's four corners.

    The acceleration of the corners: steady panning or zooming scores about 0, frame-to-frame
    shake scores its size (a corner jumping back and forth by d px scores up to 2d).  Only
    three consecutive frames that all have a crop count; NaN when there are none.
    Accepts AlignedFace items (their ``quad``) or [4, 2] corner arrays, None for no face.
    """
    quads = [_quad(item) for item in aligned_list]
    steps = [
        np.hypot(*(quads[t + 1] - 2 * quads[t] + quads[t - 1]).T)
        for t in range(1, len(quads) - 1)
        if quads[t - 1] is not None and quads[t] is not None and quads[t + 1] is not None
    ]
    return float(np.mean(steps)) if steps else float("nan")
