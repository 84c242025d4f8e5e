"""COCO box-mAP scoring (faster-coco-eval or pycocotools) and the reports built on it; no Lightning here.
(`pgi_detect.evaluation.plots` draws the reports with matplotlib and is imported on its own.)"""
from pgi_detect.lazy_exports import lazy_exports

# Public name -> the module that defines it, imported on first use (the metric pulls in torchmetrics, which users of
# the light parts do not pay for).
_EXPORTS = {
    "STAT_NAMES": "pgi_detect.evaluation.coco_eval",
    "CocoScores": "pgi_detect.evaluation.coco_eval",
    "PrecisionArrays": "pgi_detect.evaluation.coco_eval",
    "coco_dataset_dict": "pgi_detect.evaluation.coco_eval",
    "evaluate_detections": "pgi_detect.evaluation.coco_eval",
    "fitness": "pgi_detect.evaluation.coco_eval",
    "index_coco": "pgi_detect.evaluation.coco_eval",
    "predictions_to_coco": "pgi_detect.evaluation.coco_eval",
    "rows_to_coco": "pgi_detect.evaluation.coco_eval",
    "score_detections": "pgi_detect.evaluation.coco_eval",
    "write_detections_json": "pgi_detect.evaluation.coco_eval",
    "ClassResult": "pgi_detect.evaluation.class_metrics",
    "ConfidenceCurves": "pgi_detect.evaluation.class_metrics",
    "format_table": "pgi_detect.evaluation.class_metrics",
    "ConfusionMatrix": "pgi_detect.evaluation.confusion",
    "confusion_matrix": "pgi_detect.evaluation.confusion",
    "DetectionMatches": "pgi_detect.evaluation.matching",
    "match_detections": "pgi_detect.evaluation.matching",
    "CocoDetectionMetric": "pgi_detect.evaluation.metric",
    "CocoEvaluation": "pgi_detect.evaluation.metric",
    "EvaluationReport": "pgi_detect.evaluation.report",
    "build_report": "pgi_detect.evaluation.report",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
