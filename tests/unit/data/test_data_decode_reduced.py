"""data.decode_reduced: large JPEGs decoded at a DCT scale give the full decode's shapes and boxes and nearly its
pixels; everything else (and the default) is the full decode, bit for bit."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from PIL import Image

from pgi_detect.data import DetectionDataModule
from pgi_detect.data.images.decode import (decode_for_target, decode_image, reduction_factor, resize_from,
                                    resize_long_side)


def photo(height: int, width: int) -> np.ndarray:
    """Gradients, a disc and a wave texture: enough structure for a resize to show its differences (photo-like, no
    detail finer than a few pixels, which a downscale by 6 would alias either way)."""
    y, x = np.mgrid[0:height, 0:width]
    wave = 128 + 100 * np.sin(x / 23.0) * np.cos(y / 31.0)
    image = np.stack([x * 255 // width, y * 255 // height, wave], -1).astype(np.uint8)
    cv2.circle(image, (width // 3, height // 2), min(height, width) // 5, (250, 20, 20), -1)
    return image


def write_jpeg(path, image: np.ndarray, orientation: int | None = None):
    picture = Image.fromarray(image)
    exif = picture.getexif()
    if orientation is not None:
        exif[0x0112] = orientation
    picture.save(path, quality=92, exif=exif)
    return path


@pytest.mark.parametrize("orientation", [None, 6])
def test_a_large_jpeg_keeps_the_full_decodes_shape(tmp_path, orientation):
    path = write_jpeg(tmp_path / "big.jpg", photo(1500, 2000), orientation)
    full = decode_image(path)
    reduced, size = decode_for_target(path, None, None, 320)
    assert size == full.shape[:2] and reduction_factor(*size, 320) == 4
    assert max(reduced.shape[:2]) == 500  # 2000 / 4
    for augment in (False, True):
        expected, got = resize_long_side(full, 320, augment), resize_from(reduced, size, 320, augment)
        assert got.shape == expected.shape
        difference = np.abs(got.astype(int) - expected)
        assert difference.mean() < 2.0 and 0 < difference.max() < 64


def test_small_images_and_other_formats_are_the_full_decode(tmp_path):
    small = write_jpeg(tmp_path / "small.jpg", photo(300, 500))
    png = tmp_path / "big.png"
    Image.fromarray(photo(1500, 2000)).save(png)
    for path in (small, png):
        image, size = decode_for_target(path, None, None, 320)
        assert np.array_equal(image, decode_image(path)) and size == image.shape[:2]


def test_the_datamodule_option_keeps_boxes_and_defaults_to_the_full_decode(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "disc"}]}
    for index in range(2):
        write_jpeg(images / f"{index}.jpg", photo(1500, 2000))
        coco["images"].append({"id": index, "file_name": f"{index}.jpg", "height": 1500, "width": 2000})
        coco["annotations"].append({"id": index, "image_id": index, "category_id": 1, "iscrowd": 0, "area": 1.6e5,
                                    "bbox": [367.0, 450.0, 600.0, 600.0]})
    annotations = tmp_path / "instances.json"
    annotations.write_text(json.dumps(coco))

    def sample(**options):
        module = DetectionDataModule(val=str(annotations), val_images=str(images), img_size=320, batch_size=1,
                                     num_workers=0, **options)
        return module.dataset("val")[0]

    default, full, reduced = sample(), sample(decode_reduced=False), sample(decode_reduced=True)
    assert (default["image"] == full["image"]).all()
    assert (reduced["boxes"] == full["boxes"]).all() and reduced["image"].shape == full["image"].shape
    assert 0 < (reduced["image"].int() - full["image"].int()).abs().float().mean() < 2.0
