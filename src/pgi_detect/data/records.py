"""In-memory form of a detection dataset, independent of the file format it came from."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .problems import DataProblem


@dataclass
class ImageRecord:
    """One image and its training targets.

    `boxes` are xyxy in original (EXIF-oriented) image pixels, already clipped to the image; `classes` are contiguous
    indices 0..nc-1. `normalized=True` boxes are fractions of the image with `width`/`height` unknown: the state of a
    YOLO txt record before its header is read, which load_yolo_txt does for every record before returning it.
    """

    path: Path
    image_id: int
    boxes: np.ndarray  # (n, 4) float32 xyxy pixels
    classes: np.ndarray  # (n,) int64
    width: int | None = None
    height: int | None = None
    normalized: bool = False

    def pixel_boxes(self, height: int, width: int) -> np.ndarray:
        """Boxes in pixels of an image of this (displayed) size."""
        if not self.normalized:
            return self.boxes
        return self.boxes * np.asarray([width, height, width, height], np.float32)

    @property
    def num_objects(self) -> int:
        return int(len(self.classes))


@dataclass
class DetectionSource:
    """A parsed dataset: records plus the class table and the problems found while parsing."""

    format: str
    location: str  # annotation file (COCO) or dataset root (YOLO), for messages
    records: list[ImageRecord]
    class_names: list[str]
    category_ids: list[int]  # contiguous index -> dataset category id
    problems: list[DataProblem] = field(default_factory=list)
    coco_dict: dict[str, Any] | None = None  # the raw COCO JSON (ground truth incl. crowd) when format == 'coco'
    orphan_label_files: list[str] = field(default_factory=list)  # YOLO: label files without an image
    unlabeled_images: list[str] = field(default_factory=list)  # YOLO: images without a label file (negatives)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def empty_boxes() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)


# Boxes that stick out of the image by more than this many pixels are reported when clipped (sub-pixel overshoot from
# float rounding is common in real annotations and clipped silently).
CLIP_REPORT_TOLERANCE_PX = 1.0


def clip_boxes_to_image(
    boxes: np.ndarray, width: float, height: float, report_tolerance: float = CLIP_REPORT_TOLERANCE_PX,
    min_size: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clip xyxy boxes to the image; returns (clipped boxes, keep mask, was-clipped-noticeably mask).

    keep is False for degenerate boxes: zero or negative width/height after clipping (including boxes entirely
    outside the image), or a side below `min_size` when given. "Noticeably" means some coordinate moved by more than
    `report_tolerance` (in the units of the boxes), so float noise is not reported as a repair.
    """
    clipped = boxes.copy()
    clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(0, width)
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(0, height)
    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    if min_size > 0:
        keep &= ((clipped[:, 2] - clipped[:, 0]) >= min_size) & ((clipped[:, 3] - clipped[:, 1]) >= min_size)
    overshoot = np.abs(clipped - boxes).max(axis=1) if len(boxes) else np.zeros(0)
    return clipped, keep, overshoot > report_tolerance


def report_box_repairs(problems: list[DataProblem], file: str, raw: np.ndarray, keep: np.ndarray,
                       clipped: np.ndarray, unit: str = "xyxy pixels") -> None:
    """Record a warning per dropped (degenerate) and per noticeably clipped box."""
    for i in np.flatnonzero(~keep):
        problems.append(DataProblem(file, f"box {raw[i].round(3).tolist()} ({unit}) has zero area inside the image; "
                                    "dropped", "degenerate_box", "warning"))
    for i in np.flatnonzero(keep & clipped):
        problems.append(DataProblem(file, f"box {raw[i].round(3).tolist()} ({unit}) extends outside the image; "
                                    "clipped", "clipped_box", "warning"))
