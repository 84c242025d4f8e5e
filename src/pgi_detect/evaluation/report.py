"""Everything a person reads after an evaluation, computed from what was scored: the per-class table, the
precision-recall and confidence curves and the confusion matrix (plots: `evaluation.plots`; files:
docs/evaluation.md).

Inputs are a `CocoEvaluation` (the scored COCO result records, image ids, statistics and accumulated arrays, which
`CocoDetectionMetric` already gathered from every rank) and the split's COCO ground truth, so nothing is gathered
twice under DDP.
"""
from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pgi_detect.evaluation.class_metrics import (
    ClassResult,
    ConfidenceCurves,
    class_table,
    confidence_curves,
    ground_truth_counts,
)
from pgi_detect.evaluation.confusion import CONF_THRESHOLD, IOU_THRESHOLD, ConfusionMatrix, confusion_matrix
from pgi_detect.evaluation.matching import match_detections, matching_index
from pgi_detect.evaluation.metric import CocoEvaluation

PR_IOU = 0.5  # the IoU of the PR and confidence curves and of the table's P and R (val.py's)
MAX_DETS = 100  # COCOeval's largest maxDets


@dataclass
class EvaluationReport:
    """The per-class table (`rows`, "all" first), the curves of the classes in it (`names`, same order as
    rows[1:]) and the confusion matrix over every class of the model (`matrix_names`, then background)."""

    stage: str
    rows: list[ClassResult]
    names: list[str]
    recall_thresholds: np.ndarray  # (R,) x of the PR curves
    pr_precision: np.ndarray  # (K, R) COCO's interpolated precision at IoU 0.50 of each reported class
    confidence: ConfidenceCurves
    confusion: ConfusionMatrix
    matrix_names: list[str]

    @property
    def ap50(self) -> np.ndarray:
        return np.array([row.ap50 for row in self.rows[1:]])


def class_categories(class_names: Sequence[str] | None, category_ids: Sequence[int] | None,
                     gt_dataset: dict) -> tuple[list[int], list[str]]:
    """(dataset category id, name) of every class index; identity ids and the annotation file's names when the
    model has none."""
    if category_ids is None:
        count = len(class_names) if class_names is not None else max(
            [int(c["id"]) for c in gt_dataset.get("categories", [])] + [-1]) + 1
        category_ids = list(range(count))
    file_names = {int(c["id"]): str(c.get("name", c["id"])) for c in gt_dataset.get("categories", [])}
    names = [str(class_names[i]) if class_names is not None and i < len(class_names)
             else file_names.get(int(c), str(c)) for i, c in enumerate(category_ids)]
    return [int(c) for c in category_ids], names


def build_report(
    evaluation: CocoEvaluation,
    ground_truth: Any,
    stage: str,
    class_names: Sequence[str] | None = None,
    category_ids: Sequence[int] | None = None,
    confusion_conf: float = CONF_THRESHOLD,
    confusion_iou: float = IOU_THRESHOLD,
) -> EvaluationReport:
    """The report of one evaluation; `category_ids[i]` is the dataset category of class index i."""
    gt_api = matching_index(ground_truth)  # indexed once for both matching passes
    all_categories, all_names = class_categories(class_names, category_ids, gt_api.dataset)
    matches = match_detections(gt_api, evaluation.detections, evaluation.image_ids, PR_IOU, max_dets=MAX_DETS)
    images, instances = ground_truth_counts(matches, all_categories)
    present = [i for i, count in enumerate(instances) if count > 0]
    categories = [all_categories[i] for i in present]
    names = [all_names[i] for i in present]
    curves = confidence_curves(matches, categories)
    rows = class_table(evaluation.arrays, curves, categories, names, images[present], instances[present],
                       len(evaluation.image_ids), evaluation.stats)
    recall_thresholds, pr_precision = _pr_curves(evaluation, categories)
    matrix = confusion_matrix(gt_api, evaluation.detections, evaluation.image_ids, all_categories,
                              confusion_conf, confusion_iou)
    return EvaluationReport(stage, rows, names, recall_thresholds, pr_precision, curves, matrix, all_names)


def _pr_curves(evaluation: CocoEvaluation, categories: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """COCO's interpolated precision at IoU 0.50 over its 101 recall thresholds, per category (zeros for one COCO
    did not score): the curve whose mean is AP50."""
    arrays = evaluation.arrays
    if arrays is None:
        thresholds = np.linspace(0.0, 1.0, 101)
        return thresholds, np.zeros((len(categories), len(thresholds)))
    iou_index = int(np.argmin(np.abs(arrays.iou_thresholds - PR_IOU)))
    column = {c: k for k, c in enumerate(arrays.category_ids)}
    curves = np.zeros((len(categories), len(arrays.recall_thresholds)))
    for row, category in enumerate(categories):
        if category in column:
            curves[row] = np.clip(arrays.precision[iou_index, :, column[category]], 0.0, None)
    return arrays.recall_thresholds, curves


def write_class_table_csv(rows: Sequence[ClassResult], path: str | Path) -> Path:
    """The per-class table as CSV (columns class, images, instances, AP50-95, AP50, precision, recall)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0].as_dict()))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: f"{v:.6f}" if isinstance(v, float) else v for k, v in row.as_dict().items()})
    return path


def write_confusion_csv(matrix: ConfusionMatrix, names: Sequence[str], path: str | Path) -> Path:
    """Raw counts; rows predicted class, columns true class, the last of each `background`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = [*names, "background"]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["predicted \\ true", *labels])
        for label, counts in zip(labels, matrix.counts.tolist()):
            writer.writerow([label, *counts])
    return path
