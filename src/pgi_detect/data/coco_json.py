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
from pathlib import Path
from typing import Any

import numpy as np

from .problems import DataError, DataProblem
from .records import (DetectionSource, ImageRecord, box_polygon, clip_boxes_to_image, empty_boxes, merge_polygons,
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
    images_dir = Path(images_dir)

    try:
        category_ids = sorted(int(c["id"]) for c in categories)
        names_by_id = {int(c["id"]): str(c.get("name", c["id"])) for c in categories}
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{annotation_file}: every category needs an integer 'id'") from None
    if len(set(category_ids)) != len(category_ids):
        raise DataError(f"{annotation_file}: duplicate category ids")
    index_of_category = {cid: i for i, cid in enumerate(category_ids)}

    problems: list[DataProblem] = []
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

    boxes_by_image: dict[int, list[list[float]]] = defaultdict(list)
    classes_by_image: dict[int, list[int]] = defaultdict(list)
    polygons_by_image: dict[int, list[np.ndarray | None]] = defaultdict(list)
    bad_images: set[int] = set()
    where = str(annotation_file)
    for ann in annotations:
        ann_id = ann.get("id", "?")
        image_id = ann.get("image_id")
        if image_id not in image_info:
            problems.append(DataProblem(where, f"annotation {ann_id} references unknown image id {image_id}", "unknown_image"))
            continue
        if ann.get("iscrowd", 0):
            continue
        info = image_info[image_id]
        category = ann.get("category_id")
        if category not in index_of_category:
            problems.append(DataProblem(
                f"{where} [{info['file_name']}]", f"annotation {ann_id} has unknown category id {category}", "unknown_category"))
            bad_images.add(image_id)
            continue
        bbox = ann.get("bbox")
        if (not isinstance(bbox, (list, tuple)) or len(bbox) != 4
                or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox)):
            problems.append(DataProblem(
                f"{where} [{info['file_name']}]", f"annotation {ann_id} has an invalid bbox {bbox!r}", "invalid_box"))
            bad_images.add(image_id)
            continue
        x, y, w, h = (float(v) for v in bbox)
        boxes_by_image[image_id].append([x, y, x + w, y + h])
        classes_by_image[image_id].append(index_of_category[category])
        if segments:
            polygons_by_image[image_id].append(annotation_polygon(ann.get("segmentation")))

    records: list[ImageRecord] = []
    for image_id, info in image_info.items():
        path = images_dir / info["file_name"]
        if not os.path.exists(path):
            problems.append(DataProblem(str(path), "image file not found", "missing_image"))
            continue
        if image_id in bad_images:
            continue
        boxes, classes = empty_boxes()
        if boxes_by_image.get(image_id):
            raw = np.asarray(boxes_by_image[image_id], np.float32)
            boxes, keep, clipped = clip_boxes_to_image(raw, info["width"], info["height"])
            classes = np.asarray(classes_by_image[image_id], np.int64)
            report_box_repairs(problems, str(path), raw, keep, clipped)
            boxes, classes = boxes[keep], classes[keep]
        record = ImageRecord(path, image_id, boxes, classes, info["width"], info["height"])
        polygons = polygons_by_image.get(image_id)
        if polygons and any(p is not None for p in polygons):
            kept = [p for p, k in zip(polygons, keep) if k]
            limits = np.asarray([info["width"], info["height"]], np.float32)
            kept = [box_polygon(b) if p is None else p.clip(0, limits) for p, b in zip(kept, boxes)]
            record.segment_points, record.segment_offsets = pack_segments(kept)
        records.append(record)

    return DetectionSource(
        format="coco",
        location=str(annotation_file),
        records=records,
        class_names=[names_by_id[c] for c in category_ids],
        category_ids=category_ids,
        problems=problems,
        coco_dict=data,
    )
