"""The official YOLOv9 training augmentation, as small pure functions on RGB uint8 arrays and xyxy pixel boxes.

All randomness comes from an explicit `np.random.Generator`, so a dataset can be made reproducible by seeding one
generator per worker. Order and numbers follow docs/yolov9-reference.md §5; docs/data.md lists our defaults.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import albumentations as A
import cv2
import numpy as np

from pgi_detect.geometry import PAD_VALUE
from pgi_detect.settings import NON_NEGATIVE, POSITIVE, PROBABILITY, Range, check_ranges

SEGMENT_RESAMPLE_POINTS = 1000  # segment-aware warping resamples each polygon to this many points
COPY_PASTE_MAX_IOA = 0.30  # a mirrored copy may cover less than this fraction of every existing box


@dataclass
class AugmentationConfig:
    """Probabilities and magnitudes of the training augmentation; the defaults are the official hyp.scratch-high.

    Set a probability to 0 to disable a step. `AugmentationConfig.disabled()` turns everything off (training then
    sees letterboxed images only).
    """

    mosaic: float = 1.0  # probability of the 4-image mosaic (close-mosaic turns it off regardless)
    copy_paste: float = 0.3  # fraction of a mosaic's objects tried for mirrored copy-paste (needs segment labels)
    mixup: float = 0.15  # probability of blending in a second mosaic (only when mosaic ran)
    mixup_beta: float = 32.0  # blend ratio r ~ Beta(mixup_beta, mixup_beta)
    degrees: float = 0.0  # rotation U(-degrees, degrees)
    translate: float = 0.1  # translation U(0.5 - t, 0.5 + t) of the output size
    scale: float = 0.9  # scale gain U(1 - scale, 1 + scale)
    shear: float = 0.0  # shear U(-shear, shear) degrees
    perspective: float = 0.0  # perspective U(-p, p)
    hsv_h: float = 0.015  # HSV gains: r = U(-1, 1) * gain + 1 per channel
    hsv_s: float = 0.7
    hsv_v: float = 0.4
    fliplr: float = 0.5
    flipud: float = 0.0
    blur: float = 0.01  # albumentations pixel transforms (official probabilities)
    median_blur: float = 0.01
    to_gray: float = 0.01
    clahe: float = 0.01
    brightness_contrast: float = 0.0
    gamma: float = 0.0
    jpeg: float = 0.0
    jpeg_quality: int = 75
    min_box_size: float = 2.0  # box_candidates: width and height must exceed this (pixels)
    max_aspect_ratio: float = 100.0  # box_candidates: max(w/h, h/w) below this
    min_area_ratio: float = 0.1  # box_candidates: area after / (area before * scale^2) above this
    min_area_ratio_segments: float = 0.01  # the same when boxes come from warped segments

    RANGES: ClassVar[dict[str, Range]] = {
        **{name: PROBABILITY for name in ("mosaic", "copy_paste", "mixup", "fliplr", "flipud", "blur", "median_blur",
                                          "to_gray", "clahe", "brightness_contrast", "gamma", "jpeg", "translate",
                                          "min_area_ratio", "min_area_ratio_segments")},
        **{name: NON_NEGATIVE for name in ("degrees", "shear", "perspective", "hsv_h", "hsv_s", "hsv_v",
                                           "min_box_size")},
        "scale": Range(0, 1, high_open=True), "mixup_beta": POSITIVE, "jpeg_quality": Range(1, 100),
        "max_aspect_ratio": POSITIVE}

    def __post_init__(self) -> None:
        check_ranges(self, self.RANGES)

    @classmethod
    def disabled(cls) -> "AugmentationConfig":
        off = {f.name: 0.0 for f in fields(cls) if f.name not in ("mixup_beta", "jpeg_quality", "min_box_size",
                                                                   "max_aspect_ratio", "min_area_ratio",
                                                                   "min_area_ratio_segments")}
        return cls(**off)

    @classmethod
    def from_any(cls, value: "AugmentationConfig | dict[str, Any] | None") -> "AugmentationConfig":
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            unknown = set(value) - {f.name for f in fields(cls)}
            if unknown:
                raise ValueError(f"unknown augmentation settings {sorted(unknown)}")
            return cls(**value)
        raise TypeError(f"augmentation must be an AugmentationConfig or a dict, got {type(value).__name__}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def box_ioa(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Intersection of one xyxy box with each of `boxes`, over the area of each of `boxes`."""
    iw = (np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0])).clip(0)
    ih = (np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1])).clip(0)
    return iw * ih / ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) + 1e-7)


def copy_paste(image: np.ndarray, boxes: np.ndarray, classes: np.ndarray, segments: list[np.ndarray],
               fraction: float, rng: np.random.Generator, max_ioa: float = COPY_PASTE_MAX_IOA
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
    """Mirrored copy-paste (segment labels only): `round(fraction · n)` of the n objects are drawn; each one whose
    horizontally mirrored box (across the image width) covers less than `max_ioa` of every box present so far
    (existing and already pasted) is pasted: the pixels inside its mirrored polygon are replaced by the horizontally
    flipped image, and the mirrored box, class and polygon are appended. `segments[i]` is object i's (k, 2) polygon
    in image pixels. Nothing is drawn from `rng` when fraction is 0 or there are no objects.
    """
    boxes, classes, segments, pasted = choose_copy_paste(boxes, classes, segments, image.shape[1], fraction, rng,
                                                         max_ioa)
    return paste_mirrored(image, pasted), boxes, classes, segments


def choose_copy_paste(boxes: np.ndarray, classes: np.ndarray, segments: list[np.ndarray], width: int,
                      fraction: float, rng: np.random.Generator, max_ioa: float = COPY_PASTE_MAX_IOA
                      ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """copy_paste's draws and labels, without pixels: (boxes, classes, segments with the pasted objects appended,
    the original polygons (rounded, int32) whose mirrored pixels are to be pasted by `paste_mirrored`)."""
    n = len(segments)
    if not fraction or not n:
        return boxes, classes, segments, []
    present = boxes.reshape(-1, 4)
    new_boxes, new_classes, new_segments, originals = [], [], [], []
    for j in rng.choice(n, size=min(n, round(fraction * n)), replace=False):
        box = boxes[j]
        mirrored = np.asarray([width - box[2], box[1], width - box[0], box[3]], np.float32)
        if len(present) and box_ioa(mirrored, present).max() >= max_ioa:
            continue
        present = np.concatenate([present, mirrored[None]])
        polygon = np.asarray(segments[j], np.float32)
        new_boxes.append(mirrored)
        new_classes.append(classes[j])
        new_segments.append(np.stack([width - polygon[:, 0], polygon[:, 1]], 1))
        originals.append(np.round(polygon).astype(np.int32))
    if not new_boxes:
        return boxes, classes, segments, []
    return (np.concatenate([boxes, np.stack(new_boxes)]).astype(np.float32),
            np.concatenate([classes, np.asarray(new_classes, classes.dtype)]), list(segments) + new_segments, originals)


def paste_mirrored(image: np.ndarray, originals: list[np.ndarray]) -> np.ndarray:
    """copy_paste's pixels: inside each polygon of `originals` mirrored across the image width, the horizontally
    flipped image (a copy; `image` itself when there is nothing to paste)."""
    if not originals:
        return image
    height, width = image.shape[:2]
    # The original polygons are rasterised and the mask flipped: a pixel-exact mirror of the objects' pixels.
    # Only the band of rows they span is touched (a full-width band is contiguous, so OpenCV writes into it).
    every = np.concatenate(originals)
    y1, y2 = int(every[:, 1].min().clip(0, height)), int(every[:, 1].max().clip(-1, height - 1)) + 1
    image = np.ascontiguousarray(image).copy()
    if y2 > y1:
        mask = np.zeros((y2 - y1, width), np.uint8)
        cv2.fillPoly(mask, originals, 1, offset=(0, -y1))
        band = image[y1:y2]
        band[:] = cv2.copyTo(cv2.flip(band, 1), cv2.flip(mask, 1), band)
    return image


def affine_matrix(rng: np.random.Generator, config: AugmentationConfig, in_size: tuple[int, int],
                  out_size: tuple[int, int]) -> tuple[np.ndarray, float]:
    """Random 3×3 transform T·S·R·P·C (centre, perspective, rotation+scale, shear, translation) and its scale.

    in_size/out_size are (width, height).
    """
    centre = np.eye(3)
    centre[0, 2], centre[1, 2] = -in_size[0] / 2, -in_size[1] / 2
    persp = np.eye(3)
    persp[2, 0], persp[2, 1] = rng.uniform(-config.perspective, config.perspective, 2)
    angle = math.radians(rng.uniform(-config.degrees, config.degrees))
    scale = rng.uniform(1 - config.scale, 1 + config.scale)
    rot = np.eye(3)
    rot[:2, :2] = [[scale * math.cos(angle), scale * math.sin(angle)],
                   [-scale * math.sin(angle), scale * math.cos(angle)]]
    shear = np.eye(3)
    shear[0, 1], shear[1, 0] = np.tan(np.radians(rng.uniform(-config.shear, config.shear, 2)))
    translate = np.eye(3)
    translate[0, 2] = rng.uniform(0.5 - config.translate, 0.5 + config.translate) * out_size[0]
    translate[1, 2] = rng.uniform(0.5 - config.translate, 0.5 + config.translate) * out_size[1]
    return translate @ shear @ rot @ persp @ centre, scale


def transform_boxes(boxes: np.ndarray, matrix: np.ndarray, out_size: tuple[int, int]) -> np.ndarray:
    """Warp the 4 corners of each box, take their min/max and clip to the output (width, height)."""
    if not len(boxes):
        return boxes.reshape(0, 4)
    corners = boxes[:, [0, 1, 2, 1, 2, 3, 0, 3]].reshape(-1, 2)  # (x1, y1), (x2, y1), (x2, y2), (x1, y2) per box
    homogeneous = np.concatenate([corners, np.ones((len(corners), 1))], 1) @ matrix.T
    xy = homogeneous[:, :2] / homogeneous[:, 2:3] if matrix[2, 0] or matrix[2, 1] else homogeneous[:, :2]
    xy = xy.reshape(-1, 4, 2)
    out = np.concatenate([xy.min(1), xy.max(1)], 1)
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, out_size[0])
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, out_size[1])
    return out.astype(np.float32)


def _resample_closed(segments: list[np.ndarray], n: int) -> np.ndarray:
    """(m, n, 2): `n` points evenly spaced by length along each closed polygon, starting at its first vertex.

    All polygons are interpolated in one np.interp call: their closed outlines are chained into one path whose
    arc length jumps by 1 between polygons, so every polygon owns a disjoint, increasing stretch of it."""
    closed = [np.concatenate([np.asarray(s, np.float64).reshape(-1, 2), np.asarray(s, np.float64).reshape(-1, 2)[:1]])
              for s in segments]
    sizes = np.asarray([len(c) for c in closed])
    first = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    last = first + sizes - 1
    path = np.concatenate(closed)
    steps = np.hypot(*np.diff(path, axis=0).T)
    steps[first[1:] - 1] = 1.0  # from one polygon's closing point to the next polygon: a gap, never sampled
    cumulative = np.concatenate([[0.0], np.cumsum(steps)])
    start, length = cumulative[first], cumulative[last] - cumulative[first]
    t = (start[:, None] + length[:, None] * (np.arange(n) / n)[None]).ravel()
    return np.stack([np.interp(t, cumulative, path[:, 0]), np.interp(t, cumulative, path[:, 1])], 1).reshape(-1, n, 2)


def resample_segment(polygon: np.ndarray, n: int = SEGMENT_RESAMPLE_POINTS) -> np.ndarray:
    """`n` points evenly spaced (by length) along the closed polygon, plus its vertices (so the extremes of a warped
    polygon are exact); (n + k, 2)."""
    polygon = np.asarray(polygon, np.float64).reshape(-1, 2)
    return np.concatenate([_resample_closed([polygon], n)[0], polygon])


def _warp_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    homogeneous = np.concatenate([points, np.ones((len(points), 1))], 1) @ matrix.T
    return homogeneous[:, :2] / homogeneous[:, 2:3] if matrix[2, 0] or matrix[2, 1] else homogeneous[:, :2]


def _inside(xy: np.ndarray, out_size: tuple[int, int]) -> np.ndarray:
    return (xy[:, 0] >= 0) & (xy[:, 0] <= out_size[0]) & (xy[:, 1] >= 0) & (xy[:, 1] <= out_size[1])


def _resampled_boxes(vertices: list[np.ndarray], matrix: np.ndarray, out_size: tuple[int, int], n: int) -> np.ndarray:
    """Boxes of the warped points (n resampled + the vertices) of each polygon that lie inside; inf where none."""
    m = len(vertices)
    starts = np.concatenate([[0], np.cumsum([len(v) for v in vertices])[:-1]])
    xy = _warp_points(np.concatenate([_resample_closed(vertices, n).reshape(-1, 2)] + vertices), matrix)
    inside = _inside(xy, out_size)[:, None]
    lows, highs = np.where(inside, xy, np.inf), np.where(inside, xy, -np.inf)  # outside points are ignored
    k = m * n
    low = np.minimum(lows[:k].reshape(m, n, 2).min(1), np.minimum.reduceat(lows[k:], starts, axis=0))
    high = np.maximum(highs[:k].reshape(m, n, 2).max(1), np.maximum.reduceat(highs[k:], starts, axis=0))
    return np.concatenate([low, high], 1)


def transform_segments(segments: list[np.ndarray], matrix: np.ndarray, out_size: tuple[int, int],
                       n: int = SEGMENT_RESAMPLE_POINTS) -> np.ndarray:
    """Segment-aware boxes: each polygon resampled (resample_segment: n points + its vertices), warped, and its box
    = min/max of the warped points inside the output (width, height); a zero box when none is inside (dropped by
    box_candidates).

    Shortcut with the same result: a polygon whose warped vertices are all inside has its box from the vertices
    (every edge point then lies inside and between them), and one whose warped vertices' bounds miss the output
    entirely has no point inside; only polygons crossing the border are resampled."""
    if not segments:
        return np.zeros((0, 4), np.float32)
    vertices = [np.asarray(s, np.float64).reshape(-1, 2) for s in segments]
    starts = np.concatenate([[0], np.cumsum([len(v) for v in vertices])[:-1]])
    xy = _warp_points(np.concatenate(vertices), matrix)
    out = np.concatenate([np.minimum.reduceat(xy, starts, axis=0), np.maximum.reduceat(xy, starts, axis=0)], 1)
    all_inside = np.logical_and.reduceat(_inside(xy, out_size), starts)
    missing = (out[:, 2] < 0) | (out[:, 0] > out_size[0]) | (out[:, 3] < 0) | (out[:, 1] > out_size[1])
    out[missing] = 0.0
    crossing = np.flatnonzero(~all_inside & ~missing)
    if len(crossing):
        out[crossing] = _resampled_boxes([vertices[i] for i in crossing], matrix, out_size, n)
    out[~np.isfinite(out).all(1)] = 0.0  # crossing polygons with no sampled point inside
    return out.astype(np.float32)


# Bilinear sampling reads the pixel after the sampled point, and OpenCV rounds the sampled point to 1/32 px: a region
# grown by this many pixels holds every pixel a warp reads (source_region) or can write content into (content_rows).
WARP_MARGIN = 2


def _warped_bounds(box: tuple[float, float, float, float], matrix: np.ndarray) -> np.ndarray:
    """(x1, y1, x2, y2) bounds of the 4 corners of `box` warped by an affine `matrix` (3×3)."""
    x1, y1, x2, y2 = box
    xy = _warp_points(np.asarray([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], np.float64), matrix)
    return np.concatenate([xy.min(0), xy.max(0)])


def source_region(matrix: np.ndarray, out_size: tuple[int, int]) -> tuple[float, float, float, float] | None:
    """(x1, y1, x2, y2) of the input an affine warp (`matrix`, 3×3) to `out_size` (width, height) reads: the
    output corners mapped back, grown by WARP_MARGIN. Input pixels outside it do not change the output. None for a
    projective matrix."""
    if matrix[2, 0] or matrix[2, 1]:
        return None
    inverse = np.linalg.inv(matrix)
    inverse[2] = (0.0, 0.0, 1.0)  # affine: only the top two rows matter
    x1, y1, x2, y2 = _warped_bounds((0, 0, *out_size), inverse)
    return x1 - WARP_MARGIN, y1 - WARP_MARGIN, x2 + WARP_MARGIN, y2 + WARP_MARGIN


def content_rows(box: tuple[float, float, float, float], matrix: np.ndarray, height: int) -> tuple[int, int] | None:
    """Output rows [top, bottom) that an affine warp (`matrix`, 3×3) can bring image content into, when every input
    pixel outside `box` (x1, y1, x2, y2) is PAD_VALUE grey: outside them the warped image is PAD_VALUE exactly (the
    warp's border is that grey too). The box is grown by WARP_MARGIN before its corners are warped. None for a
    projective matrix (not needed by the recipe)."""
    if matrix[2, 0] or matrix[2, 1]:
        return None
    x1, y1, x2, y2 = box
    _, low, _, high = _warped_bounds((x1 - WARP_MARGIN, y1 - WARP_MARGIN, x2 + WARP_MARGIN, y2 + WARP_MARGIN), matrix)
    top, bottom = max(0, math.floor(low)), min(height, math.ceil(high) + 1)
    return (top, bottom) if bottom > top else (0, 0)


def box_candidates(before: np.ndarray, after: np.ndarray, config: AugmentationConfig,
                   min_area_ratio: float | None = None) -> np.ndarray:
    """Keep boxes that survive a warp: w and h > min_box_size px, aspect < max_aspect_ratio, and
    area after / area before (both already in output scale) > min_area_ratio (config.min_area_ratio unless given)."""
    w1, h1 = before[:, 2] - before[:, 0], before[:, 3] - before[:, 1]
    w2, h2 = after[:, 2] - after[:, 0], after[:, 3] - after[:, 1]
    eps = 1e-16
    aspect = np.maximum(w2 / (h2 + eps), h2 / (w2 + eps))
    return ((w2 > config.min_box_size) & (h2 > config.min_box_size)
            & (w2 * h2 / (w1 * h1 + eps) > (config.min_area_ratio if min_area_ratio is None else min_area_ratio))
            & (aspect < config.max_aspect_ratio))


def random_perspective(image: np.ndarray, boxes: np.ndarray, classes: np.ndarray, config: AugmentationConfig,
                       rng: np.random.Generator, border: int = 0, segments: list[np.ndarray] | None = None,
                       transform: tuple[np.ndarray, float] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random affine/perspective warp; the output is the input size + 2·border (border −size/2 crops a mosaic
    canvas back to size). Boxes are warped and filtered with `box_candidates`.

    With `segments` (one polygon per box, input pixels) the boxes come from the warped polygons
    (transform_segments) and the area-ratio threshold is `min_area_ratio_segments`; otherwise the 4 box corners are
    warped (transform_boxes) with `min_area_ratio`. `transform` is a (matrix, scale) the caller drew with
    `affine_matrix` at this point of the generator's sequence (to know the warp, e.g. for `content_rows`); by
    default it is drawn here."""
    out_w, out_h = image.shape[1] + 2 * border, image.shape[0] + 2 * border
    matrix, scale = transform or affine_matrix(rng, config, (image.shape[1], image.shape[0]), (out_w, out_h))
    if border != 0 or not np.array_equal(matrix, np.eye(3)):
        if config.perspective:
            image = cv2.warpPerspective(image, matrix, (out_w, out_h), borderValue=(PAD_VALUE,) * 3)
        else:
            image = cv2.warpAffine(image, matrix[:2], (out_w, out_h), borderValue=(PAD_VALUE,) * 3)
    if len(boxes) and segments is not None and len(segments) == len(boxes):
        warped = transform_segments(segments, matrix, (out_w, out_h))
        keep = box_candidates(boxes * scale, warped, config, config.min_area_ratio_segments)
        boxes, classes = warped[keep], classes[keep]
    elif len(boxes):
        warped = transform_boxes(boxes, matrix, (out_w, out_h))
        keep = box_candidates(boxes * scale, warped, config)
        boxes, classes = warped[keep], classes[keep]
    return image, boxes, classes


# ---------------------------------------------------------------------------------------------------- photometric


_GREY_PIXEL = np.full((1, 1, 3), PAD_VALUE, np.uint8)


def mixup(image: np.ndarray, other: np.ndarray, rng: np.random.Generator, beta: float) -> np.ndarray:
    """Blend two same-size images with r ~ Beta(beta, beta); the caller concatenates the labels."""
    ratio = float(rng.beta(beta, beta))
    return cv2.addWeighted(image, ratio, other, 1.0 - ratio, 0.0)


def augment_hsv(image: np.ndarray, rng: np.random.Generator, gains: tuple[float, float, float],
                rows: tuple[int, int] | None = None) -> np.ndarray:
    """Random hue/saturation/value gains applied through lookup tables on OpenCV HSV (H mod 180), one table per
    channel (split, three single-channel cv2.LUT calls, merge: ~8 % faster than one 3-channel LUT, same pixels).

    `rows` (top, bottom): every pixel outside that band is PAD_VALUE grey (see `content_rows`). Only the band is
    converted and the other rows are filled with the converted grey: the same pixels as converting the whole image
    (the conversion is per pixel and OpenCV converts row by row; tests/unit/data/test_data_augment.py checks it), for less
    work when a warp left whole rows of padding."""
    if not any(gains):
        return image
    r = rng.uniform(-1, 1, 3) * np.asarray(gains) + 1
    x = np.arange(0, 256, dtype=np.float64)
    tables = (((x * r[0]) % 180).astype(np.uint8), np.clip(x * r[1], 0, 255).astype(np.uint8),
              np.clip(x * r[2], 0, 255).astype(np.uint8))
    top, bottom = rows if rows is not None else (0, image.shape[0])
    out = np.empty_like(image)
    if top > 0 or bottom < image.shape[0]:
        grey = _hsv_with_tables(_GREY_PIXEL, tables)[0]
        out[:top] = out[bottom:] = np.tile(grey, (image.shape[1], 1))  # whole rows: numpy copies them row by row
    if bottom > top:  # a full-width band of a contiguous array is contiguous: OpenCV writes into it
        _hsv_with_tables(np.ascontiguousarray(image[top:bottom]), tables, out=out[top:bottom])
    return out


def _hsv_with_tables(image: np.ndarray, tables: tuple[np.ndarray, np.ndarray, np.ndarray],
                     out: np.ndarray | None = None) -> np.ndarray:
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    channels = cv2.split(hsv)
    for channel, table in zip(channels, tables):
        cv2.LUT(channel, table, dst=channel)
    cv2.merge(channels, dst=hsv)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB, dst=out)


def flip_left_right(image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror horizontally. The image comes back as a view (no copy: the flips are the pipeline's last pixel step and
    the dataset's final HWC -> CHW copy takes care of the strides)."""
    width = image.shape[1]
    flipped = boxes.copy()
    flipped[:, 0], flipped[:, 2] = width - boxes[:, 2], width - boxes[:, 0]
    return image[:, ::-1], flipped


def flip_up_down(image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror vertically (the image as a view, like flip_left_right)."""
    height = image.shape[0]
    flipped = boxes.copy()
    flipped[:, 1], flipped[:, 3] = height - boxes[:, 3], height - boxes[:, 1]
    return image[::-1], flipped


class PixelAugmenter:
    """The official albumentations pixel transforms, really applied (upstream they silently vanish with
    albumentations >= 2 because the old keyword arguments raise and the exception is swallowed).

    Whether a transform runs is drawn from our generator; the transforms are built with p=1, and a transform that
    runs is first reseeded from our generator, so its own parameters (blur size, CLAHE clip...) follow the sample's
    randomness too.
    """

    def __init__(self, config: AugmentationConfig) -> None:
        candidates = [
            (config.blur, A.Blur(p=1.0)),
            (config.median_blur, A.MedianBlur(p=1.0)),
            (config.to_gray, A.ToGray(num_output_channels=3, p=1.0)),
            (config.clahe, A.CLAHE(p=1.0)),
            (config.brightness_contrast, A.RandomBrightnessContrast(p=1.0)),
            (config.gamma, A.RandomGamma(p=1.0)),
            (config.jpeg, A.ImageCompression(quality_range=(config.jpeg_quality, config.jpeg_quality), p=1.0)),
        ]
        self.transforms = [(p, t) for p, t in candidates if p > 0]

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
        applied = []
        for probability, transform in self.transforms:
            if rng.random() < probability:
                transform.set_random_seed(int(rng.integers(2**32)))
                image = transform(image=image)["image"]
                applied.append(type(transform).__name__)
        return image, applied
