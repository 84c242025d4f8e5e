"""Which ground-truth box each detection matched, by COCO's own rules, at one IoU threshold.

The per-class precision/recall and the confusion matrix need per-detection match results, which COCOeval's
accumulated arrays do not keep. Rather than a second matching implementation, this runs faster-coco-eval's
COCOeval once more, at a single IoU threshold and area "all", and reads its match pairs (`extra_calc`): greedy by
score, each detection taking the best-overlapping unmatched box, crowd regions matched last and ignored, at most
`max_dets` detections per image (and category). With `by_category=False` classes are ignored while matching (the
confusion matrix). tests/unit/evaluation/test_evaluation_reports.py checks the result against pycocotools' `evalImgs`.
"""
from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import faster_coco_eval
import numpy as np

from pgi_detect.evaluation.coco_eval import index_coco

AREA_ALL = [0.0, 1e10]  # COCOeval's "all" area range


@dataclass
class DetectionMatches:
    """Match results aligned with the detections given and with the ground truth of the evaluated images.

    det_category, det_score (D,): each detection's dataset category id and score; det_gt (D,): index into the
    ground-truth arrays of the box it matched, -1 when unmatched; det_ignored (D,): matched to a crowd region or
    beyond the `max_dets` cap, which COCO counts neither as true nor as false positive. gt_category, gt_crowd (G,):
    every annotation of the evaluated images, crowd regions flagged; gt_image (G,) its image id.
    """

    det_category: np.ndarray
    det_score: np.ndarray
    det_gt: np.ndarray
    det_ignored: np.ndarray
    gt_category: np.ndarray
    gt_crowd: np.ndarray
    gt_image: np.ndarray

    @property
    def true_positive(self) -> np.ndarray:
        return self.det_gt >= 0

    @property
    def gt_matched(self) -> np.ndarray:
        """(G,) whether a detection matched each ground-truth box."""
        matched = np.zeros(len(self.gt_category), dtype=bool)
        matched[self.det_gt[self.det_gt >= 0]] = True
        return matched


def matching_index(gt: Any) -> Any:
    """The faster-coco-eval COCO index `match_detections` works on (`gt` as `index_coco` takes it): build it once
    to match several times."""
    return index_coco(gt, faster_coco_eval.COCO)


def match_detections(
    gt: Any,
    detections: Sequence[dict],
    image_ids: Iterable[int],
    iou_threshold: float,
    by_category: bool = True,
    max_dets: int = 100,
) -> DetectionMatches:
    """COCO matching of `detections` (COCO result dicts, dataset ids) on the images `image_ids` at one IoU threshold.

    `gt`: a `matching_index`, or anything `index_coco` takes. Detections on other images are ignored. `max_dets`
    caps detections per image and category (per image when `by_category` is False), highest scores first, like
    COCOeval's maxDets.
    """
    ids = sorted({int(i) for i in image_ids})
    gt_api = matching_index(gt)
    annotations = gt_api.loadAnns(gt_api.getAnnIds(imgIds=ids))
    wanted = set(ids)
    kept = [d for d in detections if int(d["image_id"]) in wanted]
    det_gt = np.full(len(kept), -1, dtype=np.int64)
    gt_crowd = np.array([bool(a.get("iscrowd", 0)) for a in annotations], dtype=bool)
    det_ignored = _beyond_cap(kept, max_dets, by_category)
    if kept and annotations:
        ann_index = {int(a["id"]): i for i, a in enumerate(annotations)}
        for key in _matched_pairs(gt_api, kept, ids, iou_threshold, by_category, max_dets):
            det_id, gt_id = (int(part) for part in key.split("_", 1))
            index = ann_index[gt_id]
            if gt_crowd[index]:
                det_ignored[det_id - 1] = True  # loadRes numbers detections 1.. in list order
            else:
                det_gt[det_id - 1] = index
    return DetectionMatches(
        det_category=np.array([int(d["category_id"]) for d in kept], dtype=np.int64),
        det_score=np.array([float(d["score"]) for d in kept], dtype=np.float64),
        det_gt=det_gt,
        det_ignored=det_ignored,
        gt_category=np.array([int(a["category_id"]) for a in annotations], dtype=np.int64),
        gt_crowd=gt_crowd,
        gt_image=np.array([int(a["image_id"]) for a in annotations], dtype=np.int64),
    )


def _matched_pairs(gt_api: Any, detections: list[dict], image_ids: list[int], iou_threshold: float,
                   by_category: bool, max_dets: int) -> dict[str, float]:
    """faster-coco-eval's `{"<detection id>_<annotation id>": iou}` at the single threshold given."""
    with contextlib.redirect_stdout(io.StringIO()):
        dt_api = gt_api.loadRes([dict(d) for d in detections])
        evaluator = faster_coco_eval.COCOeval_faster(gt_api, dt_api, "bbox", extra_calc=True,
                                                     print_function=lambda *a, **k: None)
        params = evaluator.params
        params.imgIds = image_ids
        params.iouThrs = np.array([iou_threshold], dtype=np.float64)
        params.areaRng, params.areaRngLbl = [AREA_ALL], ["all"]
        params.maxDets = [max_dets]
        params.useCats = int(by_category)
        evaluator.evaluate()
        evaluator.accumulate()
    return evaluator.eval["matched"]


def _beyond_cap(detections: list[dict], max_dets: int, by_category: bool) -> np.ndarray:
    """(D,) True for detections past the `max_dets` highest scores of their image (and category); ties keep list
    order, as COCOeval's stable sort does."""
    count = len(detections)
    beyond = np.zeros(count, dtype=bool)
    if count <= max_dets:
        return beyond
    images = np.array([int(d["image_id"]) for d in detections])
    categories = np.array([int(d["category_id"]) for d in detections]) if by_category else np.zeros(count, int)
    scores = np.array([float(d["score"]) for d in detections])
    order = np.lexsort((np.arange(count), -scores, categories, images))
    group_start = np.r_[True, (np.diff(images[order]) != 0) | (np.diff(categories[order]) != 0)]
    starts = np.maximum.accumulate(np.where(group_start, np.arange(count), 0))
    beyond[order] = (np.arange(count) - starts) >= max_dets
    return beyond
