"""YOLO txt datasets (images/ + labels/ with matching stems) → DetectionSource.

Label lines are `class cx cy w h` normalised to the image, or `class x1 y1 x2 y2 ...` polygons (box = the polygon's
bounding box; the polygon is kept as the object's segment unless `segments=False`). Class names come from the
`class_names` argument or `classes.yaml` (`names:` as a list or an {index: name} dict). Images without a label file
are negatives; label files without an image are reported and ignored. Image ids are running indices over the sorted
image paths; category ids are the class indices. Every image header is read while loading, so records come out with
pixel boxes and sizes like COCO ones.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from tqdm import tqdm

from pgi_detect.data.images import IMAGE_SUFFIXES, ImageDecodeError, read_image_size
from pgi_detect.data.problems import DataError, DataProblem
from pgi_detect.data.records import (DetectionSource, ImageRecord, box_polygon, clip_boxes_to_image, empty_boxes, pack_segments,
                      report_box_repairs)

CLASSES_FILE = "classes.yaml"


def read_class_names(yaml_file: Path) -> list[str]:
    try:
        data = yaml.safe_load(yaml_file.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise DataError(f"{yaml_file}: malformed YAML ({exc})") from None
    names = data.get("names") if isinstance(data, dict) else None
    if isinstance(names, list):
        return [str(n) for n in names]
    if isinstance(names, dict):
        keys = sorted(int(k) for k in names)
        if keys != list(range(len(keys))):
            raise DataError(f"{yaml_file}: 'names' keys must be 0..{len(keys) - 1}, got {keys[:10]}...")
        return [str(names[k] if k in names else names[str(k)]) for k in keys]
    raise DataError(f"{yaml_file}: no 'names:' list or dict")


def find_yolo_dirs(root: Path, images_dir: str | Path | None) -> tuple[Path, Path]:
    """(images dir, labels dir): `root/images` + `root/labels`, or an explicit images dir with labels under root."""
    if images_dir is not None:
        images = Path(images_dir)
        labels = root if root != images else images.parent / "labels"
        if (root / "labels").is_dir():
            labels = root / "labels"
        return images, labels
    if (root / "images").is_dir():
        return root / "images", root / "labels"
    raise DataError(f"{root}: not a YOLO dataset: expected images/ and labels/ folders")


# Normalised overshoot below this is float noise and clipped silently.
NORMALIZED_CLIP_TOLERANCE = 1e-3


def parse_label_file(label_file: Path, num_classes: int, problems: list[DataProblem],
                     segments: list[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """Normalised xyxy boxes (clipped to [0, 1], degenerate ones dropped and reported) and classes from one label
    file; None (with a problem recorded) if the file is malformed.

    When a `segments` list is given and the file has at least one polygon line, it is filled with one normalised
    (k, 2) float32 polygon per returned box (clipped to [0, 1]; `cx cy w h` lines get their box rectangle)."""
    rows: list[list[float]] = []
    polygons: list[np.ndarray | None] = []
    classes: list[int] = []
    for line_no, line in enumerate(label_file.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
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
            rows.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
            polygons.append(None)
        else:
            xy = np.asarray(coords).reshape(-1, 2)
            rows.append([xy[:, 0].min(), xy[:, 1].min(), xy[:, 0].max(), xy[:, 1].max()])
            polygons.append(xy.astype(np.float32))
        classes.append(int(cls))
    if not rows:
        return empty_boxes()
    # drop duplicate rows (same class and box; the first polygon of duplicates is kept)
    table, first = np.unique(np.column_stack([np.asarray(classes, np.float64), np.asarray(rows)]), axis=0,
                             return_index=True)
    raw = table[:, 1:].astype(np.float32)
    boxes, keep, clipped = clip_boxes_to_image(raw, 1.0, 1.0, report_tolerance=NORMALIZED_CLIP_TOLERANCE)
    report_box_repairs(problems, str(label_file), raw, keep, clipped, unit="normalised xyxy")
    if segments is not None and any(p is not None for p in polygons):
        for i in np.flatnonzero(keep):
            polygon = polygons[first[i]]
            segments.append(box_polygon(boxes[i]) if polygon is None else polygon.clip(0.0, 1.0))
    return boxes[keep], table[keep, 0].astype(np.int64)


def load_yolo_txt(root: str | Path, images_dir: str | Path | None = None,
                  class_names: list[str] | None = None, segments: bool = True) -> DetectionSource:
    """Parse a YOLO txt dataset; segments=False drops polygon points after computing the boxes (less memory)."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: dataset folder not found")
    images_root, labels_root = find_yolo_dirs(root, images_dir)
    if class_names is None:
        yaml_file = next((p / CLASSES_FILE for p in (root, images_root.parent) if (p / CLASSES_FILE).is_file()), None)
        if yaml_file is None:
            raise DataError(f"{root}: no {CLASSES_FILE} with 'names:'; pass class_names")
        class_names = read_class_names(yaml_file)
    image_paths = sorted(p for p in images_root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    label_paths = {p.relative_to(labels_root).with_suffix(""): p for p in labels_root.rglob("*.txt")} if labels_root.is_dir() else {}
    label_paths = {k: v for k, v in label_paths.items() if v.name != "classes.txt"}

    problems: list[DataProblem] = []
    records: list[ImageRecord] = []
    unlabeled: list[str] = []
    used_labels: set[Path] = set()
    for image_id, image_path in enumerate(image_paths):
        key = image_path.relative_to(images_root).with_suffix("")
        label_file = label_paths.get(key)
        if label_file is None:
            unlabeled.append(str(image_path))
            boxes, classes = empty_boxes()
        else:
            used_labels.add(key)
            polygons: list[np.ndarray] | None = [] if segments else None
            parsed = parse_label_file(label_file, len(class_names), problems, polygons)
            if parsed is None:
                continue
            boxes, classes = parsed
        record = ImageRecord(image_path, image_id, boxes, classes, normalized=True)
        if label_file is not None and polygons:
            record.segment_points, record.segment_offsets = pack_segments(polygons)
        records.append(record)
    orphans = sorted(str(p) for k, p in label_paths.items() if k not in used_labels)
    for orphan in orphans:
        problems.append(DataProblem(orphan, "label file has no matching image; ignored", "orphan_label", "warning"))
    source = DetectionSource(
        format="yolo", location=str(root), records=records, class_names=list(class_names),
        category_ids=list(range(len(class_names))), problems=problems,
        orphan_label_files=orphans, unlabeled_images=unlabeled,
    )
    size_yolo_records(source)
    return source


def size_yolo_records(source: DetectionSource) -> list[DataProblem]:
    """Read every image header so the boxes are in pixels (rect batches and the evaluation ground truth need them).

    load_yolo_txt calls this, so a record with an unreadable header is dropped (error-level problem, under the one
    bad-sample policy of load_source) before any dataset or ground truth is built from the source; they then always
    hold the same images. Already sized records are left alone, so later calls find nothing and return [].
    """
    problems: list[DataProblem] = []
    kept: list[ImageRecord] = []
    # disable=None: a bar on a terminal only, nothing in batch-job logs.
    for record in tqdm(source.records, desc=f"reading image sizes ({source.location})", unit="img", disable=None,
                       leave=False):
        if record.width is not None:
            kept.append(record)
            continue
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
    source.records = kept
    source.problems.extend(problems)
    return problems
