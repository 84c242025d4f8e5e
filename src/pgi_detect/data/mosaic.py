"""Mosaic-4 (with copy-paste) and its random_perspective back to img_size, as a transform over an image source that
takes its random generator explicitly."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from pgi_detect.data import augment as aug
from pgi_detect.data.augment import AugmentationConfig
from pgi_detect.data.bad_samples import BadSamples
from pgi_detect.data.image_source import ImageSource
from pgi_detect.data.problems import DataError
from pgi_detect.data.records import box_polygon

MosaicResult = tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int], "tuple[int, int] | None"]


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
        canvas_boxes, _ = aug.mosaic4_boxes(shapes, [tile.boxes for tile in tiles], size, center)
        canvas_classes = np.concatenate([tile.classes for tile in tiles])
        segments = [self._tile_segments(tile.index, tile.orig, tile.shape, tile.boxes) for tile in tiles]
        canvas_segments, pasted = None, []
        if any(s is not None for s in segments):  # tiles without polygons contribute their box rectangles
            polygons = [s if s is not None else [box_polygon(b) for b in tile.boxes]
                        for s, tile in zip(segments, tiles)]
            canvas_segments = aug.mosaic4_segments(shapes, polygons, size, center)
            canvas_boxes, canvas_classes, canvas_segments, pasted = aug.choose_copy_paste(
                canvas_boxes, canvas_classes, canvas_segments, 2 * size, self.config.copy_paste, rng)
        border = -size // 2
        out_size = (2 * size + 2 * border,) * 2
        transform = aug.affine_matrix(rng, self.config, (2 * size, 2 * size), out_size)
        rects = aug.mosaic4_tile_rects(shapes, size, center)
        if not decode_all:
            tiles = self._decode_shown_tiles(tiles, rects, index, aug.source_region(transform[0], out_size),
                                             mirrored=bool(pasted))
        canvas = aug.paste_mirrored(aug.paint_mosaic4([tile.image for tile in tiles], shapes, size, center), pasted)
        image, out_boxes, out_classes = aug.random_perspective(canvas, canvas_boxes, canvas_classes, self.config,
                                                               rng, border=border, segments=canvas_segments,
                                                               transform=transform)
        main_orig = next((tile.orig for i, tile in zip(reversed(indices), reversed(tiles)) if i == index),
                         (size, size))
        content = aug.mosaic4_content_box(rects, pasted, 2 * size)
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
