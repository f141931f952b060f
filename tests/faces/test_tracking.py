"""A face tracked through a clip: landmarks per frame, smoothed over time, FFHQ-aligned, jitter measured.

Expectations come from outside the code under test: a synthetic clip made here from a real photo
moved and scaled by a known affine map (so the true landmarks of every frame are the photo's own
landmarks, detected once at full resolution, carried through that map), blank frames placed by
hand, a second face placed by hand, and hand-made tracks whose smoothed values follow from
algebra (a Gaussian of a constant or of a line is the same constant or line).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers.paths import require_shared
from PIL import Image, ImageOps

from targetclip_core.errors import CheckpointError, TargetCLIPError
from targetclip_core.faces.alignment import ffhq_quad
from targetclip_core.faces.landmarks import detect_faces, five_points, load_mtcnn
from targetclip_core.faces.tracking import (
    DEFAULT_SIGMA,
    align_frames,
    crop_jitter,
    smooth_landmarks,
    track_landmarks,
)

SIZE = 128  # frame side: MTCNN finds the ~45 px face at this size in well under a second
FRAMES = 14
BLANK = (6, 7)  # frames with no face at all, in the middle of the clip
GREY = (128, 128, 128)


def motion(t: int) -> tuple[float, float, float]:
    """The known map photo pixel -> frame pixel of frame t: scale s, offset (ox, oy).

    2.3 / 0.7 px per frame of pan and a slow 1.7% per frame zoom; fractional steps so the
    face lands differently on the pixel grid every frame (what makes a detector jitter).
    """
    return 0.09 + 0.0015 * t, 8.0 + 2.3 * t, 6.0 + 0.7 * t


def place(photo: Image.Image, scale: float, ox: float, oy: float, canvas: Image.Image) -> Image.Image:
    """The photo scaled and moved into the canvas (PIL's affine takes the frame -> photo map)."""
    inverse = (1 / scale, 0, -ox / scale, 0, 1 / scale, -oy / scale)
    layer = photo.transform(canvas.size, Image.AFFINE, inverse, Image.BICUBIC, fillcolor=GREY)
    mask = Image.new("L", photo.size, 255).transform(canvas.size, Image.AFFINE, inverse, Image.BILINEAR)
    out = canvas.copy()
    out.paste(layer, (0, 0), mask)
    return out


def true_landmarks(photo_points: np.ndarray, t: int) -> np.ndarray:
    scale, ox, oy = motion(t)
    # pixel centres: photo pixel p lands at frame position scale * (p + 0.5) - 0.5 + offset
    return scale * (photo_points + 0.5) - 0.5 + np.array([ox, oy])


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    path = require_shared("data", "targetclip", "targets", "keanu.jpg")
    try:
        load_mtcnn()
    except CheckpointError as e:
        pytest.skip(f"MTCNN weights unavailable: {e}")
    return Image.open(path).convert("RGB")


@pytest.fixture(scope="module")
def clip(photo) -> np.ndarray:
    """[T, H, W, 3] uint8: the photo panned and zoomed, BLANK frames plain grey."""
    blank = Image.new("RGB", (SIZE, SIZE), GREY)
    frames = [blank if t in BLANK else place(photo, *motion(t), blank) for t in range(FRAMES)]
    return np.stack([np.asarray(f) for f in frames])


@pytest.fixture(scope="module")
def raw_track(clip) -> list:
    calls = []
    track = track_landmarks(clip, on_frame=lambda done, total: calls.append((done, total)))
    assert calls == [(t + 1, FRAMES) for t in range(FRAMES)]
    return track


@pytest.fixture(scope="module")
def photo_points(photo) -> np.ndarray:
    """The five points of the photo at full resolution (independent of the clip's detections)."""
    return five_points(detect_faces(np.array(photo))[0].landmarks)


# --------------------------------------------------------------------------- the synthetic clip


def test_track_is_none_exactly_at_the_blank_frames(raw_track):
    assert len(raw_track) == FRAMES
    assert [t for t, lm in enumerate(raw_track) if lm is None] == list(BLANK)
    assert all(lm.shape == (5, 2) and np.isfinite(lm).all() for lm in raw_track if lm is not None)


def test_smoothing_removes_jitter_and_still_follows_the_motion(clip, raw_track, photo_points):
    smooth = smooth_landmarks(raw_track)
    assert [lm is None for lm in smooth] == [lm is None for lm in raw_track]

    raw_aligned = align_frames(clip, raw_track, output_size=64, transform_size=128)
    smooth_aligned = align_frames(clip, smooth, output_size=64, transform_size=128)
    assert [a is None for a in smooth_aligned] == [t in BLANK for t in range(FRAMES)]
    assert all(a.image.shape == (1, 3, 64, 64) for a in smooth_aligned if a is not None)

    # the true crops accelerate by ~0 (linear pan and zoom), so the whole measure is jitter
    truth = [ffhq_quad(true_landmarks(photo_points, t))[0] for t in range(FRAMES)]
    assert crop_jitter(truth) < 0.05
    raw_jitter, smooth_jitter = crop_jitter(raw_aligned), crop_jitter(smooth_aligned)
    assert raw_jitter > 0.5, "the detector should jitter on this clip, else the test shows nothing"
    assert smooth_jitter < 0.3 * raw_jitter, (raw_jitter, smooth_jitter)

    # following: mean corner error against the known motion, a few px (the detector's own bias at
    # 45 px faces included), and no worse than the unsmoothed crops, which do not lag at all
    def error(aligned):
        return np.mean([np.hypot(*(a.quad - truth[t]).T).mean() for t, a in enumerate(aligned) if a is not None])

    raw_error, smooth_error = error(raw_aligned), error(smooth_aligned)
    assert smooth_error < 5.0, smooth_error
    assert smooth_error <= raw_error + 0.25, (raw_error, smooth_error)


def test_the_track_stays_on_the_same_face_when_a_larger_one_appears(photo):
    """Face A pans slowly on the left; from frame 2 a larger face B sits far to the right."""
    background = Image.new("RGB", (224, 128), GREY)
    mirrored = ImageOps.mirror(photo)
    frames = []
    for t in range(5):
        frame = place(photo, 0.075, 6.0 + 1.5 * t, 20.0, background)
        if t >= 2:
            frame = place(mirrored, 0.11, 104.0, 2.0, frame)
        frames.append(np.asarray(frame))
    faces_late = detect_faces(frames[-1].copy(), select="largest")
    assert len(faces_late) == 2 and faces_late[0].box[0] > 100, "B must be found and be the larger face"

    track = track_landmarks(np.stack(frames))
    assert all(lm is not None for lm in track)
    centres = np.array([lm.mean(axis=0)[0] for lm in track])
    assert (centres < 80).all(), centres  # face A's points sit at x ~ 20..60; B's beyond 120


# --------------------------------------------------------------------------- hand-made tracks


def lm_at(x: float, y: float) -> np.ndarray:
    """A face-shaped set of five points (eyes 20 px apart) shifted to (x, y)."""
    base = np.array([[-10.0, 0.0], [10.0, 0.0], [0.0, 10.0], [-8.0, 20.0], [8.0, 20.0]])
    return base + np.array([x, y])


@pytest.mark.parametrize("edge", ["linear", "normalized"])
def test_a_constant_track_stays_constant(edge):
    track = [lm_at(40.0, 30.0)] * 9
    for lm in smooth_landmarks(track, sigma=2.0, edge=edge):
        np.testing.assert_allclose(lm, lm_at(40.0, 30.0), atol=1e-9)


def test_a_line_stays_a_line():
    track = [lm_at(10.0 + 3.0 * t, 5.0 - 1.5 * t) for t in range(15)]
    # the plain Gaussian reproduces the line wherever its 3-sigma window lies inside the run
    radius = math.ceil(3 * DEFAULT_SIGMA)
    plain = smooth_landmarks(track, edge="normalized")
    for t in range(radius, 15 - radius):
        np.testing.assert_allclose(plain[t], track[t], atol=1e-9)
    assert np.abs(plain[0] - track[0]).max() > 1.0  # the one-sided average lags at the ends
    # the default (straight-line fit at the ends) reproduces it everywhere
    for got, want in zip(smooth_landmarks(track), track):
        np.testing.assert_allclose(got, want, atol=1e-9)


def test_missing_frames_split_runs():
    track = [lm_at(0.0, 0.0)] * 5 + [None] + [lm_at(30.0, 0.0)] * 5
    smooth = smooth_landmarks(track, sigma=2.0)
    assert smooth[5] is None
    for t in range(5):  # nothing leaks across the gap: each run is constant, so stays so
        np.testing.assert_allclose(smooth[t], lm_at(0.0, 0.0), atol=1e-9)
        np.testing.assert_allclose(smooth[t + 6], lm_at(30.0, 0.0), atol=1e-9)

    bridged = smooth_landmarks(track, sigma=2.0, max_gap=1, edge="normalized")
    assert bridged[5] is None
    assert 0.0 < bridged[4][0, 0] - lm_at(0.0, 0.0)[0, 0] < 15.0  # one run now: the step is blurred


def test_noise_is_reduced_and_none_is_kept():
    rng = np.random.default_rng(0)
    track = [lm_at(50.0, 50.0) + rng.normal(0, 1.0, (5, 2)) for _ in range(40)]
    track[20] = None
    smooth = smooth_landmarks(track)
    assert smooth[20] is None

    def quads(tr):
        return [None if lm is None else ffhq_quad(lm)[0] for lm in tr]

    assert crop_jitter(quads(smooth)) < 0.3 * crop_jitter(quads(track))
    assert smooth_landmarks(track, sigma=0)[3] is not track[3]
    np.testing.assert_array_equal(smooth_landmarks(track, sigma=0)[3], track[3])


def test_bad_arguments_are_refused():
    with pytest.raises(TargetCLIPError, match="sigma"):
        smooth_landmarks([lm_at(0, 0)], sigma=-1)
    with pytest.raises(TargetCLIPError, match="max_gap"):
        smooth_landmarks([lm_at(0, 0)], max_gap=1.5)
    with pytest.raises(TargetCLIPError, match="edge"):
        smooth_landmarks([lm_at(0, 0)], edge="cubic")
    with pytest.raises(TargetCLIPError, match="frames"):
        align_frames(np.zeros((2, 32, 32, 3), np.uint8), [None])
    assert math.isnan(crop_jitter([None, np.zeros((4, 2)), None]))
