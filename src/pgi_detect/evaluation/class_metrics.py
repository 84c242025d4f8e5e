"""Per-class results of one COCO evaluation: AP and AP50 from COCOeval's accumulated arrays, precision and recall
the way the official val.py reports them, and the precision/recall/F1-confidence curves behind them.

Precision and recall (val.py's definition): at IoU 0.50, each class's precision P(c) and recall R(c) as functions
of the confidence threshold c, on a grid of 1000 thresholds in [0, 1] (linear interpolation between detections, P = 1
and R = 0 above the highest score); F1(c) = 2PR / (P + R); the reported P and R are each class's values at the one
threshold that maximises the mean F1 over classes (smoothed with a moving average over 10 % of the grid). Which
detection is a true positive is COCO's matching (`matching.match_detections`: greedy by score, crowd regions
ignored, 100 detections per image and class), not val.py's own, so P and R agree with the COCO AP beside them.
Only classes with ground truth in the evaluated images are reported, as in val.py.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pgi_detect.evaluation.coco_eval import PrecisionArrays
from pgi_detect.evaluation.matching import DetectionMatches

CONFIDENCE_GRID = np.linspace(0.0, 1.0, 1000)
F1_SMOOTHING = 0.1  # fraction of the grid the mean F1 is averaged over before its maximum is taken
EPS = 1e-16


@dataclass
class ConfidenceCurves:
    """P, R and F1 of each reported class (rows) at each confidence threshold of `confidence` (columns)."""

    confidence: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    best_index: int  # the threshold where the smoothed mean F1 peaks: where the table's P and R are read

    @property
    def best_confidence(self) -> float:
        return float(self.confidence[self.best_index])


@dataclass
class ClassResult:
    """One row of the per-class table (the first row, "all", averages over the classes)."""

    name: str
    images: int
    instances: int
    ap: float
    ap50: float
    precision: float
    recall: float

    def as_dict(self) -> dict[str, object]:
        return {"class": self.name, "images": self.images, "instances": self.instances, "AP50-95": self.ap,
                "AP50": self.ap50, "precision": self.precision, "recall": self.recall}


def moving_average(values: np.ndarray, fraction: float) -> np.ndarray:
    """Box-filter smoothing over `fraction` of the samples (an odd window: 101 of 1000 for 0.1), edges padded with
    the end values."""
    half = int(len(values) * fraction / 2 + 0.5)
    window = 2 * half + 1
    padded = np.concatenate([np.full(half, values[0]), values, np.full(half, values[-1])])
    return np.convolve(padded, np.ones(window) / window, mode="valid")


def confidence_curves(matches: DetectionMatches, category_ids: Sequence[int],
                      grid: np.ndarray = CONFIDENCE_GRID) -> ConfidenceCurves:
    """P/R/F1-confidence curves of the categories `category_ids` (one row each, in that order) from COCO matches at
    IoU 0.50. A category without detections has P = R = 0 everywhere."""
    counted = ~matches.gt_crowd
    precision = np.zeros((len(category_ids), len(grid)))
    recall = np.zeros((len(category_ids), len(grid)))
    for row, category in enumerate(category_ids):
        positives = int(np.count_nonzero(counted & (matches.gt_category == category)))
        chosen = (matches.det_category == category) & ~matches.det_ignored
        if not positives or not chosen.any():
            continue
        order = np.argsort(-matches.det_score[chosen], kind="stable")
        scores = matches.det_score[chosen][order]
        hits = matches.true_positive[chosen][order]
        true_count = np.cumsum(hits)
        class_recall = true_count / positives
        class_precision = true_count / np.arange(1, len(hits) + 1)
        # np.interp needs increasing x: confidence descending -> negate
        recall[row] = np.interp(-grid, -scores, class_recall, left=0.0)
        precision[row] = np.interp(-grid, -scores, class_precision, left=1.0)
    f1 = 2 * precision * recall / (precision + recall + EPS)
    mean_f1 = f1.mean(axis=0) if len(category_ids) else np.zeros(len(grid))
    best = int(np.argmax(moving_average(mean_f1, F1_SMOOTHING)))
    return ConfidenceCurves(grid, precision, recall, f1, best)


def ground_truth_counts(matches: DetectionMatches, category_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(images containing the class, instances) per category of `category_ids`; crowd regions do not count."""
    counted = ~matches.gt_crowd
    images = np.array([len(np.unique(matches.gt_image[counted & (matches.gt_category == c)])) for c in category_ids],
                      dtype=np.int64)
    instances = np.array([int(np.count_nonzero(counted & (matches.gt_category == c))) for c in category_ids],
                         dtype=np.int64)
    return images, instances


def class_table(
    arrays: PrecisionArrays | None,
    curves: ConfidenceCurves,
    category_ids: Sequence[int],
    names: Sequence[str],
    images: np.ndarray,
    instances: np.ndarray,
    num_images: int,
    stats: dict[str, float],
) -> list[ClassResult]:
    """Rows "all" + one per category in `category_ids` (those with ground truth). AP and AP50 are read from the
    accumulated arrays (a category COCO never scored, e.g. with no detections at all, has AP 0); "all" carries the
    COCO statistics and the mean P and R."""
    ap = np.zeros(len(category_ids))
    ap50 = np.zeros(len(category_ids))
    if arrays is not None:
        column = {c: k for k, c in enumerate(arrays.category_ids)}
        every, at_50 = arrays.class_ap(), arrays.class_ap(iou_index=0)
        for row, category in enumerate(category_ids):
            if category in column:
                ap[row] = np.nan_to_num(every[column[category]])
                ap50[row] = np.nan_to_num(at_50[column[category]])
    best = curves.best_index
    precision, recall = curves.precision[:, best], curves.recall[:, best]
    rows = [ClassResult("all", num_images, int(instances.sum()), stats["AP"], stats["AP50"],
                        float(precision.mean()) if len(precision) else 0.0,
                        float(recall.mean()) if len(recall) else 0.0)]
    for row, name in enumerate(names):
        rows.append(ClassResult(str(name), int(images[row]), int(instances[row]), float(ap[row]), float(ap50[row]),
                                float(precision[row]), float(recall[row])))
    return rows


def format_table(rows: Sequence[ClassResult], title: str = "") -> str:
    """The table as aligned text (the layout of val.py's per-class printout)."""
    width = max([len("class")] + [len(row.name) for row in rows])
    header = f"{'class':>{width}} {'images':>8} {'instances':>10} {'AP50-95':>8} {'AP50':>8} {'P':>8} {'R':>8}"
    lines = [title] if title else []
    lines.append(header)
    for row in rows:
        lines.append(f"{row.name:>{width}} {row.images:>8d} {row.instances:>10d} {row.ap:>8.4f} {row.ap50:>8.4f} "
                     f"{row.precision:>8.4f} {row.recall:>8.4f}")
    return "\n".join(lines)
