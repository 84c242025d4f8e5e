"""COCO box-mAP scoring (faster-coco-eval or pycocotools); no Lightning here."""
from pgi_detect.evaluation.coco_eval import (
    STAT_NAMES,
    coco_dataset_dict,
    evaluate_detections,
    fitness,
    predictions_to_coco,
    rows_to_coco,
    write_detections_json,
)

__all__ = [
    "STAT_NAMES",
    "coco_dataset_dict",
    "evaluate_detections",
    "fitness",
    "predictions_to_coco",
    "rows_to_coco",
    "write_detections_json",
]
