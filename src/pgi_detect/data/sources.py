"""Format detection, loading with the bad-input policy, and COCO ground truth for evaluation."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from ..evaluation.coco_eval import index_coco
from .coco_json import load_coco_json
from .problems import DataError, enforce_policy
from .records import DetectionSource
from .yolo_txt import load_yolo_txt

DataFormat = Literal["auto", "coco", "yolo"]


def detect_format(path: str | Path, format: str = "auto") -> str:
    """'coco' for a .json file, 'yolo' for a folder; an explicit format is checked against the path."""
    path = Path(path)
    if format not in ("auto", "coco", "yolo"):
        raise ValueError(f"format must be 'auto', 'coco' or 'yolo', got {format!r}")
    if not path.exists():
        raise DataError(f"{path}: dataset path not found")
    if format == "auto":
        if path.is_file() and path.suffix.lower() == ".json":
            return "coco"
        if path.is_dir():
            return "yolo"
        raise DataError(f"{path}: cannot tell the format: expected a COCO .json file or a YOLO dataset folder")
    return format


def read_source(path: str | Path, images: str | Path | None = None, format: str = "auto",
                class_names: list[str] | None = None, segments: bool = True) -> DetectionSource:
    """Parse a dataset without applying the bad-input policy (check-data uses this to list every problem).

    segments=False does not keep polygon labels (copy-paste / segment-aware warping need them)."""
    if detect_format(path, format) == "coco":
        source = load_coco_json(path, images, segments=segments)
        if class_names is not None:
            if len(class_names) != source.num_classes:
                raise DataError(f"{path}: {source.num_classes} categories but {len(class_names)} class_names given")
            source.class_names = list(class_names)
        return source
    return load_yolo_txt(path, images, class_names, segments=segments)


def load_source(path: str | Path, images: str | Path | None = None, format: str = "auto",
                class_names: list[str] | None = None, on_bad_sample: str = "error",
                segments: bool = True) -> DetectionSource:
    """Parse a dataset and apply the policy: raise on the first bad sample, or log and drop bad samples.

    YOLO image sizes are read while parsing, so the datasets and the ground truth built from one source always
    hold the same images.
    """
    source = read_source(path, images, format, class_names, segments)
    enforce_policy(source.problems, on_bad_sample, source.location)
    if not source.records:
        raise DataError(f"{source.location}: no usable images")
    return source


def ground_truth_dict(source: DetectionSource) -> dict[str, Any]:
    """COCO-format ground truth. COCO JSON: the original file (crowd annotations included, evaluation ignores them),
    restricted to the usable images. YOLO txt: built from the records, boxes in original pixels, category id = class
    index, image id = dataset image id."""
    image_ids = {r.image_id for r in source.records}
    if source.coco_dict is not None:
        data = source.coco_dict
        return {
            "info": data.get("info", {}), "licenses": data.get("licenses", []),
            "images": [im for im in data["images"] if im["id"] in image_ids],
            "annotations": [a for a in data["annotations"] if a.get("image_id") in image_ids],
            "categories": data["categories"],
        }
    images, annotations = [], []
    for record in source.records:
        if record.normalized or record.width is None:
            raise ValueError("YOLO records need their image sizes; load them with load_yolo_txt / read_source")
        images.append({"id": record.image_id, "file_name": record.path.name, "width": record.width,
                       "height": record.height})
        for box, cls in zip(record.boxes.tolist(), record.classes.tolist()):
            w, h = box[2] - box[0], box[3] - box[1]
            annotations.append({"id": len(annotations) + 1, "image_id": record.image_id, "category_id": int(cls),
                                "bbox": [box[0], box[1], w, h], "area": w * h, "iscrowd": 0})
    categories = [{"id": cid, "name": name} for cid, name in zip(source.category_ids, source.class_names)]
    return {"info": {}, "licenses": [], "images": images, "annotations": annotations, "categories": categories}


def ground_truth_coco(source: DetectionSource) -> Any:
    """ground_truth_dict as an indexed pycocotools COCO object."""
    return index_coco(ground_truth_dict(source))
