"""The images of a split, decoded and resized so the long side is `img_size`, with their labels in those pixels:
from the files (full or reduced-scale decoding) or from the image cache (data/image_cache.py)."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from pgi_detect.data.images.cache import ImageCache, build_cache
from pgi_detect.data.images.decode import (decode_annotated_image, decode_for_target, long_side_shape, read_image_size,
                                    resize_from, resize_long_side)
from pgi_detect.data.problems import DataError
from pgi_detect.data.records import RecordTable
from pgi_detect.geometry import Letterbox


class ImageSource:
    """`load(index)`: (image resized so the long side = img_size, original (h, w), boxes in resized pixels, classes).
    Training images resize with INTER_LINEAR, evaluation images downscale with INTER_AREA (the reference's rule).
    `truncate` cuts the resized sides instead of rounding them (data.official_rounding)."""

    def __init__(self, records: RecordTable, img_size: int, train: bool, cache: str | None,
                 decode_reduced: bool, truncate: bool = False) -> None:
        self.records, self.img_size, self.train = records, img_size, train
        self.cache_kind, self.decode_reduced, self.truncate = cache, decode_reduced, truncate
        self.cache: ImageCache | None = None

    def load(self, index: int) -> tuple[np.ndarray, tuple[int, int], np.ndarray, np.ndarray]:
        record = self.records[index]
        cached = self.cache.get(index) if self.cache is not None else None
        # A bad image is a hole in the cache: decoding it again raises its error for the bad-sample policy.
        image, orig = cached if cached is not None else self.decode_resized(index)
        # boxes are in original pixels: the records of a RecordTable are sized
        return image, orig, boxes_in(record.boxes, orig, image.shape[:2]), record.classes

    def decode_resized(self, index: int) -> tuple[np.ndarray, tuple[int, int]]:
        record = self.records[index]
        if self.decode_reduced:
            image, orig = decode_for_target(record.path, record.height, record.width, self.img_size)
            return resize_from(image, orig, self.img_size, self.train, self.truncate), orig
        image = decode_annotated_image(record.path, record.height, record.width)
        return resize_long_side(image, self.img_size, self.train, self.truncate), image.shape[:2]

    def resized_labels(self, index: int) -> tuple[tuple[int, int], tuple[int, int], np.ndarray, np.ndarray]:
        """(resized (h, w), original (h, w), boxes in resized pixels, classes) of a record, from the index alone: the
        same as load's, which checks the decoded image is the annotated size."""
        record = self.records[index]
        orig = (int(record.height), int(record.width))
        shape = long_side_shape(*orig, self.img_size, self.truncate)
        return shape, orig, boxes_in(record.boxes, orig, shape), record.classes

    def fill_cache(self, threads: int = 2) -> None:
        """Decode every image once into the image cache (data.cache_images ram | disk); call before the DataLoader
        workers start, so that they share it."""
        if self.cache_kind is None or self.cache is not None:
            return
        count = len(self.records)
        sizes = [self._full_size(index) for index in range(count)]
        shapes = np.array([long_side_shape(h, w, self.img_size, self.truncate) for h, w in sizes],
                          dtype=np.int64).reshape(-1, 2)
        key: list[object] = []
        if self.cache_kind == "disk":
            stats = [(str(self.records[i].path), *_size_and_mtime(self.records[i].path)) for i in range(count)]
            key = [stats, self.img_size, self.train, self.decode_reduced, cv2.__version__]
            if self.truncate:  # appended only when set, so the caches of the default settings keep their keys
                key.append("truncate")
        first = Path(self.records[0].path).parent.name if count else "images"
        self.cache = build_cache(self.cache_kind, shapes, self.decode_resized, key,
                                 f"{first}-{count}-{self.img_size}", local_rank=_local_rank(), threads=threads)

    def _full_size(self, index: int) -> tuple[int, int]:
        record = self.records[index]
        if record.height and record.width and record.height > 0 and record.width > 0:
            return int(record.height), int(record.width)
        try:
            return read_image_size(record.path)
        except DataError:
            return 1, 1  # unreadable: a hole in the cache, reported when the sample is drawn


def boxes_in(boxes: np.ndarray, orig: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """Boxes in original pixels -> pixels of the image resized from `orig` to `shape`."""
    return Letterbox.stretch(orig, shape).boxes_to_input(boxes) if len(boxes) else boxes


def _size_and_mtime(path: str | Path) -> tuple[int, int]:
    try:
        stat = os.stat(path)
    except OSError:
        return -1, -1
    return stat.st_size, stat.st_mtime_ns


SHARED_CACHE_ENV = "PGI_DETECT_CACHE_SHARED"  # 1: the cache folder is one file system for all nodes


def _local_rank() -> int:
    """The rank that decides who builds the disk cache (0 builds, the others wait): this process's rank on its node
    (Lightning, torchrun and SLURM set it), or its global rank when PGI_DETECT_CACHE_SHARED=1 says the cache folder
    is shared by every node, so that one process of the whole job builds it."""
    shared = os.environ.get(SHARED_CACHE_ENV, "") not in ("", "0")
    for variable in (("RANK", "SLURM_PROCID") if shared else ("LOCAL_RANK", "SLURM_LOCALID")):
        if os.environ.get(variable, "").isdigit():
            return int(os.environ[variable])
    return 0
