"""Mosaic-4 (with copy-paste) and its random_perspective back to img_size, as a transform over an image source that
takes its random generator explicitly."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from pgi_detect.geometry import PAD_VALUE
from pgi_detect.data.augment import transforms as aug
from pgi_detect.data.augment.transforms import AugmentationConfig
from pgi_detect.data.bad_samples import BadSamples
from pgi_detect.data.images.source import ImageSource
from pgi_detect.data.problems import DataError
from pgi_detect.data.records import box_polygon

MosaicResult = tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int], "tuple[int, int] | None"]


# ---------------------------------------------------------------------------------- tiles on the canvas


def tile_origin(tile: int, height: int, width: int, center: tuple[int, int]) -> tuple[int, int]:
    """Canvas (left, top) of mosaic tile 0-3 (top-left, top-right, bottom-left, bottom-right) of size h x w: its
    inner corner touches `center`."""
    xc, yc = center
    return (xc - width if tile in (0, 2) else xc), (yc - height if tile in (0, 1) else yc)


def mosaic4(images: list[np.ndarray], boxes: list[np.ndarray], size: int,
            center: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paste four images around `center` on a (2·size)² canvas filled with 114: top-left, top-right, bottom-left,
    bottom-right, each touching the centre with its inner corner and cropped at the canvas border.

    `boxes` are xyxy pixels of each (already resized) image. Returns (canvas, boxes on canvas clipped to it,
    index of the source image per box).
    """
    shapes = [image.shape[:2] for image in images]
    return (paint_mosaic4(images, shapes, size, center), *mosaic4_boxes(shapes, boxes, size, center))


def mosaic4_tile_rects(shapes: list[tuple[int, int]], size: int,
                       center: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """Canvas (x1, y1, x2, y2) each tile of (h, w) `shapes` covers, cropped to the canvas (empty when outside)."""
    canvas_size = 2 * size
    rects = []
    for i, (h, w) in enumerate(shapes):
        left, top = tile_origin(i, h, w, center)
        rects.append((max(left, 0), max(top, 0), min(left + w, canvas_size), min(top + h, canvas_size)))
    return rects


def mosaic4_content_box(rects: list[tuple[int, int, int, int]], pasted: list[np.ndarray],
                        canvas_size: int) -> tuple[int, int, int, int]:
    """(x1, y1, x2, y2) of a mosaic canvas outside which every pixel is PAD_VALUE grey: the tiles' `rects`
    (mosaic4_tile_rects) and, after paste_mirrored of `pasted` polygons, the full width of the rows they span."""
    shown = [r for r in rects if r[2] > r[0] and r[3] > r[1]]
    if not shown:
        return 0, 0, 0, 0
    x1, y1 = min(r[0] for r in shown), min(r[1] for r in shown)
    x2, y2 = max(r[2] for r in shown), max(r[3] for r in shown)
    if pasted:
        every = np.concatenate(pasted)
        x1, x2 = 0, canvas_size
        y1, y2 = min(y1, max(0, int(every[:, 1].min()))), max(y2, min(canvas_size, int(every[:, 1].max()) + 1))
    return x1, y1, x2, y2


def paint_mosaic4(images: list[np.ndarray | None], shapes: list[tuple[int, int]], size: int,
                  center: tuple[int, int]) -> np.ndarray:
    """mosaic4's canvas; a tile given as None (one no output pixel shows) is left grey."""
    canvas = np.full((2 * size, 2 * size, 3), PAD_VALUE, np.uint8)
    for i, (image, (h, w), (x1, y1, x2, y2)) in enumerate(zip(images, shapes, mosaic4_tile_rects(shapes, size,
                                                                                                   center))):
        if image is not None and x2 > x1 and y2 > y1:
            left, top = tile_origin(i, h, w, center)
            canvas[y1:y2, x1:x2] = image[y1 - top:y2 - top, x1 - left:x2 - left]
    return canvas


def mosaic4_boxes(shapes: list[tuple[int, int]], boxes: list[np.ndarray], size: int,
                  center: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """mosaic4's boxes (shifted to the canvas and clipped to it) and the tile each comes from; pixels not needed."""
    all_boxes, owners = [], []
    for i, ((h, w), image_boxes) in enumerate(zip(shapes, boxes)):
        left, top = tile_origin(i, h, w, center)
        all_boxes.append(image_boxes + np.asarray([left, top, left, top], np.float32))
        owners.append(np.full(len(image_boxes), i, np.int64))
    merged = np.concatenate(all_boxes).clip(0, 2 * size) if all_boxes else np.zeros((0, 4), np.float32)
    return merged.astype(np.float32), np.concatenate(owners)


def mosaic4_segments(shapes: list[tuple[int, int]], segments: list[list[np.ndarray]], size: int,
                     center: tuple[int, int]) -> list[np.ndarray]:
    """The polygons of each mosaic tile (`shapes` (h, w) of the resized images, pixels of each image) shifted like
    mosaic4 shifts the boxes and clipped to the canvas; one list for all tiles, in mosaic4's box order."""
    canvas_size = 2 * size
    out = []
    for i, ((h, w), tile_segments) in enumerate(zip(shapes, segments)):
        shift = np.asarray(tile_origin(i, h, w, center), np.float32)
        out.extend((np.asarray(s, np.float32) + shift).clip(0, canvas_size) for s in tile_segments)
    return out


class _Tile(NamedTuple):
    """A mosaic tile: its resized image (None until decoded), resized and original (h, w), boxes in resized pixels,
    classes, and the index it was loaded from."""

    image: np.ndarray | None
    shape: tuple[int, int]
    orig: tuple[int, int]
    boxes: np.ndarray
    classes: np.ndarray
    index: int


class Mosaic:
    """`mosaic(index, rng)`: mosaic-4 of `index` and three random images, then random_perspective back to img_size;
    returns the image, boxes, classes, the main image's original (h, w) and the content rows
    (see augment.content_rows)."""

    def __init__(self, source: ImageSource, bad: BadSamples, config: AugmentationConfig, use_segments: bool) -> None:
        self.source, self.bad, self.config, self.use_segments = source, bad, config, use_segments
        self.size = source.img_size

    def __call__(self, index: int, rng: np.random.Generator) -> MosaicResult:
        """Decoding is ~60 % of a mosaic sample, so a tile no output pixel shows (~13 % of them at 640) is not decoded:
        its labels come from the index, and the warp never reads its pixels. The draws and the sample are those of
        decoding every tile first. If a tile to decode is bad (or known bad), the sample is built again from the
        same generator state decoding every tile first, which replaces bad tiles as it always did; a bad file in a
        tile nobody sees is found when it is shown, at the latest as its own sample's main tile."""
        state = rng.bit_generator.state
        try:
            return self._build(index, rng, decode_all=False)
        except DataError:
            rng.bit_generator.state = state
            return self._build(index, rng, decode_all=True)

    def _build(self, index: int, rng: np.random.Generator, decode_all: bool) -> MosaicResult:
        size, count = self.size, len(self.source.records)
        indices = [index] + [int(i) for i in rng.integers(0, count, 3)]
        rng.shuffle(indices)
        if decode_all:
            tiles = [self._load_tile(i, rng, required=(i == index)) for i in indices]
        elif self.bad.bad.intersection(indices):
            raise DataError("a mosaic tile is known to be bad")  # caught by __call__: decode_all replaces it
        else:
            tiles = [_Tile(None, *self.source.resized_labels(i), i) for i in indices]
        shapes = [tile.shape for tile in tiles]
        center = (int(rng.uniform(size / 2, 3 * size / 2)), int(rng.uniform(size / 2, 3 * size / 2)))
        canvas_boxes, _ = mosaic4_boxes(shapes, [tile.boxes for tile in tiles], size, center)
        canvas_classes = np.concatenate([tile.classes for tile in tiles])
        segments = [self._tile_segments(tile.index, tile.orig, tile.shape, tile.boxes) for tile in tiles]
        canvas_segments, pasted = None, []
        if any(s is not None for s in segments):  # tiles without polygons contribute their box rectangles
            polygons = [s if s is not None else [box_polygon(b) for b in tile.boxes]
                        for s, tile in zip(segments, tiles)]
            canvas_segments = mosaic4_segments(shapes, polygons, size, center)
            canvas_boxes, canvas_classes, canvas_segments, pasted = aug.choose_copy_paste(
                canvas_boxes, canvas_classes, canvas_segments, 2 * size, self.config.copy_paste, rng)
        border = -size // 2
        out_size = (2 * size + 2 * border,) * 2
        transform = aug.affine_matrix(rng, self.config, (2 * size, 2 * size), out_size)
        rects = mosaic4_tile_rects(shapes, size, center)
        if not decode_all:
            tiles = self._decode_shown_tiles(tiles, rects, index, aug.source_region(transform[0], out_size),
                                             mirrored=bool(pasted))
        canvas = aug.paste_mirrored(paint_mosaic4([tile.image for tile in tiles], shapes, size, center), pasted)
        image, out_boxes, out_classes = aug.random_perspective(canvas, canvas_boxes, canvas_classes, self.config,
                                                               rng, border=border, segments=canvas_segments,
                                                               transform=transform)
        main_orig = next((tile.orig for i, tile in zip(reversed(indices), reversed(tiles)) if i == index),
                         (size, size))
        content = mosaic4_content_box(rects, pasted, 2 * size)
        return image, out_boxes, out_classes, main_orig, aug.content_rows(content, transform[0], out_size[1])

    def _decode_shown_tiles(self, tiles: list[_Tile], rects: list[tuple[int, int, int, int]], index: int,
                            seen: tuple[float, float, float, float] | None, mirrored: bool) -> list[_Tile]:
        """Decode the main tile and every tile whose canvas rectangle (`rects`, mosaic4_tile_rects) overlaps `seen`
        (the canvas region the warp reads; None: all), or its mirror image when copy-paste pastes flipped pixels.
        Raises DataError for a bad one."""
        canvas_size = 2 * self.size
        regions = [] if seen is None else [seen]
        if seen is not None and mirrored:
            x1, y1, x2, y2 = seen
            regions.append((canvas_size - 1 - x2, y1, canvas_size - 1 - x1, y2))
        decoded = []
        for tile, (x1, y1, x2, y2) in zip(tiles, rects):
            shown = seen is None or any(x1 < rx2 and x2 > rx1 and y1 < ry2 and y2 > ry1
                                        for rx1, ry1, rx2, ry2 in regions)
            if tile.index == index or shown:
                image, _, _, _ = self.source.load(tile.index)
                tile = tile._replace(image=image)
            decoded.append(tile)
        return decoded

    def _tile_segments(self, index: int, orig: tuple[int, int], resized: tuple[int, int],
                       boxes: np.ndarray) -> list[np.ndarray] | None:
        """The record's polygons in pixels of its resized image (None without segments or when they are off)."""
        if not self.use_segments:
            return None
        polygons = self.source.records[index].segments
        if polygons is None or len(polygons) != len(boxes):
            return None
        gain = np.asarray([resized[1] / orig[1], resized[0] / orig[0]], np.float32)
        return [p * gain for p in polygons]

    def _load_tile(self, index: int, rng: np.random.Generator, required: bool) -> _Tile:
        """Load a mosaic tile; in skip mode a bad extra tile is replaced by another random image."""
        count = len(self.source.records)
        for _ in range(count):
            if index not in self.bad.bad:
                try:
                    image, orig, boxes, classes = self.source.load(index)
                    return _Tile(image, image.shape[:2], orig, boxes, classes, index)
                except DataError as exc:
                    if required:
                        raise
                    self.bad.handle(index, exc)
            self.bad.count_skip()
            index = int(rng.integers(count))
        raise DataError("every image of the dataset failed to load")
