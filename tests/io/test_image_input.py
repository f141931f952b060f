"""The one image reader (io.images): EXIF orientation, every PIL mode at the right scale, bounded work, and
our error naming the file for every broken or hostile image.

Expected pixel values are computed by hand in each test (the scale factors 65535 -> 255 and 1 -> 255, alpha
over white, PIL's CMYK formula); orientations are built with numpy from the EXIF definitions; the bombs are
headers of a few bytes that declare huge sizes, refused by our check before anything is decoded.
"""

from __future__ import annotations

import re
import struct
import time
import tracemalloc
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from targetclip_core.errors import TargetCLIPError
from targetclip_core.faces.alignment import align_face, paste_back
from targetclip_core.faces.landmarks import rgb_array
from targetclip_core.io.images import DEFAULT_MAX_PIXELS, check_image, load_image, open_rgb, read_rgb
from targetclip_core.methods.targetclip.training_data import check_readable, read_training_image
from targetclip_core.metrics.evaluation import resolve_targets

ORIENTATION = 0x0112


def grey_values(image: torch.Tensor) -> np.ndarray:
    """The single grey row of a [1, 3, 1, W] tensor, after checking the three channels agree."""
    assert torch.equal(image[0, 0], image[0, 1]) and torch.equal(image[0, 0], image[0, 2])
    return image[0, 0, 0].numpy()


def engine_tensor(rgb: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] -> [1, 3, H, W] in [-1, 1], the engine's convention, by hand."""
    return torch.from_numpy(rgb.astype(np.float32)).permute(2, 0, 1)[None] / 127.5 - 1


def png_header_only(path, width: int, height: int):
    """A valid PNG signature + IHDR declaring width x height RGB, one tiny IDAT: a few dozen bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


# --------------------------------------------------------------------------- modes, by hand


SIXTEEN = [0, 257, 25828, 32768, 65535]  # 25828 / 257 = 100.498: between two 8-bit levels


def test_16_bit_grey_png_keeps_its_scale_and_precision(tmp_path):
    path = tmp_path / "grey16.png"
    Image.fromarray(np.array([SIXTEEN], dtype=np.uint16)).save(path)
    assert Image.open(path).mode == "I;16"
    expected = np.array(SIXTEEN, dtype=np.float64) * 2 / 65535 - 1  # v * 255/65535 / 127.5 - 1
    np.testing.assert_allclose(grey_values(load_image(path)), expected, atol=2e-6)
    # before the fix PIL's convert("RGB") clipped: 32768 -> 255 (white)
    assert abs(grey_values(load_image(path))[3]) < 1e-4
    np.testing.assert_array_equal(np.asarray(open_rgb(path))[0, :, 0], [0, 1, 100, 128, 255])  # round(v / 257)


def test_big_endian_16_bit_and_int_modes(tmp_path):
    big = tmp_path / "big.tif"
    Image.frombytes("I;16B", (5, 1), np.array(SIXTEEN, dtype=">u2").tobytes()).save(big)
    assert Image.open(big).mode == "I;16B"
    expected = np.array(SIXTEEN, dtype=np.float64) * 2 / 65535 - 1
    np.testing.assert_allclose(grey_values(load_image(big)), expected, atol=2e-6)

    as_int = tmp_path / "int.tif"  # mode "I": how older PIL opens 16-bit PNGs
    Image.fromarray(np.array([SIXTEEN], dtype=np.int32)).save(as_int)
    assert Image.open(as_int).mode == "I"
    np.testing.assert_allclose(grey_values(load_image(as_int)), expected, atol=2e-6)
    for bad, shown in ((70000, "70000"), (-1, "-1")):
        path = tmp_path / f"int_{bad}.tif"
        Image.fromarray(np.array([[0, bad]], dtype=np.int32)).save(path)
        with pytest.raises(TargetCLIPError, match=rf"int_{bad}\.tif: pixel values span .*{shown}.*\[0, 65535\]"):
            load_image(path)


def test_float_tiff_is_scaled_from_0_1_and_nan_or_range_refused(tmp_path):
    path = tmp_path / "float.tif"
    Image.fromarray(np.array([[0.0, 0.25, 0.5, 1.0]], dtype=np.float32)).save(path)
    assert Image.open(path).mode == "F"
    np.testing.assert_allclose(grey_values(load_image(path)), [-1.0, -0.5, 0.0, 1.0], atol=1e-6)
    np.testing.assert_array_equal(np.asarray(open_rgb(path))[0, :, 0], [0, 64, 128, 255])  # round(v * 255)
    for label, value, message in (("nan", np.nan, "NaN or infinite"), ("inf", np.inf, "NaN or infinite"),
                                  ("big", 1.5, r"span \[0, 1.5\].*\[0, 1\]"), ("neg", -0.1, r"\[0, 1\]")):
        bad = tmp_path / f"float_{label}.tif"
        Image.fromarray(np.array([[0.0, value]], dtype=np.float32)).save(bad)
        with pytest.raises(TargetCLIPError, match=rf"float_{label}\.tif: .*{message}"):
            load_image(bad)


def test_transparency_is_composited_over_white(tmp_path):
    rgba = tmp_path / "rgba.png"
    im = Image.new("RGBA", (3, 1))
    im.putdata([(100, 0, 200, 51), (100, 0, 200, 0), (100, 0, 200, 255)])
    im.save(rgba)
    # alpha 51 = 0.2: 0.2 * c + 0.8 * 255 = (224, 204, 244); alpha 0: white; alpha 255: the colour
    np.testing.assert_array_equal(np.asarray(open_rgb(rgba))[0], [[224, 204, 244], [255, 255, 255], [100, 0, 200]])
    np.testing.assert_allclose(load_image(rgba)[0, :, 0, 0].numpy(), np.array([224, 204, 244]) / 127.5 - 1, atol=1e-6)

    la = tmp_path / "la.png"
    Image.new("LA", (1, 1), (100, 51)).save(la)
    np.testing.assert_array_equal(np.asarray(open_rgb(la))[0, 0], [224, 224, 224])

    palette = tmp_path / "palette.png"
    p = Image.new("P", (2, 1))
    p.putpalette([255, 0, 0, 10, 20, 30])
    p.putpixel((1, 0), 1)
    p.save(palette, transparency=0)  # index 0 (red) is transparent
    np.testing.assert_array_equal(np.asarray(open_rgb(palette))[0], [[255, 255, 255], [10, 20, 30]])

    keyed = tmp_path / "keyed.png"
    Image.new("L", (1, 1), 100).save(keyed, transparency=100)  # tRNS: grey 100 is transparent
    np.testing.assert_array_equal(np.asarray(open_rgb(keyed))[0, 0], [255, 255, 255])


def test_cmyk_bilevel_and_8_bit_rgb(tmp_path):
    cmyk = tmp_path / "cmyk.tif"
    Image.new("CMYK", (1, 1), (50, 0, 255, 20)).save(cmyk)
    # no colour profile: channel = (255 - ink) * (255 - K) / 255 -> (205 * 235 / 255, 235, 0)
    np.testing.assert_array_equal(np.asarray(open_rgb(cmyk))[0, 0], [189, 235, 0])

    bilevel = tmp_path / "bilevel.png"
    b = Image.new("1", (2, 1))
    b.putpixel((1, 0), 1)
    b.save(bilevel)
    np.testing.assert_array_equal(grey_values(load_image(bilevel)), [-1.0, 1.0])

    rgb = tmp_path / "rgb.png"
    arr = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(arr).save(rgb)
    assert torch.equal(load_image(rgb), engine_tensor(arr))
    np.testing.assert_array_equal(read_rgb(rgb), arr.astype(np.float32))


def test_unsupported_mode_is_named(tmp_path):
    lab = tmp_path / "lab.tif"
    Image.new("LAB", (2, 2), (50, 0, 0)).save(lab)  # PIL would copy L, a, b into R, G, B
    with pytest.raises(TargetCLIPError, match=r"lab\.tif: image mode 'LAB' is not supported"):
        load_image(lab)
    with pytest.raises(TargetCLIPError, match=r"lab\.tif: image mode 'LAB'"):
        check_image(lab)


# --------------------------------------------------------------------------- orientation


# the stored pixels of an image displayed as `upright`, per EXIF orientation (TIFF 6.0 / EXIF 2.3 tag 274)
STORED_FROM_UPRIGHT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # mirrored left-right
    3: lambda a: a[::-1, ::-1],  # rotated 180
    4: lambda a: a[::-1],  # mirrored top-bottom
    5: lambda a: a.transpose(1, 0, 2),  # mirrored along the main diagonal
    6: lambda a: np.rot90(a, 1),  # displayed after a quarter turn clockwise: stored a quarter turn counter-clockwise
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # mirrored along the other diagonal
    8: lambda a: np.rot90(a, -1),  # displayed after a quarter turn counter-clockwise
}


def asymmetric(height: int, width: int) -> np.ndarray:
    """Every pixel different and linear in its position: R = step x row, G = step x column, B = a constant."""
    step = max(1, 255 // max(height, width))
    rows, cols = np.mgrid[0:height, 0:width]
    return np.stack([rows * step, cols * step, np.full_like(rows, 77)], axis=-1).astype(np.uint8)


def save_with_orientation(path, upright: np.ndarray, orientation: int, **kw):
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    Image.fromarray(np.ascontiguousarray(STORED_FROM_UPRIGHT[orientation](upright))).save(path, exif=exif, **kw)
    return path


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(tmp_path, orientation):
    upright = asymmetric(3, 5)
    path = save_with_orientation(tmp_path / f"o{orientation}.png", upright, orientation)
    assert Image.open(path).getexif()[ORIENTATION] == orientation
    np.testing.assert_array_equal(np.asarray(open_rgb(path)), upright)
    assert torch.equal(load_image(path), engine_tensor(upright))
    np.testing.assert_array_equal(rgb_array(path)[0], upright)  # the detectors' and align_face's input


def test_exif_rotated_jpeg_photo_is_upright(tmp_path):
    upright = np.zeros((32, 48, 3), dtype=np.uint8)  # landscape: red left half, blue right half
    upright[:, :24, 0] = 255
    upright[:, 24:, 2] = 255
    path = save_with_orientation(tmp_path / "phone.jpg", upright, 6, quality=95)
    assert Image.open(path).size == (32, 48)  # stored portrait
    got = np.asarray(open_rgb(path)).astype(int)
    assert got.shape == (32, 48, 3)
    assert np.abs(got[4:-4, 4:20] - [255, 0, 0]).max() < 40 and np.abs(got[4:-4, 28:-4] - [0, 0, 255]).max() < 40


def test_exif_rotated_photo_is_edited_and_pasted_upright(tmp_path):
    """The `targetclip edit` path: load_image -> align_face -> paste_back, with landmarks in upright pixels."""
    upright = asymmetric(200, 160)  # 160 wide, 200 tall
    path = save_with_orientation(tmp_path / "portrait.png", upright, 6)
    lm = np.array([[60, 80], [100, 80], [80, 100], [66, 120], [94, 120]], dtype=np.float64)
    original = load_image(path)
    assert original.shape == (1, 3, 200, 160)
    face = align_face(original, landmarks=lm, output_size=64)
    assert face.source_size == (160, 200)
    by_path = align_face(path, landmarks=lm, output_size=64)
    assert torch.equal(face.image, by_path.image)
    # the crop shows the upright photo: by the FFHQ formula its square is centred on (80, 84), side 160,
    # and in the upright pattern R = row, G = column
    x, y = face.to_source([32, 32], size=64)
    assert abs(x - 81.25) < 1e-6 and abs(y - 85.25) < 1e-6  # (0, 4) + 32.5 / 64 * 160
    np.testing.assert_allclose((face.image[0, :, 32, 32].numpy() + 1) * 127.5, [y, x, 77], atol=1.0)

    green = torch.tensor([-1.0, 1.0, -1.0]).view(1, 3, 1, 1).expand(1, 3, 64, 64)
    pasted = paste_back(original, green, face)
    assert pasted.image.shape == (1, 3, 200, 160)
    np.testing.assert_allclose(pasted.image[0, :, 95, 80].numpy(), [-1, 1, -1], atol=0.02)  # the face, upright
    assert torch.equal(pasted.image[0, :, 190:, :], original[0, :, 190:, :])  # below the square: untouched
    assert torch.equal(paste_back(path, green, face).image, pasted.image)


# --------------------------------------------------------------------------- bounded work


def test_decompression_bombs_are_refused_from_the_header(tmp_path, monkeypatch):
    over_pil = png_header_only(tmp_path / "bomb.png", 20000, 20000)  # beyond PIL's own hard limit
    between = png_header_only(tmp_path / "between.png", 12000, 12000)  # 144 Mpx: over ours, under PIL's error
    assert 12000 * 12000 > DEFAULT_MAX_PIXELS > 2 ** 26
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # PIL's warning must not reach the user
        for path, match in ((over_pil, r"bomb\.png: not read: .*more pixels"),
                            (between, r"between\.png: not read: 12000x12000 = 144,000,000 pixels")):
            for read in (load_image, open_rgb, check_image):
                start = time.perf_counter()
                with pytest.raises(TargetCLIPError, match=match):
                    read(path)
                assert time.perf_counter() - start < 0.5
    # our limit holds even where PIL's is switched off (ComfyUI and others set it to None)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with pytest.raises(TargetCLIPError, match=r"bomb\.png: not read: 20000x20000 = 400,000,000 pixels"):
        load_image(over_pil)
    with pytest.raises(TargetCLIPError, match=r"bomb\.png: not read"):
        check_readable([over_pil])


def test_a_caller_pixel_limit_is_checked_before_decoding(tmp_path):
    path = tmp_path / "small.png"
    Image.new("RGB", (20, 20)).save(path)
    with pytest.raises(TargetCLIPError, match=r"small\.png: not read: 20x20 = 400 pixels is more than the 100 pixel"):
        load_image(path, max_pixels=100)
    with pytest.raises(TargetCLIPError, match=r"small\.png: not read"):
        check_image(path, max_pixels=100)
    assert check_image(path) == (20, 20)
    for kwargs in ({"size": 0}, {"max_side": -1}, {"size": True}, {"max_pixels": 0}):
        with pytest.raises(TargetCLIPError, match="must be a positive integer"):
            load_image(path, **kwargs)


def test_bounded_reads_resize_before_the_pixels_become_floats(tmp_path):
    path = tmp_path / "large.png"
    Image.new("RGB", (3000, 2000), (10, 20, 30)).save(path, compress_level=1)
    full_float_bytes = 3000 * 2000 * 3 * 4  # 72 MB
    for kwargs, shape in (({"max_side": 300}, (1, 3, 200, 300)), ({"size": 64}, (1, 3, 64, 64))):
        tracemalloc.start()  # numpy's buffers are traced (PIL's 8-bit image is not, and is bounded by max_pixels)
        image = load_image(path, **kwargs)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert image.shape == shape and peak < full_float_bytes / 20
        np.testing.assert_allclose(image[0, :, 10, 10].numpy(), np.array([10, 20, 30]) / 127.5 - 1, atol=1e-5)
    assert load_image(path, max_side=5000).shape == (1, 3, 2000, 3000)  # never enlarged
    # the callers that only embed or score a target read it bounded (EMBEDDING_MAX_SIDE = 1024)
    (name, target), = resolve_targets([path])
    assert name == "large" and target.shape == (1, 3, 683, 1024)


# --------------------------------------------------------------------------- broken files


def test_broken_files_are_named(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(asymmetric(40, 40)).save(good)
    data = good.read_bytes()
    bad_crc = bytearray(data)
    bad_crc[data.index(b"IDAT") + 10] ^= 0xFF  # inside the compressed pixels: the chunk's CRC no longer matches
    files = {
        "empty.png": (b"", "the file is empty"),
        "text.png": (b"hello, I am not a picture\n", "not an image file"),
        "noise.jpg": (b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4, ""),
        "truncated.png": (data[: len(data) // 2], ""),
        "crc.png": (bytes(bad_crc), ""),
    }
    for name, (content, message) in files.items():
        path = tmp_path / name
        path.write_bytes(content)
        for read in (load_image, open_rgb, check_image, lambda p: read_training_image(p, 8)):
            with pytest.raises(TargetCLIPError, match=rf"{re.escape(name)}: not a readable image.*{message}") as err:
                read(path)
            assert str(path) in str(err.value)
    for path, message in ((tmp_path / "missing.png", "No such file"), (tmp_path, "not a regular file")):
        with pytest.raises(TargetCLIPError, match="not a readable image") as err:
            load_image(path)
        assert str(path) in str(err.value) and message in str(err.value)
    with pytest.raises(TargetCLIPError, match=r"crc\.png"):
        check_readable([good, tmp_path / "crc.png"])


def test_training_images_are_read_upright_and_over_white(tmp_path):
    upright = asymmetric(6, 4)
    path = save_with_orientation(tmp_path / "train.png", upright, 8)
    expected = np.asarray(Image.fromarray(upright).resize((4, 4), Image.BILINEAR), dtype=np.float32) / 127.5 - 1
    np.testing.assert_allclose(read_training_image(path, 4).permute(1, 2, 0).numpy(), expected, atol=1e-6)
    clear = tmp_path / "clear.png"
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(clear)
    assert torch.equal(read_training_image(clear, 4), torch.ones(3, 4, 4))
