"""COCO-format ground truth of a parsed dataset, for evaluation."""
from __future__ import annotations

from typing import Any

from pgi_detect.data.records import DetectionSource
from pgi_detect.evaluation import index_coco


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
