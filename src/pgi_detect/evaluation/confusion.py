"""Detection confusion matrix with a background row and column.

Matching rule: detections scoring at least `conf` (0.25) are matched to ground-truth boxes regardless of class, by
COCO's greedy rule (`matching.match_detections`, highest score first, each detection takes the unmatched box it
overlaps most with IoU >= `iou`, 0.45) — the thresholds of the official val.py's confusion matrix; its own matcher
pairs boxes in IoU order instead of score order. A matched pair counts in (predicted class, true class); an unmatched
ground-truth box in (background, true class), a missed object; an unmatched detection in (predicted class,
background), a false alarm. Detections inside crowd regions and crowd regions themselves are left out, as in COCO
scoring.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pgi_detect.evaluation.matching import match_detections

CONF_THRESHOLD = 0.25
IOU_THRESHOLD = 0.45


@dataclass
class ConfusionMatrix:
    """counts (C + 1, C + 1): rows are the predicted class, columns the true class, index C is background."""

    counts: np.ndarray
    conf_threshold: float
    iou_threshold: float

    def normalised(self) -> np.ndarray:
        """Each true-class column divided by its total (the fraction of that class's objects predicted as each
        class or missed); the background column by its own total (how false alarms spread over classes). Empty
        columns are NaN."""
        totals = self.counts.sum(axis=0, keepdims=True).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(totals > 0, self.counts / totals, np.nan)


def confusion_matrix(
    gt: Any,
    detections: Sequence[dict],
    image_ids: Iterable[int],
    category_ids: Sequence[int],
    conf: float = CONF_THRESHOLD,
    iou: float = IOU_THRESHOLD,
) -> ConfusionMatrix:
    """The confusion matrix of COCO result dicts on `image_ids`; `category_ids[i]` is the category of class index i
    (detections and boxes of other categories are left out). `gt` as `match_detections` takes it."""
    confident = [d for d in detections if float(d["score"]) >= conf]
    # every confident detection takes part: the cap is the largest count on one image (COCOeval sizes its arrays by
    # maxDets, so no "infinite" cap)
    per_image = max(Counter(int(d["image_id"]) for d in confident).values(), default=1)
    matches = match_detections(gt, confident, image_ids, iou, by_category=False, max_dets=per_image)
    size = len(category_ids)
    index = {int(c): i for i, c in enumerate(category_ids)}
    det_class = np.array([index.get(int(c), -1) for c in matches.det_category], dtype=np.int64)
    gt_class = np.array([index.get(int(c), -1) for c in matches.gt_category], dtype=np.int64)
    counts = np.zeros((size + 1, size + 1), dtype=np.int64)
    matched = matches.det_gt >= 0
    pairs = matched & (det_class >= 0)
    if pairs.any():
        pairs &= gt_class[np.where(matched, matches.det_gt, 0)] >= 0
    np.add.at(counts, (det_class[pairs], gt_class[matches.det_gt[pairs]]), 1)
    false_alarms = ~matched & ~matches.det_ignored & (det_class >= 0)
    np.add.at(counts, (det_class[false_alarms], size), 1)
    missed = ~matches.gt_matched & ~matches.gt_crowd & (gt_class >= 0)
    np.add.at(counts, (size, gt_class[missed]), 1)
    return ConfusionMatrix(counts, conf, iou)
