"""Face landmarks (MTCNN, hand points) and FFHQ alignment with its inverse and paste-back.

Expectations come from outside the code under test: facenet-pytorch's own MTCNN,
positions derived by hand from the FFHQ formula, images whose pixel values are
their own coordinates, patterns drawn at known places, and re-detection on the crop.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers.paths import require_shared
from PIL import Image, ImageDraw

from targetclip_core.errors import TargetCLIPError
from targetclip_core.faces.alignment import (
    AlignedFace,
    align_face,
    face_mask,
    gaussian_filter,
    paste_back,
)
from targetclip_core.faces.landmarks import (
    Face,
    clear_detector_cache,
    detect_faces,
    detect_landmarks,
    face_landmarks,
    five_points,
    load_mtcnn,
)
from targetclip_core.io.images import load_image

PHOTOS = [  # photographs of people: a face must be found
    "beyonce", "doc_brown", "dumbledore", "ed_sheeran", "grindelwald", "joker",
    "keanu", "megan", "morgan_freeman", "trump", "wolverine",
]
DRAWN = ["avatar", "elsa", "moana", "pocahontas", "thanos"]  # cartoons / CGI: a face or the clear error


def target(name: str):
    return require_shared("data", "targetclip", "targets", f"{name}.jpg")


@pytest.fixture(scope="module")
def faces() -> dict[str, list[Face]]:
    """Our MTCNN on every target image, once."""
    return {name: detect_faces(target(name)) for name in PHOTOS + DRAWN}


@pytest.fixture(scope="module")
def detections(faces) -> dict[str, np.ndarray]:
    """Landmarks [K, 5, 2] of the images where a face was found."""
    return {name: np.stack([f.landmarks for f in found]) for name, found in faces.items() if found}


def hand_quad_params(lm5: np.ndarray) -> tuple[np.ndarray, float]:
    """The FFHQ square's centre c and side qsize, straight from the formula."""
    lm = lm5.astype(np.float64)
    eye_avg = (lm[0] + lm[1]) / 2
    eye_to_eye = lm[1] - lm[0]
    eye_to_mouth = (lm[3] + lm[4]) / 2 - eye_avg
    half = max(2.0 * np.hypot(*eye_to_eye), 1.8 * np.hypot(*eye_to_mouth))
    return eye_avg + 0.1 * eye_to_mouth, 2.0 * half


# --------------------------------------------------------------------------- detection


def test_mtcnn_matches_facenet_pytorch(faces):
    """Boxes, scores and the five points equal facenet-pytorch's own MTCNN on the real photos."""
    try:
        from facenet_pytorch import MTCNN as ReferenceMTCNN
    except Exception as e:  # noqa: BLE001  (an old package on a new torch can fail in many ways)
        pytest.skip(f"facenet_pytorch cannot be imported here ({type(e).__name__}: {e}); no reference")
    reference = ReferenceMTCNN(keep_all=True)
    compared = 0
    for name in PHOTOS + DRAWN:
        image = Image.open(target(name)).convert("RGB")
        boxes, probs, points = reference.detect(image, landmarks=True)
        ours = faces[name]
        if boxes is None:
            assert ours == [], name
            continue
        assert len(ours) == len(boxes), name
        np.testing.assert_allclose(np.stack([f.box for f in ours]), boxes.astype(np.float32), atol=1e-2, err_msg=name)
        np.testing.assert_allclose([f.score for f in ours], probs.astype(np.float32), atol=1e-4, err_msg=name)
        np.testing.assert_allclose(
            np.stack([f.landmarks for f in ours]), points.astype(np.float32), atol=1e-2, err_msg=name
        )
        compared += len(boxes)
    assert compared >= len(PHOTOS)


def test_faces_found_on_photos_and_drawn_faces_found_or_refused_clearly(detections):
    for name in PHOTOS:
        assert name in detections, f"no face found in the photograph {name}"
        lm = detections[name]
        assert lm.ndim == 3 and lm.shape[1:] == (5, 2) and lm.dtype == np.float32
        width, height = Image.open(target(name)).size
        assert (lm[0, :, 0] >= 0).all() and (lm[0, :, 0] < width).all() and (lm[0, :, 1] < height).all()
        eye_left, eye_right, nose, mouth_left, mouth_right = lm[0]
        assert eye_left[0] < nose[0] < eye_right[0] and mouth_left[0] < mouth_right[0]
        assert max(eye_left[1], eye_right[1]) < nose[1] < min(mouth_left[1], mouth_right[1])
    for name in DRAWN:
        if name in detections:
            assert detections[name].shape[1:] == (5, 2)
        else:
            with pytest.raises(TargetCLIPError) as refused:
                align_face(target(name), output_size=64)
            assert str(refused.value).startswith(f"no face found in {target(name)}")
    assert "avatar" not in detections  # a Na'vi: MTCNN does not see a face


def test_blank_image_has_no_face():
    blank = torch.zeros(1, 3, 200, 300)
    assert detect_faces(blank) == []
    with pytest.raises(TargetCLIPError, match="no face found in the image tensor"):
        detect_landmarks(blank)
    with pytest.raises(TargetCLIPError, match="no face found in blank.png"):
        align_face(blank, name="blank.png")
    with pytest.raises(TargetCLIPError, match="no face found"):
        align_face(torch.zeros(1, 3, 8, 8))  # smaller than any detector window


def test_detector_cache_is_shared_and_clearable():
    first = load_mtcnn()
    assert load_mtcnn("cpu") is first
    clear_detector_cache()
    assert load_mtcnn() is not first


def test_dlib_detector_requires_module_and_file(tmp_path):
    missing = tmp_path / "shape_predictor_68_face_landmarks.dat"
    with pytest.raises(TargetCLIPError, match="shape predictor file not found"):
        detect_landmarks(torch.zeros(1, 3, 64, 64), detector=f"dlib:{missing}")
    missing.write_bytes(b"\0" * 64)
    try:
        import dlib  # noqa: F401
    except ImportError:
        with pytest.raises(TargetCLIPError, match="needs the dlib module"):
            detect_landmarks(torch.zeros(1, 3, 64, 64), detector=f"dlib:{missing}")
    with pytest.raises(TargetCLIPError, match="unknown landmark detector"):
        detect_landmarks(torch.zeros(1, 3, 64, 64), detector="retinaface")


# --------------------------------------------------------------------------- hand landmarks


def sixty_eight_from_five(lm5: np.ndarray, seed: int = 0) -> np.ndarray:
    """68 iBUG points whose eye contours average to the eye points and whose 48/54 are the mouth corners."""
    rng = np.random.default_rng(seed)
    lm = rng.uniform(0, 100, (68, 2))
    ring = np.stack([np.cos(np.arange(6) * np.pi / 3), 0.5 * np.sin(np.arange(6) * np.pi / 3)], axis=1) * 12
    lm[36:42] = lm5[0] + ring
    lm[42:48] = lm5[1] + ring[::-1]
    lm[48], lm[54] = lm5[3], lm5[4]
    lm[30] = lm5[2]
    return lm


def test_68_point_and_5_point_landmarks_give_the_same_crop(detections):
    lm5 = detections["megan"][0].astype(np.float64)
    lm68 = sixty_eight_from_five(lm5)
    np.testing.assert_allclose(five_points(lm68), lm5, atol=1e-4)
    by5 = align_face(target("megan"), landmarks=lm5, output_size=128, transform_size=256)
    by68 = align_face(target("megan"), landmarks=lm68, output_size=128, transform_size=256)
    assert torch.equal(by5.image, by68.image)
    np.testing.assert_allclose(by5.quad, by68.quad, atol=1e-3)
    # given landmarks are used as they are, without running a detector on the image
    blank = align_face(torch.zeros(1, 3, 640, 640), landmarks=lm5, output_size=32, transform_size=32)
    assert blank.image.shape == (1, 3, 32, 32)


def test_bad_landmarks_are_refused():
    photo = torch.zeros(1, 3, 100, 100)
    for bad, message in [
        (np.zeros((4, 2)), r"expected shape \[5, 2\] or \[68, 2\]"),
        (np.full((5, 2), np.nan), "NaN"),
        (np.full((5, 2), 50.0), "do not describe a face"),
        ("eyes", "expected"),
    ]:
        with pytest.raises(TargetCLIPError, match=message):
            align_face(photo, landmarks=bad, output_size=16)
    far = np.array([[1000, 1000], [1040, 1000], [1020, 1020], [1005, 1040], [1035, 1040]], dtype=float)
    with pytest.raises(TargetCLIPError, match="lies outside the 100x100 image"):
        align_face(photo, landmarks=far, output_size=16)
    assert face_landmarks(None, landmarks=far).shape == (5, 2)


# --------------------------------------------------------------------------- crop geometry on photos


def test_crops_on_photos_put_the_face_where_the_ffhq_formula_says(detections):
    size, deviations = 256, []
    for name in PHOTOS:
        lm = detections[name][0]
        aligned = align_face(target(name), landmarks=lm, output_size=size, transform_size=1024)
        assert aligned.image.shape == (1, 3, size, size), name
        assert aligned.image.min() >= -1 and aligned.image.max() <= 1
        assert aligned.source_size == Image.open(target(name)).size
        np.testing.assert_array_equal(aligned.landmarks, lm)

        # c -> the crop centre; a point qsize/2 away -> S/2 away (crop pixel centres at i + 0.5).
        # When the script first shrinks the photo by an integer factor f it reads the square
        # (f - 1) / 2 photo pixels off (it divides pixel-centre coordinates by f): allow for that.
        c, qsize = hand_quad_params(lm)
        shrink = int(qsize / size * 0.5)
        slack = (max(shrink, 1) - 1) / 2 * math.sqrt(2) * size / qsize + 0.01
        centre = (size - 1) / 2
        assert np.hypot(*(aligned.to_aligned(c) - centre)) < slack, name
        mapped = aligned.to_aligned(lm)
        eye_gap = np.hypot(*(mapped[1] - mapped[0]))
        expected_gap = np.hypot(*(lm[1] - lm[0])) * size / qsize
        assert eye_gap == pytest.approx(expected_gap, rel=5e-3), name
        # rolled heads come out level: the eyes on one row within 3 degrees
        assert abs(mapped[1, 1] - mapped[0, 1]) < math.tan(math.radians(3)) * eye_gap, name
        np.testing.assert_allclose(aligned.to_source(mapped), lm, atol=1e-3)

        # independent check of the warp: MTCNN on the crop finds the points where the mapping puts
        # them, up to the detector's own jitter (a few % of the 64 px eye gap; Joker's paint is the worst)
        again = detect_landmarks(aligned.image)[0]
        deviation = np.hypot(*(again - mapped).T)
        assert deviation.mean() < 4.5 and deviation.max() < 8.0, f"{name}: {deviation.round(1)}"
        deviations.append(deviation.mean())
    assert np.mean(deviations) < 3.0, np.round(deviations, 1)


def test_tensor_pil_and_path_inputs_give_identical_crops(detections):
    lm = detections["morgan_freeman"][0]
    path = target("morgan_freeman")
    by_path = align_face(path, landmarks=lm, output_size=64, transform_size=256)
    by_pil = align_face(Image.open(path), landmarks=lm, output_size=64, transform_size=256)
    by_tensor = align_face(load_image(path), landmarks=lm, output_size=64, transform_size=256)
    assert torch.equal(by_path.image, by_pil.image) and torch.equal(by_path.image, by_tensor.image)


def test_default_size_and_odd_sizes(detections):
    lm = detections["grindelwald"][0]
    assert align_face(target("grindelwald"), landmarks=lm).image.shape == (1, 3, 1024, 1024)
    # output larger than the transform: the transform is raised, never a smaller crop
    assert align_face(target("grindelwald"), landmarks=lm, output_size=100, transform_size=64).size == 100
    for bad in (0, -3, 2.5, True):
        with pytest.raises(TargetCLIPError, match="output_size must be a positive integer"):
            align_face(target("grindelwald"), landmarks=lm, output_size=bad)


# --------------------------------------------------------------------------- synthetic geometry


CANONICAL = np.array([[160, 180], [240, 180], [200, 220], [170, 260], [230, 260]], dtype=np.float64)
COLOURS = [(255, 0, 0), (0, 255, 0), (128, 128, 128), (0, 0, 255), (255, 255, 0)]


def draw_pattern(size: tuple[int, int], points: np.ndarray, radius: float, supersample: int = 4) -> Image.Image:
    """Coloured discs on grey at `points` (pixel-centre coordinates), antialiased by supersampling."""
    big = Image.new("RGB", (size[0] * supersample, size[1] * supersample), (128, 128, 128))
    draw = ImageDraw.Draw(big)
    for (x, y), colour in zip(points, COLOURS):
        cx, cy, r = (x + 0.5) * supersample, (y + 0.5) * supersample, radius * supersample
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    return big.resize(size, Image.BOX)


def blob_centres(img: torch.Tensor) -> np.ndarray:
    """Weighted centroids of the red, green, blue and yellow discs in [1, 3, H, W]."""
    r, g, b = ((img[0] + 1) * 127.5).double().numpy()
    weights = [r - np.maximum(g, b), g - np.maximum(r, b), b - np.maximum(r, g), np.minimum(r, g) - b]
    ys, xs = np.mgrid[0 : r.shape[0], 0 : r.shape[1]]
    out = []
    for w in weights:
        w = np.clip(w - 20, 0, None)  # ignore faint fringes
        out.append([(w * xs).sum() / w.sum(), (w * ys).sum() / w.sum()])
    return np.array(out)


def similarity(points: np.ndarray, angle_deg: float, scale: float, shift) -> np.ndarray:
    a = math.radians(angle_deg)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return (points - 200) @ rot.T * scale + np.asarray(shift, dtype=np.float64)


@pytest.mark.parametrize("angle, scale", [(0.0, 1.0), (27.0, 1.5), (-40.0, 0.6)])  # no shrink at 128
def test_known_pattern_lands_at_the_hand_computed_positions(angle, scale):
    size = 128
    points = similarity(CANONICAL, angle, scale, (430, 380))
    photo = draw_pattern((900, 800), points, radius=12 * scale)
    aligned = align_face(photo, landmarks=points, output_size=size, transform_size=512)

    # By hand: eye gap d = 80, eye-to-mouth h = 80, so qsize = max(4d, 3.6h) = 320 canonical
    # pixels and the crop shows size / 320 pixels per canonical pixel; c = eye centre + 0.1 h.
    k = size / 320
    mid = (size - 1) / 2
    expected = np.array(
        [
            [mid - 40 * k, mid - 8 * k],  # left eye
            [mid + 40 * k, mid - 8 * k],  # right eye
            [mid - 30 * k, mid + 72 * k],  # mouth left
            [mid + 30 * k, mid + 72 * k],  # mouth right
        ]
    )
    np.testing.assert_allclose(aligned.to_aligned(points[[0, 1, 3, 4]]), expected, atol=1e-9)
    np.testing.assert_allclose(blob_centres(aligned.image), expected, atol=0.25)


def test_inner_face_crop_is_one_quad_warp_of_the_whole_photo():
    """No shrink, no padding: cropping first must not move a pixel against one PIL warp of the photo."""
    points = similarity(CANONICAL, 0.0, 1.0, (250, 200))
    photo = draw_pattern((500, 400), points, 12)
    # by hand: eye gap 80 > 0.9 x eye-to-mouth 80, so x = (160, 0), y = (0, 160), c = eyes + (0, 8)
    c = points[:2].mean(0) + [0, 8]
    quad = np.stack([c + [-160, -160], c + [-160, 160], c + [160, 160], c + [160, -160]])
    expected = photo.transform((512, 512), Image.QUAD, tuple((quad + 0.5).flatten()), Image.BILINEAR)
    expected = expected.resize((128, 128), Image.LANCZOS)
    aligned = align_face(photo, landmarks=points, output_size=128, transform_size=512)
    np.testing.assert_allclose(aligned.quad, quad, atol=1e-9)
    assert torch.equal(aligned.image, load_image_from_pil(expected))


def load_image_from_pil(im: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(im, dtype=np.float32).copy()).permute(2, 0, 1)[None] / 127.5 - 1


def test_rotated_and_scaled_photos_give_the_same_crop():
    canonical = draw_pattern((400, 400), CANONICAL, 12)
    points = similarity(CANONICAL, 33.0, 1.6, (450, 420))
    rotated = draw_pattern((900, 800), points, 12 * 1.6)
    a = align_face(canonical, landmarks=CANONICAL, output_size=128, transform_size=512).image
    b = align_face(rotated, landmarks=points, output_size=128, transform_size=512).image
    assert (a - b).abs().mean() < 0.01


def coordinate_photo(size: int = 255) -> Image.Image:
    """Red = x, green = y: every pixel holds its own coordinates (255 = 3 x 85: shrinks by 3 exactly)."""
    ys, xs = np.mgrid[0:size, 0:size]
    return Image.fromarray(np.stack([xs, ys, np.full_like(xs, 128)], axis=-1).astype(np.uint8))


RAMP_LANDMARKS = np.array([[100, 112], [150, 106], [126, 135], [107, 161], [149, 156]], dtype=np.float64)


def read_positions(aligned: AlignedFace, margin: int) -> tuple[np.ndarray, np.ndarray]:
    """(position each crop pixel reads from the coordinate photo, where to_source says it is)."""
    s = aligned.size
    js, is_ = np.mgrid[margin : s - margin, margin : s - margin]
    where = aligned.to_source(np.stack([is_, js], axis=-1))
    read = ((aligned.image[0, :2] + 1) * 127.5).permute(1, 2, 0).double().numpy()[margin : s - margin, margin : s - margin]
    return read, where


@pytest.mark.parametrize("size", [200, 30])
def test_crop_pixels_come_from_where_to_source_says(size):
    """Bilinear sampling reproduces a linear ramp, so each crop pixel reads out its own source position.

    PIL's BILINEAR transform truncates to uint8, so the value read is floor(position).  The
    30 px crop makes the FFHQ script shrink the photo by 3 first; the one-pixel offset that
    step introduces must be part of the reported quad, or every pixel would read 1 px off.
    """
    aligned = align_face(coordinate_photo(), landmarks=RAMP_LANDMARKS, output_size=size, transform_size=size)
    read, where = read_positions(aligned, margin=1)
    error = read - where
    assert error.min() > -1.01 and error.max() < 0.01, (error.min(), error.max())


def test_supersampled_crop_reads_the_same_positions():
    """With FFHQ's supersampling (transform 4x larger, Lanczos down) the positions still agree.

    On average they read half a level low, the truncation of PIL's transform; Lanczos
    needs samples beyond the crop's edge, so its outer pixels are left out.
    """
    aligned = align_face(coordinate_photo(), landmarks=RAMP_LANDMARKS, output_size=200, transform_size=800)
    read, where = read_positions(aligned, margin=3)
    error = (read - where).reshape(-1, 2)
    assert np.abs(error.mean(0) + 0.5).max() < 0.2, error.mean(0)
    assert np.abs(error).max() < 1.2


# --------------------------------------------------------------------------- padding


def test_padding_blur_is_scipys_gaussian_filter():
    ndimage = pytest.importorskip("scipy.ndimage", reason="scipy is the reference for the FFHQ padding blur")
    rng = np.random.default_rng(1)
    for shape, sigma in [((60, 90, 3), 2.3), ((200, 150, 3), 7.9), ((20, 25, 3), 0.4)]:
        arr = (rng.random(shape) * 255).astype(np.float32)
        np.testing.assert_allclose(gaussian_filter(arr, sigma), ndimage.gaussian_filter(arr, [sigma, sigma, 0]), atol=2e-3)


def test_padding_fills_outside_the_photo_and_leaves_inner_faces_alone():
    # face near the top-left corner: the square leaves the photo
    corner = similarity(CANONICAL, 0, 1.0, (150, 140))
    photo = draw_pattern((500, 400), corner, 12)
    padded = align_face(photo, landmarks=corner, output_size=64, transform_size=256)
    black = align_face(photo, landmarks=corner, output_size=64, transform_size=256, enable_padding=False)
    assert (black.image[0, :, 1, 1] == -1).all()  # no padding: outside is black
    assert (padded.image[0, :, 1, 1] > -0.5).all()  # padding: mirrored grey, blurred, faded to the median
    # face well inside: padding never triggers and both crops are identical
    inner = similarity(CANONICAL, 0, 1.0, (250, 200))
    photo = draw_pattern((500, 400), inner, 12)
    a = align_face(photo, landmarks=inner, output_size=64, transform_size=256)
    b = align_face(photo, landmarks=inner, output_size=64, transform_size=256, enable_padding=False)
    assert torch.equal(a.image, b.image)


# --------------------------------------------------------------------------- paste back


@pytest.fixture(scope="module")
def trump(detections) -> tuple[torch.Tensor, AlignedFace]:
    photo = load_image(target("trump"))
    return photo, align_face(photo, landmarks=detections["trump"][0], output_size=512, transform_size=1024)


def test_paste_back_changes_nothing_outside_the_mask(trump):
    photo, aligned = trump
    edited = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0)) * 2 - 1
    out, mask = paste_back(photo, edited, aligned)
    assert out.shape == photo.shape and mask.shape == (1, photo.shape[2], photo.shape[3])
    outside = (mask == 0).expand_as(out[0])
    assert outside.any() and (mask > 0).any()
    assert torch.equal(out[0][outside], photo[0][outside])
    inside = (mask > 0.999).expand_as(out[0])
    assert inside.any() and not torch.equal(out[0][inside], photo[0][inside])


def test_paste_back_of_the_unedited_crop_reproduces_the_photo(trump):
    photo, aligned = trump
    for edited in (aligned.image, torch.nn.functional.interpolate(aligned.image, size=256, mode="area")):
        out, mask = paste_back(photo, edited, aligned)
        face = (mask[0] > 0.99).expand_as(out[0])
        assert face.sum() > 100_000
        assert (out[0][face] - photo[0][face]).abs().mean() < 0.03


def test_paste_back_mask_is_feathered_and_inside_the_square(trump):
    photo, aligned = trump
    _, mask = paste_back(photo, aligned.image, aligned)
    assert mask.min() == 0 and mask.max() == pytest.approx(1.0)
    soft = (mask > 0.02) & (mask < 0.98)
    assert soft.sum() > 0.05 * (mask > 0).sum()  # a real feathered band, not a hard edge
    # the landmarks are fully inside; the square's corners are outside
    for x, y in aligned.landmarks.round().astype(int):
        assert mask[0, y, x] == pytest.approx(1.0)
    width, height = aligned.source_size
    for x, y in aligned.quad.round().astype(int):
        if 0 <= x < width and 0 <= y < height:
            assert mask[0, y, x] == 0
    # the same mask in the aligned frame is soft on its edge, zero on the crop's border
    m = face_mask(aligned, size=128)
    assert m.shape == (1, 1, 128, 128)
    assert m[..., 0, :].max() == 0 and m[..., :, -1].max() == 0
    assert ((m > 0) & (m < 1)).any()


def test_paste_back_any_edited_size_and_batches(trump):
    photo, aligned = trump
    small = torch.nn.functional.interpolate(aligned.image, size=64, mode="area")
    big = torch.nn.functional.interpolate(aligned.image, size=1024, mode="bilinear", align_corners=False)
    out_small, mask_small = paste_back(photo, small, aligned)
    out_big, mask_big = paste_back(photo, torch.cat([big, -big]), aligned)
    assert out_small.shape == photo.shape and out_big.shape == (2, *photo.shape[1:])
    assert torch.equal(mask_small, mask_big)
    face = (mask_big[0] > 0.99).expand_as(photo[0])
    assert (out_big[0][face] - out_small[0][face]).abs().mean() < 0.06  # only the 64 px blur differs
    assert not torch.equal(out_big[0], out_big[1])


def test_paste_back_warps_a_known_colour_and_user_masks(trump):
    photo, aligned = trump
    red = torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1).expand(1, 3, 128, 128)
    out, mask = paste_back(photo, red, aligned)
    full = (mask[0] > 0.999).expand_as(out[0])
    assert full.sum() > 100_000
    assert torch.allclose(out[0][full], red[0, :, 0, 0].view(3, 1, 1).expand_as(out[0])[full], atol=2e-3)

    nothing, none_mask = paste_back(photo, red, aligned, mask=torch.zeros(64, 64))
    assert torch.equal(nothing, photo) and none_mask.max() == 0

    square, square_mask = paste_back(photo, red, aligned, mask=torch.ones(1, 64, 64), feather=0.0)
    cx, cy = aligned.to_source([(aligned.size - 1) / 2] * 2).round().astype(int)
    assert square_mask[0, cy, cx] > 0.999 and torch.allclose(square[0, :, cy, cx], red[0, :, 0, 0], atol=1e-3)
    assert (square_mask > 0).sum() > (mask > 0).sum()  # the whole square, not just the face ellipse


def test_paste_back_of_a_coordinate_crop_reads_back_the_coordinates():
    photo = coordinate_photo()
    aligned = align_face(photo, landmarks=RAMP_LANDMARKS, output_size=200, transform_size=800)
    original = torch.from_numpy(np.asarray(photo, dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1
    out, mask = paste_back(original, aligned.image, aligned)
    inside = mask[0] > 0.5
    assert inside.sum() > 5000
    assert ((out - original).abs()[0, :2][:, inside] * 127.5).max() < 1.5


def test_paste_back_refuses_bad_input(trump):
    photo, aligned = trump
    with pytest.raises(TargetCLIPError, match="aligned from a 1024x1024 image"):
        paste_back(photo[..., :500], aligned.image, aligned)
    with pytest.raises(TargetCLIPError, match="square aligned faces"):
        paste_back(photo, aligned.image[..., :300], aligned)
    with pytest.raises(TargetCLIPError, match="NaN"):
        paste_back(photo, torch.full((1, 3, 64, 64), float("nan")), aligned)
    with pytest.raises(TargetCLIPError, match=r"within \[0, 1\]"):
        paste_back(photo, aligned.image, aligned, mask=torch.full((64, 64), 2.0))
    with pytest.raises(TargetCLIPError, match="feather"):
        paste_back(photo, aligned.image, aligned, feather=3)


# --------------------------------------------------------------------------- bad images


def test_bad_images_are_refused_clearly(tmp_path):
    lm = CANONICAL
    cases = [
        (torch.zeros(1, 4, 400, 400), r"expected an image tensor \[1, 3, H, W\]"),
        (torch.zeros(2, 3, 400, 400), "got a batch of 2"),
        (torch.zeros(400, 400), r"expected an image tensor"),
        (torch.full((1, 3, 400, 400), float("nan")), "NaN"),
        (torch.full((1, 3, 400, 400), 255.0), r"engine images are in \[-1, 1\]"),
        (torch.zeros(1, 3, 400, 400, dtype=torch.uint8), "expected a float tensor"),
        (Image.new("F", (400, 400)), "image mode 'F' is not supported"),
        (Image.new("I;16", (400, 400)), "image mode 'I;16' is not supported"),
        (np.zeros((400, 400), dtype=np.uint8), r"uint8 \[H, W, 3\]"),
        (42, "expected a path, a PIL image"),
    ]
    for image, message in cases:
        with pytest.raises(TargetCLIPError, match=message):
            align_face(image, landmarks=lm, output_size=16)
    garbage = tmp_path / "photo.jpg"
    garbage.write_bytes(b"not a jpeg")
    with pytest.raises(TargetCLIPError, match="photo.jpg: not a readable image"):
        align_face(garbage, output_size=16)
    with pytest.raises(TargetCLIPError, match="missing.png: not a readable image"):
        detect_landmarks(tmp_path / "missing.png")
    # modes that convert cleanly are accepted
    grey = Image.new("L", (400, 400), 90)
    assert align_face(grey, landmarks=lm, output_size=16).image.shape == (1, 3, 16, 16)
