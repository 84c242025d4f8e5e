"""In-memory form of a detection dataset, independent of the file format it came from."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

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

    @property
    def segments(self) -> list[np.ndarray] | None:
        """One (k, 2) float32 polygon per object, in the units of `boxes`; None without segments."""
        if self.segment_points is None or self.segment_offsets is None:
            return None
        return unpack_segments(self.segment_points, self.segment_offsets)

    def pixel_segments(self, height: int, width: int) -> list[np.ndarray] | None:
        """One (k, 2) float32 polygon per object, in pixels of an image of this (displayed) size; None without."""
        segments = self.segments
        if segments is None or not self.normalized:
            return segments
        scale = np.asarray([width, height], np.float32)
        return [polygon * scale for polygon in segments]

    def pixel_boxes(self, height: int, width: int) -> np.ndarray:
        """Boxes in pixels of an image of this (displayed) size."""
        if not self.normalized:
            return self.boxes
        return self.boxes * np.asarray([width, height, width, height], np.float32)

    @property
    def num_objects(self) -> int:
        return int(len(self.classes))


class RecordTable(Sequence[ImageRecord]):
    """Every image of a dataset in a few flat numpy arrays (no Python object per image), read as `ImageRecord`s.

    A COCO-sized index (118k images, 887k objects with polygons) is about 130 MB of arrays: DataLoader workers
    forked from the process share them copy-on-write without touching them (a list of per-image objects gets its
    pages copied into every worker by reference counting alone), and arrays memory-mapped from the on-disk index
    cache (index_cache.py) are shared by every process that maps the file, DDP ranks included.

    Per image: `image_ids`, `widths`, `heights`, file names (utf-8 bytes in `names`, image i owning
    names[name_offsets[i]:name_offsets[i + 1]], joined to `prefix`), `object_offsets` (image i owns objects
    object_offsets[i]:object_offsets[i + 1]) and `has_segments`. Per object: `boxes` (xyxy pixels), `classes`,
    `areas` (the evaluation area: polygon area where the label was a polygon, else the box area; None = box area)
    and `point_offsets` into `points` (its polygon, pixels; read only for images with `has_segments`, the others'
    objects may own none; both None when no image has segments). `rows` selects and orders the images that are used
    (None: all), so dropping images never copies the arrays.
    """

    def __init__(self, prefix: str, names: np.ndarray, name_offsets: np.ndarray, image_ids: np.ndarray,
                 widths: np.ndarray, heights: np.ndarray, object_offsets: np.ndarray, boxes: np.ndarray,
                 classes: np.ndarray, has_segments: np.ndarray | None = None, point_offsets: np.ndarray | None = None,
                 points: np.ndarray | None = None, areas: np.ndarray | None = None,
                 rows: np.ndarray | None = None) -> None:
        self.prefix = prefix
        self.names, self.name_offsets = names, name_offsets
        self.image_ids, self.widths, self.heights = image_ids, widths, heights
        self.object_offsets, self.boxes, self.classes, self.areas = object_offsets, boxes, classes, areas
        self.has_segments = (has_segments if has_segments is not None
                             else np.zeros(len(image_ids), bool))
        self.point_offsets, self.points = point_offsets, points
        if point_offsets is None or points is None:
            self.has_segments = np.zeros(len(image_ids), bool)
        self.rows = rows

    # ------------------------------------------------------------------------------------------------ building

    @classmethod
    def from_records(cls, records: Sequence[ImageRecord], areas: Sequence[np.ndarray | None] | None = None
                     ) -> "RecordTable":
        """Pack sized (pixel) records; `areas` gives per-record object areas where known (else box areas). Only
        the records with segments contribute points (the others' objects own none; nothing reads them)."""
        if any(r.normalized or r.width is None or r.height is None for r in records):
            raise ValueError("records must be sized (pixel boxes) before they are packed")
        names, name_offsets = pack_names([str(r.path) for r in records])
        counts = np.asarray([r.num_objects for r in records], np.int64)
        object_offsets = offsets_of(counts)
        has_segments = np.asarray([r.segment_points is not None and r.segment_offsets is not None for r in records],
                                  bool)
        boxes = [np.asarray(r.boxes, np.float32).reshape(-1, 4) for r in records]
        object_areas = [box_areas(b) if a is None else np.asarray(a, np.float32)
                        for b, a in zip(boxes, areas or [None] * len(records))]
        points = point_offsets = None
        if has_segments.any():
            point_counts = np.zeros(int(counts.sum()), np.int64)
            polygons = []
            for i in np.flatnonzero(has_segments):
                record = records[i]
                offsets = np.asarray(record.segment_offsets, np.int64)
                if len(offsets) != counts[i] + 1:
                    raise ValueError(f"{record.path}: {len(offsets) - 1} segments for {counts[i]} objects")
                point_counts[object_offsets[i]:object_offsets[i + 1]] = np.diff(offsets)
                polygons.append(np.asarray(record.segment_points, np.float32).reshape(-1, 2)[offsets[0]:offsets[-1]])
            points, point_offsets = np.concatenate(polygons), offsets_of(point_counts)
        return cls(
            prefix="", names=names, name_offsets=name_offsets,
            image_ids=np.asarray([r.image_id for r in records], np.int64),
            widths=np.asarray([r.width for r in records], np.int32),
            heights=np.asarray([r.height for r in records], np.int32),
            object_offsets=object_offsets, has_segments=has_segments,
            boxes=np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32),
            classes=(np.concatenate([np.asarray(r.classes, np.int64) for r in records]) if records
                     else np.zeros(0, np.int64)),
            areas=np.concatenate(object_areas) if object_areas else np.zeros(0, np.float32),
            point_offsets=point_offsets, points=points)

    @classmethod
    def coerce(cls, records: "RecordTable | Sequence[ImageRecord]") -> "RecordTable":
        return records if isinstance(records, RecordTable) else cls.from_records(list(records))

    def select(self, positions: Sequence[int] | np.ndarray) -> "RecordTable":
        """The images at these positions of this table, in this order (the arrays are shared, not copied)."""
        positions = np.asarray(positions, np.int64)
        rows = positions if self.rows is None else self.rows[positions]
        table = RecordTable.__new__(RecordTable)
        table.__dict__.update(self.__dict__)
        table.rows = rows
        return table

    # ------------------------------------------------------------------------------------------------ reading

    def __len__(self) -> int:
        return len(self.image_ids) if self.rows is None else len(self.rows)

    def row(self, position: int) -> int:
        if position < 0:
            position += len(self)
        if not 0 <= position < len(self):
            raise IndexError(position)
        return int(position if self.rows is None else self.rows[position])

    def path(self, position: int) -> Path:
        i = self.row(position)
        return Path(self.prefix + self.names[self.name_offsets[i]:self.name_offsets[i + 1]].tobytes().decode("utf-8"))

    def image_id(self, position: int) -> int:
        return int(self.image_ids[self.row(position)])

    def object_slice(self, position: int) -> slice:
        i = self.row(position)
        return slice(int(self.object_offsets[i]), int(self.object_offsets[i + 1]))

    def object_areas(self, position: int) -> np.ndarray:
        """Evaluation areas of the image's objects (polygon area where the label was a polygon)."""
        objects = self.object_slice(position)
        if self.areas is None:
            return box_areas(self.boxes[objects])
        return self.areas[objects]

    def __getitem__(self, position: int) -> ImageRecord:  # type: ignore[override]
        if isinstance(position, slice):
            raise TypeError("RecordTable positions are integers; use select() for several")
        i = self.row(position)
        objects = slice(int(self.object_offsets[i]), int(self.object_offsets[i + 1]))
        record = ImageRecord(self.path(position), int(self.image_ids[i]), self.boxes[objects], self.classes[objects],
                             int(self.widths[i]), int(self.heights[i]))
        if self.has_segments[i] and self.point_offsets is not None and self.points is not None:
            offsets = self.point_offsets[objects.start:objects.stop + 1]
            record.segment_points = self.points[offsets[0]:offsets[-1]]
            record.segment_offsets = (offsets - offsets[0]).astype(np.int32)
        return record

    def __iter__(self) -> Iterator[ImageRecord]:
        return (self[i] for i in range(len(self)))

    # ------------------------------------------------------------------------------------------------ whole table

    def _rows(self) -> np.ndarray:
        return np.arange(len(self.image_ids)) if self.rows is None else self.rows

    def sizes_hw(self) -> np.ndarray:
        """(n, 2) image (height, width)."""
        rows = self._rows()
        return np.stack([self.heights[rows], self.widths[rows]], 1)

    def object_counts(self) -> np.ndarray:
        rows = self._rows()
        return (self.object_offsets[rows + 1] - self.object_offsets[rows]).astype(np.int64)

    def used_classes(self) -> np.ndarray:
        """The class of every object of the selected images."""
        if self.rows is None:
            return np.asarray(self.classes)
        return np.asarray(self.classes)[ragged_indices(self.object_offsets[self.rows], self.object_counts())]

    @property
    def any_segments(self) -> bool:
        return bool(np.asarray(self.has_segments)[self._rows()].any()) if len(self) else False


@dataclass
class DetectionSource:
    """A parsed dataset: records plus the class table and the problems found while parsing."""

    format: str
    location: str  # annotation file (COCO) or dataset root (YOLO), for messages
    records: RecordTable
    class_names: list[str]
    category_ids: list[int]  # contiguous index -> dataset category id
    problems: list[DataProblem] = field(default_factory=list)
    orphan_label_files: list[str] = field(default_factory=list)  # YOLO: label files without an image
    unlabeled_images: list[str] = field(default_factory=list)  # YOLO: images without a label file (negatives)
    num_crowd: int = 0  # COCO: crowd annotations (not training targets, kept in the ground truth)
    label_locations: list[str] = field(default_factory=list)  # YOLO: where label files were looked up
    images_dropped: int = 0  # images the dataset lists that were left out while parsing (their problems say why)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_objects(self) -> int:
        return int(self.records.object_counts().sum())


def offsets_of(counts: Sequence[int] | np.ndarray) -> np.ndarray:
    """(n + 1,) int64 start offsets of consecutive runs of these lengths."""
    offsets = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    return offsets


def ragged_indices(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The indices of the runs [starts[i], starts[i] + counts[i]) one after another (a ragged gather)."""
    counts = np.asarray(counts, np.int64)
    return np.repeat(np.asarray(starts, np.int64) - offsets_of(counts)[:-1], counts) + np.arange(int(counts.sum()))


def pack_names(names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Strings → (their utf-8 bytes joined (uint8), (n + 1,) int64 offsets); string i owns bytes
    offsets[i]:offsets[i + 1]."""
    encoded = [name.encode("utf-8") for name in names]
    return np.frombuffer(b"".join(encoded), np.uint8).copy(), offsets_of([len(e) for e in encoded])


def box_areas(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    return ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).astype(np.float32)


def polygon_area(polygon: np.ndarray) -> float:
    """Shoelace area of a simple polygon ((k, 2) points)."""
    x, y = np.asarray(polygon, np.float64).reshape(-1, 2).T
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def pack_segments(segments: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """List of (k_i, 2) polygons → (points (P, 2) float32, offsets (n + 1,) int32)."""
    offsets = offsets_of([len(s) for s in segments]).astype(np.int32)
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
    boxes: np.ndarray, width: float | np.ndarray, height: float | np.ndarray,
    report_tolerance: float = CLIP_REPORT_TOLERANCE_PX, min_size: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clip xyxy boxes to the image (or each box to its own image: (n, 1) `width` and `height`); returns (clipped
    boxes, keep mask, was-clipped-noticeably mask).

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
        problems.append(DataProblem(file, *box_repair(raw[i], False, unit), "warning"))
    for i in np.flatnonzero(keep & clipped):
        problems.append(DataProblem(file, *box_repair(raw[i], True, unit), "warning"))


def box_repair(raw: np.ndarray, kept: bool, unit: str = "xyxy pixels") -> tuple[str, str]:
    """(message, kind) of the warning for one box `raw` that clip_boxes_to_image dropped or noticeably clipped."""
    if not kept:
        return f"box {raw.round(3).tolist()} ({unit}) has zero area inside the image; dropped", "degenerate_box"
    return f"box {raw.round(3).tolist()} ({unit}) extends outside the image; clipped", "clipped_box"
