"""Augmentation primitives: boxes must follow the pixels, filters must keep only valid boxes."""
from __future__ import annotations

import numpy as np
import pytest

from pgi_detect.data.augment import transforms as aug
from pgi_detect.data.augment.mosaic import mosaic4
from pgi_detect.data.augment.transforms import AugmentationConfig


def colour_bbox(image: np.ndarray, colour) -> np.ndarray:
    """xyxy (pixel edges) of the pixels close to `colour`."""
    mask = np.abs(image.astype(int) - np.asarray(colour)).sum(-1) < 30
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def test_mosaic_places_quadrants_and_boxes_follow():
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    images = [np.full((40, 60, 3), c, np.uint8) for c in colours]
    boxes = [np.array([[10, 10, 30, 20]], np.float32) for _ in colours]
    canvas, out, owners = mosaic4(images, boxes, size=64, center=(70, 50))
    assert canvas.shape == (128, 128, 3) and canvas[0, 0].tolist() == [114] * 3
    assert owners.tolist() == [0, 1, 2, 3]
    for box, colour in zip(out, colours):
        cx, cy = int((box[0] + box[2]) / 2), int((box[1] + box[3]) / 2)
        assert canvas[cy, cx].tolist() == list(colour)
    np.testing.assert_allclose(out[0], [20, 20, 40, 30])  # top-left image ends at the centre: origin (10, 10)
    np.testing.assert_allclose(out[3], [80, 60, 100, 70])  # bottom-right image starts at the centre


def test_mosaic_clips_boxes_to_canvas():
    images = [np.zeros((64, 64, 3), np.uint8)] * 4
    boxes = [np.array([[0, 0, 64, 64]], np.float32)] * 4
    _, out, _ = mosaic4(images, boxes, size=64, center=(32, 32))
    assert out.min() >= 0 and out.max() <= 128
    np.testing.assert_allclose(out[0], [0, 0, 32, 32])


@pytest.mark.parametrize("degrees,shear", [(0.0, 0.0), (30.0, 0.0), (10.0, 8.0)])
def test_random_perspective_boxes_follow_pixels(degrees, shear):
    image = np.full((128, 128, 3), 114, np.uint8)
    image[40:80, 30:90] = (250, 20, 20)
    boxes = np.array([[30, 40, 90, 80]], np.float32)
    config = AugmentationConfig(degrees=degrees, shear=shear, scale=0.3, translate=0.1)
    rng = np.random.default_rng(3)
    out, out_boxes, classes = aug.random_perspective(image, boxes, np.array([0]), config, rng, border=0)
    assert out.shape == image.shape and classes.tolist() == [0]
    np.testing.assert_allclose(out_boxes[0], colour_bbox(out, (250, 20, 20)), atol=2.5)


def test_random_perspective_border_crops_mosaic_canvas_to_size():
    canvas = np.zeros((256, 256, 3), np.uint8)
    config = AugmentationConfig(scale=0.0, translate=0.0)
    out, _, _ = aug.random_perspective(canvas, np.zeros((0, 4), np.float32), np.zeros(0, np.int64), config,
                                       np.random.default_rng(0), border=-64)
    assert out.shape == (128, 128, 3) and out.max() == 0  # identity scale: the centre of the canvas


def test_box_candidates_rule():
    config = AugmentationConfig()
    before = np.array([[0, 0, 10, 10]] * 4, np.float32)
    after = np.array([[0, 0, 10, 10], [0, 0, 2, 10], [0, 0, 4, 4], [0, 0, 10, 10]], np.float32)
    before[3] = [0, 0, 40, 40]  # shrank to 6 % of its area
    assert aug.box_candidates(before, after, config).tolist() == [True, False, True, False]
    thin = aug.box_candidates(np.array([[0, 0, 500, 4]], np.float32), np.array([[0, 0, 500, 4]], np.float32), config)
    assert thin.tolist() == [False]  # aspect ratio 125


def test_hsv_identity_and_value_gain():
    image = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    assert aug.augment_hsv(image, np.random.default_rng(0), (0, 0, 0)) is image
    out = aug.augment_hsv(image, np.random.default_rng(1), (0.0, 0.0, 0.4))
    gain = np.random.default_rng(1).uniform(-1, 1, 3)[2] * 0.4 + 1
    assert abs(out.max(-1).astype(float).mean() / image.max(-1).mean() - gain) < 0.05


def test_flips_move_boxes_with_pixels():
    image = np.zeros((20, 40, 3), np.uint8)
    image[2:6, 1:9] = 255
    boxes = np.array([[1, 2, 9, 6]], np.float32)
    flipped, fboxes = aug.flip_left_right(image, boxes)
    np.testing.assert_allclose(fboxes[0], colour_bbox(flipped, (255, 255, 255)))
    flipped, fboxes = aug.flip_up_down(image, boxes)
    np.testing.assert_allclose(fboxes[0], colour_bbox(flipped, (255, 255, 255)))


@pytest.mark.parametrize("name", ["blur", "median_blur", "to_gray", "clahe", "brightness_contrast", "gamma", "jpeg"])
def test_albumentations_transforms_really_apply(name):
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    off = AugmentationConfig.disabled()
    augmenter = aug.PixelAugmenter(AugmentationConfig(**{**off.to_dict(), name: 1.0}))
    out, applied = augmenter(image.copy(), np.random.default_rng(0))
    assert len(applied) == 1 and out.shape == image.shape and out.dtype == np.uint8
    assert not np.array_equal(out, image)
    if name == "to_gray":
        assert np.array_equal(out[..., 0], out[..., 1])


def test_albumentations_default_probabilities():
    augmenter = aug.PixelAugmenter(AugmentationConfig())
    assert sorted(type(t).__name__ for _, t in augmenter.transforms) == ["Blur", "CLAHE", "MedianBlur", "ToGray"]
    rng = np.random.default_rng(0)
    image = np.zeros((8, 8, 3), np.uint8)
    applied = sum(len(augmenter(image, rng)[1]) for _ in range(3000))
    assert 70 < applied < 170  # 4 transforms x p 0.01 x 3000 = 120 expected
    assert aug.PixelAugmenter(AugmentationConfig.disabled()).transforms == []


def test_config_from_dict_and_unknown_key():
    assert AugmentationConfig.from_any({"mixup": 0.0}).mixup == 0.0
    assert AugmentationConfig.from_any(None) == AugmentationConfig()
    with pytest.raises(ValueError, match="mixpu"):
        AugmentationConfig.from_any({"mixpu": 0.0})


def grey_with_band(height: int, width: int, top: int, bottom: int, seed: int) -> np.ndarray:
    image = np.full((height, width, 3), aug.PAD_VALUE, np.uint8)
    image[top:bottom] = np.random.default_rng(seed).integers(0, 256, (bottom - top, width, 3), dtype=np.uint8)
    return image


@pytest.mark.parametrize("width", [640, 416, 97])
def test_hsv_on_a_band_of_rows_equals_the_whole_image(width):
    rng = np.random.default_rng(width)
    for case in range(20):
        top, bottom = sorted(int(v) for v in rng.integers(0, 161, 2))
        image = grey_with_band(160, width, top, bottom, case)
        gains = (0.015, 0.7, 0.4)
        whole = aug.augment_hsv(image, np.random.default_rng(case), gains)
        band = aug.augment_hsv(image, np.random.default_rng(case), gains, rows=(top, bottom))
        assert np.array_equal(whole, band), (width, top, bottom)


@pytest.mark.parametrize("degrees,shear", [(0.0, 0.0), (30.0, 0.0), (10.0, 8.0)])
def test_content_rows_hold_every_warped_content_pixel(degrees, shear):
    """Outside content_rows a warped letterboxed image is padding grey exactly, and the band is not the whole image
    when the warp shrinks the content."""
    config = AugmentationConfig(degrees=degrees, shear=shear)
    rng = np.random.default_rng(int(degrees + shear))
    narrower = 0
    for case in range(40):
        top = int(rng.integers(0, 60))
        bottom = top + int(rng.integers(1, 128 - top))
        image = grey_with_band(128, 128, top, bottom, case)
        band = image[top:bottom]
        band[band == aug.PAD_VALUE] = 113  # content pixels are never the padding grey
        content_box = (0, top, 128, bottom)
        transform = aug.affine_matrix(rng, config, (128, 128), (128, 128))
        warped, _, _ = aug.random_perspective(image, np.zeros((0, 4), np.float32), np.zeros(0, np.int64), config,
                                              rng, transform=transform)
        start, stop = aug.content_rows(content_box, transform[0], 128)
        assert (warped[:start] == aug.PAD_VALUE).all() and (warped[stop:] == aug.PAD_VALUE).all(), case
        narrower += stop - start < 128
    assert narrower > 5
    projective = np.eye(3)
    projective[2, 0] = 1e-4
    assert aug.content_rows((0, 0, 10, 10), projective, 128) is None
