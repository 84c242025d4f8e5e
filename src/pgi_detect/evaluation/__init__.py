"""COCO box-mAP scoring (faster-coco-eval or pycocotools); no Lightning here."""
from pgi_detect.evaluation.coco_eval import (
    STAT_NAMES,
    CocoScores,
    PrecisionArrays,
    coco_dataset_dict,
    evaluate_detections,
    fitness,
    index_coco,
    predictions_to_coco,
    rows_to_coco,
    score_detections,
    write_detections_json,
)
from pgi_detect.evaluation.metric import CocoDetectionMetric, CocoEvaluation

__all__ = [
    "CocoDetectionMetric",
    "CocoEvaluation",
    "CocoScores",
    "PrecisionArrays",
    "STAT_NAMES",
    "coco_dataset_dict",
    "evaluate_detections",
    "fitness",
    "index_coco",
    "predictions_to_coco",
    "rows_to_coco",
    "score_detections",
    "write_detections_json",
]
