"""In-memory form of a detection dataset, independent of the file format it came from."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pgi_detect.data.problems import DataProblem


@dataclass
class ImageRecord:
    """One image and its training targets.

    `boxes` are xyxy in original (EXIF-oriented) image pixels, already clipped to the image; `classes` are contiguous
    indices 0..nc-1. `normalized=True` boxes are fractions of the image with `width`/`height` unknown: the state of a
    YOLO txt record before its header is read, which load_yolo_txt does for every record before returning it.

    Optional polygons ("segments", used by copy-paste and segment-aware warping) are stored packed to stay small for
    100k+ images: `segment_points` (P, 2) float32 in the same units as `boxes` (pixels, or fractions while
    normalized) and `segment_offsets` (n + 1,) int32, object i owning points[offsets[i]:offsets[i + 1]]. Both are None
    when the record has no polygons (or they were not loaded); when present every object has one (objects without a
    polygon get their box rectangle).
    """

    path: Path
    image_id: int
    boxes: np.ndarray  # (n, 4) float32 xyxy pixels
    classes: np.ndarray  # (n,) int64
    width: int | None = None
    height: int | None = None
    normalized: bool = False
    segment_points: np.ndarray | None = None  # (P, 2) float32, see above
    segment_offsets: np.ndarray | None = None  # (n + 1,) int32

    @property
    def has_segments(self) -> bool:
        return self.segment_points is not None

    def pixel_segments(self, height: int, width: int) -> list[np.ndarray] | None:
        """One (k, 2) float32 polygon per object, in pixels of an image of this (displayed) size; None without."""
        if self.segment_points is None or self.segment_offsets is None:
            return None
        points = self.segment_points
        if self.normalized:
            points = points * np.asarray([width, height], np.float32)
        return unpack_segments(points, self.segment_offsets)

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


def pack_segments(segments: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """List of (k_i, 2) polygons → (points (P, 2) float32, offsets (n + 1,) int32)."""
    lengths = [len(s) for s in segments]
    offsets = np.zeros(len(segments) + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    points = (np.concatenate([np.asarray(s, np.float32).reshape(-1, 2) for s in segments]) if segments
              else np.zeros((0, 2), np.float32))
    return points.astype(np.float32, copy=False), offsets


def unpack_segments(points: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
    return [points[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]


def box_polygon(box: np.ndarray) -> np.ndarray:
    """The 4 corners of an xyxy box as a polygon (the segment of an object that has no polygon)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return np.asarray([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], np.float32)


def merge_polygons(polygons: list[np.ndarray]) -> np.ndarray:
    """Join an object's several polygons into one: each further polygon is linked to the joined outline at their
    closest pair of points by a zero-width bridge (out and back along the same line), so filling the result covers
    every part, and its bounds are the bounds of all parts."""
    polygons = [np.asarray(p, np.float32).reshape(-1, 2) for p in polygons if len(p)]
    if not polygons:
        return np.zeros((0, 2), np.float32)
    merged = polygons[0]
    for polygon in polygons[1:]:
        distances = ((merged[:, None, :] - polygon[None, :, :]) ** 2).sum(-1)
        i, j = np.unravel_index(int(np.argmin(distances)), distances.shape)
        rotated = np.roll(polygon, -j, axis=0)  # starts at its closest point
        merged = np.concatenate([merged[:i + 1], rotated, rotated[:1], merged[i:]])
    return merged


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
