"""DetectionDataset: records → augmented (training) or letterboxed (evaluation) samples.

Training follows the official pipeline (docs/yolov9-reference.md §5): mosaic-4 → copy-paste (segment labels only)
→ random_perspective (border −s/2, segment-aware boxes when the records carry polygons) → mixup, or with mosaic off
letterbox → random_perspective (border 0, box mode); then albumentations pixel transforms, HSV, flips. The mosaic switch
lives in shared memory so `set_mosaic` reaches running (persistent) worker processes.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from pgi_detect.geometry import Letterbox

from pgi_detect.data import augment as aug
from pgi_detect.data.augment import AugmentationConfig
from pgi_detect.data.heap import bound_heap_retention
from pgi_detect.data.image_cache import ImageCache, build_cache, cache_kind
from pgi_detect.data.images import (channels_first, decode_annotated_image, decode_for_target, long_side_shape,
                                    read_image_size, resize_from, resize_long_side)
from pgi_detect.data.problems import DataError, check_policy
from pgi_detect.data.records import DetectionSource, ImageRecord, RecordTable, box_polygon, clip_boxes_to_image

logger = logging.getLogger("pgi_detect.data")

# Final validity rule, every pipeline: boxes are clipped to the output image and dropped when their width or height
# is below this many pixels (zero-area after clipping). Training boxes have already passed box_candidates (> 2 px).
MIN_OUTPUT_BOX_SIZE = 1e-3
# Slots of the shared skip counter: the main process uses slot 0, DataLoader worker w slot 1 + w (mod the size), so
# each slot has one writer and no lock is needed.
SKIP_COUNTER_SLOTS = 257


class _Tile(NamedTuple):
    """A mosaic tile: its resized image (None until decoded), resized and original (h, w), boxes in resized pixels,
    classes, and the index it was loaded from."""

    image: np.ndarray | None
    shape: tuple[int, int]
    orig: tuple[int, int]
    boxes: np.ndarray
    classes: np.ndarray
    index: int


class DetectionDataset(Dataset):
    """Samples are dicts: image (3,H,W) uint8 RGB tensor, boxes (n,4) xyxy pixels of that image, classes (n,),
    image_id, orig_shape (h, w), scale (gain_x, gain_y), pad (pad_x, pad_y), path, pipeline.

    scale/pad invert the letterbox of evaluation samples (original = (letterboxed − pad) / gain); for training
    samples they describe the main image's resize only. `pipeline` is 'mosaic', 'mosaic+mixup', 'letterbox'
    (training, mosaic off) or 'eval'.
    """

    def __init__(self, source: DetectionSource | RecordTable | list[ImageRecord], img_size: int = 640,
                 train: bool = False, augmentation: AugmentationConfig | dict | None = None,
                 cache_images: bool | str = False, on_bad_sample: str = "error", seed: int = 0,
                 decode_reduced: bool = False) -> None:
        self.records = RecordTable.coerce(source.records if isinstance(source, DetectionSource) else source)
        if not len(self.records):
            raise DataError("dataset has no usable images")
        if img_size < 32:
            raise ValueError(f"img_size must be at least 32, got {img_size}")
        self.img_size = int(img_size)
        self.train = train
        self.config = AugmentationConfig.from_any(augmentation) if train else AugmentationConfig.disabled()
        self.on_bad_sample = check_policy(on_bad_sample)
        self.cache_images = cache_kind(cache_images)
        self._image_cache: ImageCache | None = None
        self.decode_reduced = decode_reduced  # large JPEGs decoded at a DCT scale (images.decode_for_target)
        self.pixel_augmenter = aug.PixelAugmenter(self.config) if train else None
        self.rect_shapes: dict[int, tuple[int, int]] | None = None
        self._mosaic_flag = torch.ones(1, dtype=torch.uint8).share_memory_()
        self._skipped = torch.zeros(SKIP_COUNTER_SLOTS, dtype=torch.int64).share_memory_()
        self._bad: set[int] = set()
        # Polygons are only used by training mosaics (copy-paste, segment-aware warping); records loaded with
        # segments=False, or without polygon labels, keep the box-only pipeline.
        self.use_segments = train and self.records.any_segments
        self.seed = int(seed)
        self.rng = np.random.default_rng(self.seed)

    def __len__(self) -> int:
        return len(self.records)

    # ------------------------------------------------------------------------------------------------ switches

    def set_mosaic(self, enabled: bool) -> None:
        """close-mosaic: takes effect in worker processes too (shared-memory flag)."""
        self._mosaic_flag[0] = int(bool(enabled))

    @property
    def mosaic_enabled(self) -> bool:
        return bool(self._mosaic_flag.item())

    @property
    def skipped_samples(self) -> int:
        """Bad images skipped so far (replaced by another image, as a sample or a mosaic tile), summed over this
        process and its DataLoader workers (shared memory, like the mosaic flag)."""
        return int(self._skipped.sum())

    def _count_skip(self) -> None:
        worker = get_worker_info()
        self._skipped[0 if worker is None else 1 + worker.id % (SKIP_COUNTER_SLOTS - 1)] += 1

    def sample_rng(self, epoch: int, index: int) -> np.random.Generator:
        """The augmentation randomness of one sample: a function of (seed, epoch, index) only, so a sample is the
        same whichever worker draws it, however many workers there are, and after a resume in the middle of an
        epoch."""
        return np.random.default_rng((self.seed, epoch, index))

    def set_rect_shapes(self, shapes: dict[int, tuple[int, int]] | None) -> None:
        """Per-index letterbox shapes for rectangular evaluation batches (see samplers.rect_batches)."""
        self.rect_shapes = shapes

    # ------------------------------------------------------------------------------------------------ loading

    def load_image(self, index: int) -> tuple[np.ndarray, tuple[int, int], np.ndarray, np.ndarray]:
        """(image resized so the long side = img_size, original (h, w), boxes in resized pixels, classes)."""
        record = self.records[index]
        cached = self._image_cache.get(index) if self._image_cache is not None else None
        # A bad image is a hole in the cache: decoding it again raises its error for the bad-sample policy.
        image, orig = cached if cached is not None else self._decode_resized(index)
        # boxes are in original pixels: the records of a RecordTable are sized
        return image, orig, self._boxes_in(record.boxes, orig, image.shape[:2]), record.classes

    def _decode_resized(self, index: int) -> tuple[np.ndarray, tuple[int, int]]:
        record = self.records[index]
        if self.decode_reduced:
            image, orig = decode_for_target(record.path, record.height, record.width, self.img_size)
            return resize_from(image, orig, self.img_size, augment=self.train), orig
        image = decode_annotated_image(record.path, record.height, record.width)
        return resize_long_side(image, self.img_size, augment=self.train), image.shape[:2]

    def cache_all(self, threads: int = 2) -> None:
        """Decode every image once into the image cache (data.cache_images ram | disk, see data/image_cache.py);
        call before the DataLoader workers start, so that they share it."""
        if self.cache_images is None or self._image_cache is not None:
            return
        sizes = [self._full_size(index) for index in range(len(self))]
        shapes = np.array([long_side_shape(h, w, self.img_size) for h, w in sizes], dtype=np.int64).reshape(-1, 2)
        key = None
        if self.cache_images == "disk":
            stats = [(str(self.records[i].path), *_size_and_mtime(self.records[i].path)) for i in range(len(self))]
            key = [stats, self.img_size, self.train, self.decode_reduced, cv2.__version__]
        first = Path(self.records[0].path).parent.name if len(self) else "images"
        self._image_cache = build_cache(self.cache_images, shapes, self._decode_resized, key or [],
                                        f"{first}-{len(self)}-{self.img_size}", local_rank=_local_rank(),
                                        threads=threads)

    def _full_size(self, index: int) -> tuple[int, int]:
        record = self.records[index]
        if record.height and record.width and record.height > 0 and record.width > 0:
            return int(record.height), int(record.width)
        try:
            return read_image_size(record.path)
        except DataError:
            return 1, 1  # unreadable: a hole in the cache, reported when the sample is drawn

    # ------------------------------------------------------------------------------------------------ samples

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        """`key` is an index, or `(epoch, index)` as `EpochSampler` yields them (the epoch seeds the augmentation)."""
        epoch, index = key if isinstance(key, tuple) else (0, key)
        if self.train:  # evaluation samples draw nothing
            self.rng = self.sample_rng(int(epoch), int(index))
        bound_heap_retention()  # once per process: keeps worker memory flat without trimming (data/heap.py)
        for _ in range(len(self)):
            if index not in self._bad:
                try:
                    return self._sample(index)
                except DataError as exc:
                    self._handle_bad(index, exc)
            self._count_skip()
            index = (index + 1) % len(self)
        raise DataError("every image of the dataset failed to load")

    def _handle_bad(self, index: int, exc: DataError) -> None:
        if self.on_bad_sample == "error":
            raise exc
        self._bad.add(index)
        logger.warning("%s (skipped; %d bad image(s) so far in this process)", exc, len(self._bad))

    def _sample(self, index: int) -> dict[str, Any]:
        content_rows = None  # rows outside which the image is padding grey only, when known
        if not self.train:
            image, boxes, classes, orig, gain, pad, _ = self._letterboxed(index, self._eval_shape(index), False)
            pipeline = "eval"
        elif self.mosaic_enabled and self.rng.random() < self.config.mosaic:
            image, boxes, classes, orig, content_rows = self._mosaic(index)
            pipeline = "mosaic"
            if self.rng.random() < self.config.mixup:
                other, other_boxes, other_classes, _, _ = self._mosaic(int(self.rng.integers(len(self))))
                content_rows = None  # the blend of two paddings need not be the padding grey
                image = aug.mixup(image, other, self.rng, self.config.mixup_beta)
                boxes = np.concatenate([boxes, other_boxes])
                classes = np.concatenate([classes, other_classes])
                pipeline = "mosaic+mixup"
            gain, pad = (self.img_size / max(orig), self.img_size / max(orig)), (0.0, 0.0)
        else:
            image, boxes, classes, orig, gain, pad, content = self._letterboxed(index, (self.img_size,) * 2, True)
            size = (image.shape[1], image.shape[0])
            transform = aug.affine_matrix(self.rng, self.config, size, size)
            image, boxes, classes = aug.random_perspective(image, boxes, classes, self.config, self.rng, border=0,
                                                           transform=transform)
            content_rows = aug.content_rows(content, transform[0], image.shape[0])
            pipeline = "letterbox"
        if self.train:
            image, boxes = self._photometric_and_flips(image, boxes, content_rows)
        boxes, keep, _ = clip_boxes_to_image(boxes.reshape(-1, 4), image.shape[1], image.shape[0],
                                             min_size=MIN_OUTPUT_BOX_SIZE)
        return {
            "image": torch.from_numpy(channels_first(image)),
            "boxes": boxes[keep].astype(np.float32),
            "classes": np.asarray(classes)[keep].astype(np.int64),
            "image_id": self.records.image_id(index),
            "orig_shape": (int(orig[0]), int(orig[1])),
            "scale": (float(gain[0]), float(gain[1])),
            "pad": (float(pad[0]), float(pad[1])),
            "path": str(self.records.path(index)),
            "pipeline": pipeline,
        }

    def _eval_shape(self, index: int) -> tuple[int, int]:
        if self.rect_shapes is not None:
            return self.rect_shapes[index]
        return self.img_size, self.img_size

    def _letterboxed(self, index: int, shape: tuple[int, int], scaleup: bool):
        """load_image's result letterboxed to `shape`, with the placement relative to the original image and the
        box of the letterboxed image's non-padding pixels."""
        image, orig, boxes, classes = self.load_image(index)
        letterbox = Letterbox.fit(image.shape[:2], shape, scaleup=scaleup)
        total = Letterbox.stretch(orig, image.shape[:2]).then(letterbox)
        image = letterbox.apply(image)
        boxes = letterbox.boxes_to_input(boxes) if len(boxes) else boxes
        return image, boxes, classes, orig, total.gain, total.pad, letterbox.content_box

    def _mosaic(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int],
                                           tuple[int, int] | None]:
        """Mosaic-4 of `index` and three random images, then random_perspective back to img_size; returns the
        image, boxes, classes, the main image's original (h, w) and the content rows (see augment.content_rows).

        Decoding is ~60 % of a mosaic sample, so a tile no output pixel shows (~13 % of them at 640) is not decoded:
        its labels come from the index, and the warp never reads its pixels. The draws and the sample are those of
        decoding every tile first. If a tile to decode is bad (or known bad), the sample is built again from the
        same generator state decoding every tile first, which replaces bad tiles as it always did; a bad file in a
        tile nobody sees is found when it is shown, at the latest as its own sample's main tile."""
        state = self.rng.bit_generator.state
        try:
            return self._build_mosaic(index, decode_all=False)
        except DataError:
            self.rng.bit_generator.state = state
            return self._build_mosaic(index, decode_all=True)

    def _build_mosaic(self, index: int, decode_all: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                   tuple[int, int], tuple[int, int] | None]:
        size = self.img_size
        indices = [index] + [int(i) for i in self.rng.integers(0, len(self), 3)]
        self.rng.shuffle(indices)
        if decode_all:
            tiles = [self._load_for_mosaic(i, required=(i == index)) for i in indices]
        elif self._bad.intersection(indices):
            raise DataError("a mosaic tile is known to be bad")  # caught by _mosaic: decode_all replaces it
        else:
            tiles = [_Tile(None, *self._resized_labels(i), i) for i in indices]
        shapes = [tile.shape for tile in tiles]
        center = (int(self.rng.uniform(size / 2, 3 * size / 2)), int(self.rng.uniform(size / 2, 3 * size / 2)))
        canvas_boxes, _ = aug.mosaic4_boxes(shapes, [tile.boxes for tile in tiles], size, center)
        canvas_classes = np.concatenate([tile.classes for tile in tiles])
        segments = [self._tile_segments(tile.index, tile.orig, tile.shape, tile.boxes) for tile in tiles]
        canvas_segments, pasted = None, []
        if any(s is not None for s in segments):  # tiles without polygons contribute their box rectangles
            polygons = [s if s is not None else [box_polygon(b) for b in tile.boxes]
                        for s, tile in zip(segments, tiles)]
            canvas_segments = aug.mosaic4_segments(shapes, polygons, size, center)
            canvas_boxes, canvas_classes, canvas_segments, pasted = aug.choose_copy_paste(
                canvas_boxes, canvas_classes, canvas_segments, 2 * size, self.config.copy_paste, self.rng)
        border = -size // 2
        out_size = (2 * size + 2 * border,) * 2
        transform = aug.affine_matrix(self.rng, self.config, (2 * size, 2 * size), out_size)
        rects = aug.mosaic4_tile_rects(shapes, size, center)
        if not decode_all:
            tiles = self._decode_shown_tiles(tiles, rects, index, aug.source_region(transform[0], out_size),
                                             mirrored=bool(pasted))
        canvas = aug.paste_mirrored(aug.paint_mosaic4([tile.image for tile in tiles], shapes, size, center), pasted)
        image, out_boxes, out_classes = aug.random_perspective(canvas, canvas_boxes, canvas_classes, self.config,
                                                               self.rng, border=border, segments=canvas_segments,
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
        canvas_size = 2 * self.img_size
        regions = [] if seen is None else [seen]
        if seen is not None and mirrored:
            x1, y1, x2, y2 = seen
            regions.append((canvas_size - 1 - x2, y1, canvas_size - 1 - x1, y2))
        decoded = []
        for tile, (x1, y1, x2, y2) in zip(tiles, rects):
            shown = seen is None or any(x1 < rx2 and x2 > rx1 and y1 < ry2 and y2 > ry1
                                        for rx1, ry1, rx2, ry2 in regions)
            if tile.index == index or shown:
                image, orig, _, _ = self.load_image(tile.index)
                tile = tile._replace(image=image)
            decoded.append(tile)
        return decoded

    def _resized_labels(self, index: int) -> tuple[tuple[int, int], tuple[int, int], np.ndarray, np.ndarray]:
        """(resized (h, w), original (h, w), boxes in resized pixels, classes) of a record, from the index alone: the
        same as load_image's, which checks the decoded image is the annotated size."""
        record = self.records[index]
        orig = (int(record.height), int(record.width))
        shape = long_side_shape(*orig, self.img_size)
        return shape, orig, self._boxes_in(record.boxes, orig, shape), record.classes

    @staticmethod
    def _boxes_in(boxes: np.ndarray, orig: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
        """Boxes in original pixels -> pixels of the image resized from `orig` to `shape`."""
        return Letterbox.stretch(orig, shape).boxes_to_input(boxes) if len(boxes) else boxes

    def _tile_segments(self, index: int, orig: tuple[int, int], resized: tuple[int, int],
                       boxes: np.ndarray) -> list[np.ndarray] | None:
        """The record's polygons in pixels of its resized image (None without segments or when they are off)."""
        if not self.use_segments:
            return None
        polygons = self.records[index].segments
        if polygons is None or len(polygons) != len(boxes):
            return None
        gain = np.asarray([resized[1] / orig[1], resized[0] / orig[0]], np.float32)
        return [p * gain for p in polygons]

    def _load_for_mosaic(self, index: int, required: bool) -> _Tile:
        """Load a mosaic tile; in skip mode a bad extra tile is replaced by another random image."""
        for _ in range(len(self)):
            if index not in self._bad:
                try:
                    image, orig, boxes, classes = self.load_image(index)
                    return _Tile(image, image.shape[:2], orig, boxes, classes, index)
                except DataError as exc:
                    if required:
                        raise
                    self._handle_bad(index, exc)
            self._count_skip()
            index = int(self.rng.integers(len(self)))
        raise DataError("every image of the dataset failed to load")

    def _photometric_and_flips(self, image: np.ndarray, boxes: np.ndarray,
                               content_rows: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray]:
        if self.pixel_augmenter is not None:
            image, applied = self.pixel_augmenter(image, self.rng)
            if applied:  # blur and CLAHE reach into the padding rows
                content_rows = None
        config = self.config
        image = aug.augment_hsv(image, self.rng, (config.hsv_h, config.hsv_s, config.hsv_v), content_rows)
        if self.rng.random() < config.flipud:
            image, boxes = aug.flip_up_down(image, boxes)
        if self.rng.random() < config.fliplr:
            image, boxes = aug.flip_left_right(image, boxes)
        return image, boxes


def _size_and_mtime(path: str | Path) -> tuple[int, int]:
    try:
        stat = os.stat(path)
    except OSError:
        return -1, -1
    return stat.st_size, stat.st_mtime_ns


def _local_rank() -> int:
    """This process's rank on its node (Lightning, torchrun and SLURM set it); the disk cache's builder is rank 0."""
    for variable in ("LOCAL_RANK", "SLURM_LOCALID"):
        if os.environ.get(variable, "").isdigit():
            return int(os.environ[variable])
    return 0
