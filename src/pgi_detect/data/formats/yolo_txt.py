"""YOLO txt datasets (images/ + labels/ with matching stems) → DetectionSource.

Label lines are `class cx cy w h` normalised to the image, or `class x1 y1 x2 y2 ...` polygons (box = the polygon's
bounding box; the polygon is kept as the object's segment unless `segments=False`). Class names come from the
`class_names` argument or `classes.yaml` (`names:` as a list or an {index: name} dict). An image's label file is
found like ultralytics and the official code do: the last `images` component of its path replaced by `labels`, the
suffix by `.txt` (for a dataset folder: `labels/<path relative to images/>.txt`). Images without a label file are
negatives; label files without an image are reported and ignored. Image ids are running indices over the sorted
image paths; category ids are the class indices. Every image header is read while loading, so records come out with
pixel boxes and sizes like COCO ones. Each object's evaluation area is its polygon's area for polygon lines and its
box area for box lines.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import yaml
from tqdm import tqdm

from pgi_detect.data.images.decode import IMAGE_SUFFIXES, ImageDecodeError, read_image_size
from pgi_detect.data.problems import DataError, DataProblem
from pgi_detect.data.records import (DetectionSource, ImageRecord, RecordTable, box_areas, box_polygon,
                                     clip_boxes_to_image, empty_boxes, pack_segments, polygon_area, report_box_repairs)

CLASSES_FILE = "classes.yaml"


def read_class_names(yaml_file: Path) -> list[str]:
    try:
        data = yaml.safe_load(yaml_file.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise DataError(f"{yaml_file}: malformed YAML ({exc})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{yaml_file}: cannot read ({exc})") from None
    return parse_class_names(data.get("names") if isinstance(data, dict) else None, yaml_file)


def parse_class_names(names: object, where: Path | str) -> list[str]:
    """A `names:` value: a list, or an {index: name} dict with indices 0..n-1."""
    if isinstance(names, list):
        return [str(n) for n in names]
    if isinstance(names, dict):
        try:
            by_index = {int(k): str(v) for k, v in names.items()}
        except (TypeError, ValueError):
            raise DataError(f"{where}: 'names' keys must be class indices 0..n-1, got {list(names)[:10]}") from None
        keys = sorted(by_index)
        if keys != list(range(len(keys))):
            raise DataError(f"{where}: 'names' keys must be 0..{len(keys) - 1}, got {keys[:10]}")
        return [by_index[k] for k in keys]
    raise DataError(f"{where}: no 'names:' list or dict")


def labels_path_of(images_path: Path) -> Path:
    """The label counterpart of an image file or folder: its last `images` component replaced by `labels` (the
    ultralytics / official rule); unchanged when it has none (labels next to the images)."""
    parts = list(images_path.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts)
    return images_path


def find_yolo_dirs(root: Path, images_dir: str | Path | None) -> tuple[Path, Path]:
    """(images dir, labels dir) of a YOLO dataset given as `root` (+ an explicit images folder).

    `root/images` + `root/labels`; with an explicit images folder, `root` is the labels folder unless it is that
    folder or one above it, in which case the labels folder is the images folder with its last `images` component
    replaced by `labels` (`ds/images/train` → `ds/labels/train`), else `root/labels`."""
    if images_dir is not None:
        images = Path(images_dir)
        if root.resolve() not in (images.resolve(), *images.resolve().parents):
            return images, root
        candidates = [labels_path_of(images), root / "labels", images.parent / "labels"]
        return images, next((c for c in candidates if c != images and c.is_dir()), candidates[0])
    if (root / "images").is_dir():
        return root / "images", root / "labels"
    raise DataError(f"{root}: not a YOLO dataset: expected images/ and labels/ folders")


# Normalised overshoot below this is float noise and clipped silently.
NORMALIZED_CLIP_TOLERANCE = 1e-3


def parse_label_file(label_file: Path, num_classes: int, problems: list[DataProblem],
                     segments: list[np.ndarray] | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Normalised xyxy boxes (clipped to [0, 1], degenerate ones dropped and reported), classes and normalised areas
    (polygon area for polygon lines, box area for box lines) from one label file; None (with a problem recorded) if
    the file is malformed or unreadable.

    When a `segments` list is given and the file has at least one polygon line, it is filled with one normalised
    (k, 2) float32 polygon per returned box (clipped to [0, 1]; `cx cy w h` lines get their box rectangle)."""
    rows: list[list[float]] = []
    polygons: list[np.ndarray | None] = []
    classes: list[int] = []
    try:
        text = label_file.read_text(encoding="utf-8-sig", errors="replace")  # a BOM (Windows editors) is no label
    except OSError as exc:
        problems.append(DataProblem(str(label_file), f"cannot read label file ({exc.strerror or exc})",
                                    "malformed_label"))
        return None
    for line_no, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        where = f"{label_file}:{line_no}"
        try:
            values = [float(v) for v in parts]
        except ValueError:
            problems.append(DataProblem(where, f"non-numeric label line {line.strip()!r}", "malformed_label"))
            return None
        cls = values[0]
        coords = values[1:]
        if len(coords) < 4 or (len(coords) > 4 and len(coords) % 2) or not np.all(np.isfinite(values)):
            problems.append(DataProblem(where, f"expected 'class cx cy w h' or a polygon, got {line.strip()!r}", "malformed_label"))
            return None
        if cls != int(cls) or not 0 <= cls < num_classes:
            problems.append(DataProblem(where, f"class {parts[0]} is not an index in 0..{num_classes - 1}", "unknown_category"))
            return None
        if len(coords) == 4:
            cx, cy, w, h = coords
            if w < 0 or h < 0:
                problems.append(DataProblem(where, f"box {line.strip()!r} has a negative width or height",
                                            "invalid_box"))
                return None
            rows.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
            polygons.append(None)
        else:
            xy = np.asarray(coords).reshape(-1, 2)
            rows.append([xy[:, 0].min(), xy[:, 1].min(), xy[:, 0].max(), xy[:, 1].max()])
            polygons.append(xy.astype(np.float32))
        classes.append(int(cls))
    if not rows:
        return (*empty_boxes(), np.zeros(0, np.float32))
    # drop duplicate rows (same class and box; the first polygon of duplicates is kept)
    table, first = np.unique(np.column_stack([np.asarray(classes, np.float64), np.asarray(rows)]), axis=0,
                             return_index=True)
    if len(table) < len(rows):
        problems.append(DataProblem(str(label_file), f"{len(rows) - len(table)} duplicate label line(s) (same class "
                                                     "and box) removed", "duplicate_label", "warning"))
    raw = table[:, 1:].astype(np.float32)
    boxes, keep, clipped = clip_boxes_to_image(raw, 1.0, 1.0, report_tolerance=NORMALIZED_CLIP_TOLERANCE)
    report_box_repairs(problems, str(label_file), raw, keep, clipped, unit="normalised xyxy")
    kept = np.flatnonzero(keep)
    clipped_polygons = [None if polygons[first[i]] is None else polygons[first[i]].clip(0.0, 1.0) for i in kept]
    areas = box_areas(boxes[kept])
    for j, polygon in enumerate(clipped_polygons):
        if polygon is not None:
            areas[j] = polygon_area(polygon)
    if segments is not None and any(p is not None for p in clipped_polygons):
        segments.extend(box_polygon(boxes[i]) if polygon is None else polygon
                        for i, polygon in zip(kept, clipped_polygons))
    return boxes[keep], table[keep, 0].astype(np.int64), areas


def load_yolo_txt(root: str | Path, images_dir: str | Path | None = None,
                  class_names: list[str] | None = None, segments: bool = True) -> DetectionSource:
    """Parse a YOLO txt dataset folder; segments=False drops polygon points after computing the boxes."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: dataset folder not found")
    if root.is_file():
        hint = " (a COCO annotation file: use format coco)" if root.suffix.lower() == ".json" else ""
        raise DataError(f"{root}: is a file; a YOLO dataset is a folder with images/ and labels/{hint}")
    images_root, labels_root = find_yolo_dirs(root, images_dir)
    if not images_root.is_dir():
        raise DataError(f"{images_root}: images folder not found")
    if class_names is None:
        yaml_file = next((p / CLASSES_FILE for p in (root, images_root.parent, images_root.parent.parent)
                          if (p / CLASSES_FILE).is_file()), None)
        if yaml_file is None:
            raise DataError(f"{root}: no {CLASSES_FILE} with 'names:' next to the dataset; pass class_names")
        class_names = read_class_names(yaml_file)

    def label_for(image: Path) -> Path:
        return labels_root / image.relative_to(images_root).with_suffix(".txt")

    return load_yolo_images(list_images(images_root), label_for, class_names, str(root), [labels_root], segments)


def list_images(folder: Path) -> list[Path]:
    """Image files under `folder` (recursively), sorted."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def load_yolo_images(image_paths: Sequence[Path], label_for: Callable[[Path], Path], class_names: Sequence[str],
                     location: str, label_dirs: Sequence[Path] = (), segments: bool = True) -> DetectionSource:
    """Parse the label file `label_for(image)` of every image (ids = positions in `image_paths`); `.txt` files
    under `label_dirs` that belong to no image are reported as orphans."""
    problems: list[DataProblem] = []
    records: list[ImageRecord] = []
    areas: list[np.ndarray] = []
    unlabeled: list[str] = []
    used_labels: set[Path] = set()
    for image_id, image_path in enumerate(image_paths):
        label_file = label_for(image_path)
        polygons: list[np.ndarray] | None = [] if segments else None
        if not os.path.isfile(label_file):
            unlabeled.append(str(image_path))
            boxes, classes = empty_boxes()
            object_areas = np.zeros(0, np.float32)
        else:
            used_labels.add(label_file)
            parsed = parse_label_file(label_file, len(class_names), problems, polygons)
            if parsed is None:
                continue
            boxes, classes, object_areas = parsed
        record = ImageRecord(image_path, image_id, boxes, classes, normalized=True)
        if polygons:
            record.segment_points, record.segment_offsets = pack_segments(polygons)
        records.append(record)
        areas.append(object_areas)
    orphans = sorted(str(p) for folder in label_dirs if folder.is_dir() for p in folder.rglob("*.txt")
                     if p.name != "classes.txt" and p not in used_labels)
    for orphan in orphans:
        problems.append(DataProblem(orphan, "label file has no matching image; ignored", "orphan_label", "warning"))
    records, areas = size_yolo_records(records, areas, location, problems)
    return DetectionSource(
        images_dropped=len(image_paths) - len(records),
        format="yolo", location=location, records=RecordTable.from_records(records, areas),
        class_names=list(class_names), category_ids=list(range(len(class_names))), problems=problems,
        orphan_label_files=orphans, unlabeled_images=unlabeled, label_locations=[str(folder) for folder in label_dirs],
    )


def size_yolo_records(records: list[ImageRecord], areas: list[np.ndarray], location: str,
                      problems: list[DataProblem]) -> tuple[list[ImageRecord], list[np.ndarray]]:
    """Read every image header so the boxes are in pixels (rect batches and the evaluation ground truth need them);
    returns the records sized and their object areas in pixels (from normalised `areas`).

    A record with an unreadable header is dropped (an error-level problem appended to `problems`, under the one
    bad-sample policy of load_source) before any dataset or ground truth is built from the source; they then always
    hold the same images.
    """
    kept: list[ImageRecord] = []
    kept_areas: list[np.ndarray] = []
    # disable=None: a bar on a terminal only, nothing in batch-job logs.
    for record, area in tqdm(list(zip(records, areas)), desc=f"reading image sizes ({location})", unit="img",
                             disable=None, leave=False):
        try:
            height, width = read_image_size(record.path)
        except ImageDecodeError as exc:
            problems.append(DataProblem(str(record.path), str(exc).split(": ", 1)[-1], "corrupt_image"))
            continue
        record.boxes = record.pixel_boxes(height, width)
        if record.segment_points is not None:
            record.segment_points = record.segment_points * np.asarray([width, height], np.float32)
        record.height, record.width, record.normalized = height, width, False
        kept.append(record)
        kept_areas.append((area * (width * height)).astype(np.float32))
    return kept, kept_areas
