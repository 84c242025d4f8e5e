"""COCO JSON annotations → DetectionSource.

Category ids are mapped to contiguous indices in sorted-id order (`category_ids[index]` maps back for evaluation).
iscrowd annotations are not training targets (they stay in the ground truth returned by `DetectionDataModule.ground_truth()`, where COCOeval
treats them as ignore regions). Images without annotations are kept as negatives. Boxes come from the JSON `bbox`.

With `segments=True` the polygon `segmentation` of each non-crowd annotation is kept as the object's segment (an
object made of several polygons gets them joined by zero-width bridges, records.merge_polygons; an RLE or missing
segmentation gets the box rectangle). Images without any polygon carry no segments.
"""
from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pgi_detect.data.problems import DataError, DataProblem
from pgi_detect.data.records import (DetectionSource, ImageRecord, box_polygon, clip_boxes_to_image, empty_boxes, merge_polygons,
                      pack_segments, report_box_repairs)


def annotation_polygon(segmentation: Any) -> np.ndarray | None:
    """The object's polygon from a COCO `segmentation` polygon list (parts joined); None for RLE / missing / invalid."""
    if not isinstance(segmentation, list):
        return None
    parts = []
    for part in segmentation:
        if (isinstance(part, (list, tuple)) and len(part) >= 6 and len(part) % 2 == 0
                and all(isinstance(v, (int, float)) for v in part)):
            polygon = np.asarray(part, np.float32).reshape(-1, 2)
            if np.all(np.isfinite(polygon)):
                parts.append(polygon)
    return merge_polygons(parts) if parts else None


def read_json(path: Path) -> Any:
    """Parse a JSON file; the error names the file, line and column."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: annotation file not found") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None


def guess_coco_images_dir(annotation_file: Path) -> Path | None:
    """`.../annotations/instances_train2017.json` → `.../images/train2017` or `.../train2017` when present."""
    split = annotation_file.stem.split("_", 1)[-1]
    root = annotation_file.parent.parent
    for candidate in (root / "images" / split, root / split, root / "images"):
        if candidate.is_dir():
            return candidate
    return None


def _require_list(data: dict, key: str, path: Path) -> list:
    value = data.get(key)
    if not isinstance(value, list):
        raise DataError(f"{path}: not a COCO detection file: top-level '{key}' list is missing")
    return value


@dataclass
class ImageObjects:
    """The usable (non-crowd) annotations of one image, in file order: xyxy boxes, class indices, polygons."""

    boxes: list[list[float]] = field(default_factory=list)
    classes: list[int] = field(default_factory=list)
    polygons: list[np.ndarray | None] = field(default_factory=list)


def load_coco_json(annotation_file: str | Path, images_dir: str | Path | None = None,
                   segments: bool = True) -> DetectionSource:
    """Parse a COCO JSON file. Structural errors raise DataError; per-image/annotation problems are collected.

    segments=False skips the polygons (less memory; copy-paste and segment-aware warping then do not run)."""
    annotation_file = Path(annotation_file)
    data = read_json(annotation_file)
    if not isinstance(data, dict):
        raise DataError(f"{annotation_file}: not a COCO detection file: top level is not an object")
    images = _require_list(data, "images", annotation_file)
    annotations = _require_list(data, "annotations", annotation_file)
    categories = _require_list(data, "categories", annotation_file)
    if images_dir is None:
        images_dir = guess_coco_images_dir(annotation_file)
        if images_dir is None:
            raise DataError(f"{annotation_file}: cannot find the images folder; pass the images path explicitly")
    category_ids, class_names = parse_categories(categories, annotation_file)
    image_info = parse_images(images, annotation_file)
    problems: list[DataProblem] = []
    objects, bad_images = collect_objects(annotations, image_info, {c: i for i, c in enumerate(category_ids)},
                                          str(annotation_file), segments, problems)
    records = build_records(image_info, objects, bad_images, Path(images_dir), problems)
    return DetectionSource(format="coco", location=str(annotation_file), records=records, class_names=class_names,
                           category_ids=category_ids, problems=problems, coco_dict=data)


def parse_categories(categories: list, annotation_file: Path) -> tuple[list[int], list[str]]:
    """(sorted category ids, their names): class index i is the i-th smallest id."""
    try:
        category_ids = sorted(int(c["id"]) for c in categories)
        names_by_id = {int(c["id"]): str(c.get("name", c["id"])) for c in categories}
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{annotation_file}: every category needs an integer 'id'") from None
    if len(set(category_ids)) != len(category_ids):
        raise DataError(f"{annotation_file}: duplicate category ids")
    return category_ids, [names_by_id[c] for c in category_ids]


def parse_images(images: list, annotation_file: Path) -> dict[int, dict]:
    """{image id: {file_name, width, height}}; a malformed or duplicate entry is a structural error."""
    image_info: dict[int, dict] = {}
    for entry in images:
        try:
            image_id, file_name = int(entry["id"]), str(entry["file_name"])
            width, height = int(entry["width"]), int(entry["height"])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{annotation_file}: image entry needs id, file_name, width, height: {entry!r:.200}") from None
        if image_id in image_info:
            raise DataError(f"{annotation_file}: duplicate image id {image_id}")
        image_info[image_id] = {"file_name": file_name, "width": width, "height": height}
    return image_info


def collect_objects(annotations: list, image_info: dict[int, dict], index_of_category: dict[int, int], where: str,
                    segments: bool, problems: list[DataProblem]) -> tuple[dict[int, ImageObjects], set[int]]:
    """Group the usable annotations by image. Crowd annotations are skipped (evaluation ignores them); an annotation
    with an unknown image is reported; one with an unknown category or an invalid bbox makes its image unusable."""
    objects: dict[int, ImageObjects] = defaultdict(ImageObjects)
    bad_images: set[int] = set()
    for ann in annotations:
        ann_id = ann.get("id", "?")
        image_id = ann.get("image_id")
        if image_id not in image_info:
            problems.append(DataProblem(where, f"annotation {ann_id} references unknown image id {image_id}",
                                        "unknown_image"))
            continue
        if ann.get("iscrowd", 0):
            continue
        file = f"{where} [{image_info[image_id]['file_name']}]"
        category = ann.get("category_id")
        if category not in index_of_category:
            problems.append(DataProblem(file, f"annotation {ann_id} has unknown category id {category}",
                                        "unknown_category"))
            bad_images.add(image_id)
            continue
        bbox = ann.get("bbox")
        if (not isinstance(bbox, (list, tuple)) or len(bbox) != 4
                or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox)):
            problems.append(DataProblem(file, f"annotation {ann_id} has an invalid bbox {bbox!r}", "invalid_box"))
            bad_images.add(image_id)
            continue
        x, y, w, h = (float(v) for v in bbox)
        found = objects[image_id]
        found.boxes.append([x, y, x + w, y + h])
        found.classes.append(index_of_category[category])
        if segments:
            found.polygons.append(annotation_polygon(ann.get("segmentation")))
    return objects, bad_images


def build_records(image_info: dict[int, dict], objects: dict[int, ImageObjects], bad_images: set[int],
                  images_dir: Path, problems: list[DataProblem]) -> list[ImageRecord]:
    """One record per usable image: boxes clipped to the image (repairs reported), polygons packed."""
    records: list[ImageRecord] = []
    for image_id, info in image_info.items():
        path = images_dir / info["file_name"]
        if not os.path.exists(path):
            problems.append(DataProblem(str(path), "image file not found", "missing_image"))
            continue
        if image_id in bad_images:
            continue
        boxes, classes = empty_boxes()
        found = objects.get(image_id)
        keep = np.zeros(0, bool)
        if found is not None and found.boxes:
            raw = np.asarray(found.boxes, np.float32)
            boxes, keep, clipped = clip_boxes_to_image(raw, info["width"], info["height"])
            report_box_repairs(problems, str(path), raw, keep, clipped)
            boxes, classes = boxes[keep], np.asarray(found.classes, np.int64)[keep]
        record = ImageRecord(path, image_id, boxes, classes, info["width"], info["height"])
        if found is not None and any(p is not None for p in found.polygons):
            limits = np.asarray([info["width"], info["height"]], np.float32)
            kept = [p for p, k in zip(found.polygons, keep) if k]
            kept = [box_polygon(b) if p is None else p.clip(0, limits) for p, b in zip(kept, boxes)]
            record.segment_points, record.segment_offsets = pack_segments(kept)
        records.append(record)
    return records
