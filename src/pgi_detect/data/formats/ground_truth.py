"""COCO-format ground truth of a parsed dataset, for evaluation."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pgi_detect.data.formats.coco_json import read_json
from pgi_detect.data.records import DetectionSource
from pgi_detect.evaluation import index_coco


def ground_truth_dict(source: DetectionSource) -> dict[str, Any]:
    """COCO-format ground truth. COCO JSON: the original file (crowd annotations included, evaluation ignores them;
    read again here, since loading keeps only the index), restricted to the usable images. YOLO txt: built from the
    records, boxes in original pixels, category id = class index, image id = dataset image id, `area` = the polygon's
    area for polygon labels and the box area for box labels (COCO's size buckets use `area`)."""
    table = source.records
    image_ids = set(table.image_ids[table.rows].tolist() if table.rows is not None else table.image_ids.tolist())
    if source.format == "coco":
        data = read_json(Path(source.location))
        return {
            "info": data.get("info", {}), "licenses": data.get("licenses", []),
            "images": [im for im in data["images"] if im["id"] in image_ids],
            "annotations": [a for a in data["annotations"] if isinstance(a, dict) and a.get("image_id") in image_ids],
            "categories": data["categories"],
        }
    images, annotations = [], []
    for position, record in enumerate(table):
        images.append({"id": record.image_id, "file_name": record.path.name, "width": record.width,
                       "height": record.height})
        areas = table.object_areas(position).tolist()
        for box, cls, area in zip(record.boxes.tolist(), record.classes.tolist(), areas):
            w, h = box[2] - box[0], box[3] - box[1]
            annotations.append({"id": len(annotations) + 1, "image_id": record.image_id, "category_id": int(cls),
                                "bbox": [box[0], box[1], w, h], "area": area, "iscrowd": 0})
    categories = [{"id": cid, "name": name} for cid, name in zip(source.category_ids, source.class_names)]
    return {"info": {}, "licenses": [], "images": images, "annotations": annotations, "categories": categories}


def ground_truth_coco(source: DetectionSource) -> Any:
    """ground_truth_dict as an indexed pycocotools COCO object."""
    return index_coco(ground_truth_dict(source))
