"""Robust decoding: every odd input becomes 8-bit RGB in displayed orientation, or fails naming the file."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pgi_detect.data.images.decode import (ImageDecodeError, channels_first, decode_image, long_side_shape, read_image_size,
                                    resize_long_side)


def test_grayscale_png_becomes_rgb(tmp_path):
    gray = np.tile(np.arange(0, 200, 2, dtype=np.uint8), (30, 1))
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    out = decode_image(tmp_path / "g.png")
    assert out.shape == (30, 100, 3) and out.dtype == np.uint8
    assert np.array_equal(out[..., 0], gray) and np.array_equal(out[..., 1], gray)


def test_rgba_is_composited_over_grey(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255  # red
    rgba[:2, :, 3] = 255  # top opaque, bottom fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = decode_image(tmp_path / "a.png")
    assert out.shape == (4, 4, 3)
    assert out[0, 0].tolist() == [255, 0, 0]
    assert out[3, 3].tolist() == [114, 114, 114]


def test_16bit_png_is_scaled_to_8bit(tmp_path):
    values = np.array([[0, 257 * 100, 65535]], np.uint16)
    Image.fromarray(values).save(tmp_path / "d.png")  # mode I;16
    out = decode_image(tmp_path / "d.png")
    assert out.dtype == np.uint8 and out[0, :, 0].tolist() == [0, 100, 255]


def test_palette_png_becomes_rgb(tmp_path):
    image = Image.fromarray(np.full((5, 6, 3), (10, 200, 30), np.uint8)).convert("P")
    image.save(tmp_path / "p.png")
    out = decode_image(tmp_path / "p.png")
    assert out.shape == (5, 6, 3) and abs(int(out[0, 0, 1]) - 200) < 10


def _exif_rotated_jpeg(path, orientation: int) -> np.ndarray:
    raw = np.zeros((20, 40, 3), np.uint8)
    raw[:, :20] = (255, 0, 0)  # left half red (raw pixels), right half black
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(raw).save(path, quality=95, exif=exif.tobytes())
    return raw


def test_exif_orientation_applied_to_jpeg_and_header_size(tmp_path):
    _exif_rotated_jpeg(tmp_path / "r.jpg", 6)  # 6 = display rotated 90° clockwise
    out = decode_image(tmp_path / "r.jpg")
    assert out.shape == (40, 20, 3)  # width/height swapped
    assert out[5, 10, 0] > 200 and out[35, 10, 0] < 50  # raw left half is now on top
    assert read_image_size(tmp_path / "r.jpg") == (40, 20)


def test_exif_orientation_applied_to_png(tmp_path):
    raw = np.zeros((20, 40, 3), np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 8
    Image.fromarray(raw).save(tmp_path / "r.png", exif=exif.tobytes())
    assert decode_image(tmp_path / "r.png").shape == (40, 20, 3)


def test_truncated_jpeg_fails_naming_file(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "t.jpg")
    data = (tmp_path / "t.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError, match=r"t\.jpg: truncated JPEG"):
        decode_image(tmp_path / "t.jpg")


def test_truncated_png_and_garbage_fail(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "t.png")
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError, match=r"t\.png"):
        decode_image(tmp_path / "t.png")
    (tmp_path / "junk.jpg").write_bytes(b"\xff\xd8 this is not a jpeg \xff\xd9")
    with pytest.raises(ImageDecodeError, match=r"junk\.jpg: corrupt"):
        decode_image(tmp_path / "junk.jpg")


def test_missing_file_fails_naming_file(tmp_path):
    with pytest.raises(ImageDecodeError, match=r"nope\.jpg: image file not found"):
        decode_image(tmp_path / "nope.jpg")


def test_resize_long_side_keeps_aspect():
    image = np.zeros((100, 50, 3), np.uint8)
    assert resize_long_side(image, 64, augment=False).shape == (64, 32, 3)
    assert resize_long_side(image, 200, augment=True).shape == (200, 100, 3)
    assert resize_long_side(image, 100, augment=False) is image


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.uint16])
def test_channels_first_copies_every_layout_the_pipeline_makes(dtype):
    """Contiguous images, the mirrored views the flips return, and other strided views all come out as the
    contiguous (3, H, W) transpose."""
    image = (np.random.default_rng(0).random((37, 53, 3)) * 200).astype(dtype)
    for view in (image, image[:, ::-1], image[::-1], image[::-1, ::-1], image[:, ::2], image[1:, 2:]):
        out = channels_first(view)
        assert out.flags.c_contiguous and out.dtype == dtype
        assert np.array_equal(out, view.transpose(2, 0, 1)), view.strides


def test_long_side_shape_is_the_shape_resize_long_side_gives():
    """Mosaic tiles nobody sees are placed by long_side_shape without being decoded and resized."""
    rng = np.random.default_rng(0)
    for height, width in [(480, 640), (640, 480), (1, 900), (333, 1), (640, 640), (2000, 1999)] + [
            tuple(int(v) for v in rng.integers(1, 1500, 2)) for _ in range(40)]:
        for size in (64, 320, 640, 641):
            image = np.zeros((height, width, 3), np.uint8)
            assert long_side_shape(height, width, size) == resize_long_side(image, size, augment=True).shape[:2]
