"""COCO box-mAP scoring (faster-coco-eval or pycocotools) and the reports built on it; no Lightning here.
(`pgi_detect.evaluation.plots` draws the reports with matplotlib and is imported on its own.)"""
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
from pgi_detect.evaluation.class_metrics import ClassResult, ConfidenceCurves, format_table
from pgi_detect.evaluation.confusion import ConfusionMatrix, confusion_matrix
from pgi_detect.evaluation.matching import DetectionMatches, match_detections
from pgi_detect.evaluation.metric import CocoDetectionMetric, CocoEvaluation
from pgi_detect.evaluation.report import EvaluationReport, build_report

__all__ = [
    "ClassResult",
    "CocoDetectionMetric",
    "CocoEvaluation",
    "CocoScores",
    "ConfidenceCurves",
    "ConfusionMatrix",
    "DetectionMatches",
    "EvaluationReport",
    "PrecisionArrays",
    "STAT_NAMES",
    "build_report",
    "coco_dataset_dict",
    "confusion_matrix",
    "evaluate_detections",
    "fitness",
    "format_table",
    "index_coco",
    "match_detections",
    "predictions_to_coco",
    "rows_to_coco",
    "score_detections",
    "write_detections_json",
]
