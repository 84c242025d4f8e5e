"""COCO box mAP with faster-coco-eval (default) or pycocotools, behind one function.

Both backends get the same plain-dict ground truth and detections, so results are comparable; faster-coco-eval is
the default because it is several times faster on large validation sets (scripts/bench_eval.py).
"""
from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import faster_coco_eval
import numpy as np
import pycocotools.coco
import pycocotools.cocoeval
import torch

Backend = Literal["faster", "pycocotools"]

# Order of COCOeval.stats for iouType='bbox'.
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def coco_dataset_dict(gt: Any) -> dict:
    """The raw annotation dict behind a pycocotools or faster-coco-eval COCO object (or a dict / json path)."""
    if isinstance(gt, dict):
        return gt
    if isinstance(gt, (str, Path)):
        return json.loads(Path(gt).read_text())
    dataset = getattr(gt, "dataset", None)
    if not isinstance(dataset, dict):
        raise TypeError(f"cannot read a COCO annotation dict from {type(gt).__name__}")
    return dataset


def _backend_classes(backend: Backend) -> tuple[type, type]:
    if backend == "faster":
        return faster_coco_eval.COCO, faster_coco_eval.COCOeval_faster
    if backend == "pycocotools":
        return pycocotools.coco.COCO, pycocotools.cocoeval.COCOeval
    raise ValueError(f"unknown COCO evaluation backend {backend!r}; use 'faster' or 'pycocotools'")


def index_coco(gt: Any, coco_cls: type | None = None) -> Any:
    """An indexed COCO object of `coco_cls` (pycocotools by default) over the ground truth `gt`: a COCO object of
    that class whose index covers its annotation dict is used as it is; anything else (the other backend's COCO
    object, an annotation dict, a json path) is indexed from its annotation dict, without the index's prints. Both
    backends' COCO classes accept an empty constructor; a dict need not be written to disk first."""
    coco_cls = coco_cls or pycocotools.coco.COCO
    if isinstance(gt, coco_cls) and _index_covers(gt):
        return gt
    indexed = coco_cls()
    indexed.dataset = coco_dataset_dict(gt)
    with contextlib.redirect_stdout(io.StringIO()):
        indexed.createIndex()
    return indexed


def _index_covers(gt: Any) -> bool:
    """Whether a COCO object's index holds every image and annotation of its dict (not so for an object that was
    never indexed, or whose dict was replaced afterwards)."""
    dataset = gt.dataset
    return len(gt.imgs) == len(dataset.get("images", [])) and len(gt.anns) == len(dataset.get("annotations", []))


@dataclass
class PrecisionArrays:
    """COCOeval's accumulated arrays (`eval['precision']`, `['scores']`, `['recall']`) at area "all" and the largest
    maxDets (100): what per-class AP and the precision-recall curves are read from, so they agree with the logged
    mAP by construction. T IoU thresholds (0.50:0.95), R recall thresholds (0:1, 101), K categories.

    precision (T, R, K): interpolated precision at each recall threshold, -1 for a category without ground truth;
    scores (T, R, K): the confidence at which that recall is reached; recall (T, K): the final recall;
    category_ids (K): the dataset category id of each column.
    """

    precision: np.ndarray
    scores: np.ndarray
    recall: np.ndarray
    iou_thresholds: np.ndarray
    recall_thresholds: np.ndarray
    category_ids: list[int]

    def class_ap(self, iou_index: int | None = None) -> np.ndarray:
        """(K,) AP of each category over all IoU thresholds (or at one), NaN where a category has no ground truth;
        their mean over categories is COCO's AP (AP50 for `iou_index=0`)."""
        values = self.precision if iou_index is None else self.precision[iou_index : iou_index + 1]
        values = values.reshape(-1, values.shape[-1])
        valid = values > -1
        counts = valid.sum(axis=0)
        return np.where(counts > 0, np.where(valid, values, 0.0).sum(axis=0) / np.maximum(counts, 1), np.nan)


@dataclass
class CocoScores:
    """One COCO evaluation: the 12 statistics (`STAT_NAMES`) and the accumulated arrays behind them (None when
    nothing was scored)."""

    stats: dict[str, float]
    arrays: PrecisionArrays | None
    # Statistics COCO cannot define here (pycocotools' -1): no ground truth at all, or none in that area range
    # (`APs` without small objects). They are 0 in `stats`, so checkpoint monitors keep working; reports say so.
    undefined: tuple[str, ...] = ()


def score_detections(
    gt: Any,
    detections: Sequence[dict],
    backend: Backend = "faster",
    image_ids: Iterable[int] | None = None,
) -> CocoScores:
    """Score COCO-format box detections against ground truth: the 12 COCO statistics and the accumulated arrays.

    `gt` is a COCO object of either backend (one of `backend`'s own class is used without indexing it again), an
    annotation dict or a json path. `image_ids` restricts the evaluation to the images actually predicted (like
    val.py does); by default every ground-truth image counts. Detections must use dataset category ids and
    `bbox = [x, y, w, h]` in original image pixels.
    """
    coco_cls, eval_cls = _backend_classes(backend)
    gt_api = index_coco(gt, coco_cls)
    ids = sorted({int(i) for i in image_ids}) if image_ids is not None else sorted(gt_api.getImgIds())
    stats = {name: 0.0 for name in STAT_NAMES}
    if not detections or not ids:
        # Nothing predicted: AP is 0 (pycocotools would crash on an empty result list), unless there is nothing to
        # find either.
        has_truth = any(not a.get("iscrowd", 0) for a in gt_api.loadAnns(gt_api.getAnnIds(imgIds=ids))) if ids else False
        return CocoScores(stats, None, () if has_truth else STAT_NAMES)
    dets = [dict(d) for d in detections]  # loadRes adds keys in place
    with contextlib.redirect_stdout(io.StringIO()):
        dt_api = gt_api.loadRes(dets)
        kwargs = {"print_function": lambda *a, **k: None} if backend == "faster" else {}
        evaluator = eval_cls(gt_api, dt_api, "bbox", **kwargs)
        evaluator.params.imgIds = ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    values = np.asarray(evaluator.stats, dtype=np.float64)[: len(STAT_NAMES)]
    # COCOeval reports -1 for "no ground truth in this area range": 0 for logging, and named as undefined.
    stats = {name: float(max(v, 0.0)) for name, v in zip(STAT_NAMES, values)}
    undefined = tuple(name for name, v in zip(STAT_NAMES, values) if v < 0)
    return CocoScores(stats, _precision_arrays(evaluator), undefined)


def _precision_arrays(evaluator: Any) -> PrecisionArrays:
    """The area-"all", maxDets-100 slice of an accumulated COCOeval of either backend."""
    params = evaluator.params
    area, max_dets = params.areaRngLbl.index("all"), len(params.maxDets) - 1
    return PrecisionArrays(
        precision=np.asarray(evaluator.eval["precision"], dtype=np.float64)[:, :, :, area, max_dets],
        scores=np.asarray(evaluator.eval["scores"], dtype=np.float64)[:, :, :, area, max_dets],
        recall=np.asarray(evaluator.eval["recall"], dtype=np.float64)[:, :, area, max_dets],
        iou_thresholds=np.asarray(params.iouThrs, dtype=np.float64),
        recall_thresholds=np.asarray(params.recThrs, dtype=np.float64),
        category_ids=[int(c) for c in params.catIds],
    )


def evaluate_detections(
    gt: Any,
    detections: Sequence[dict],
    backend: Backend = "faster",
    image_ids: Iterable[int] | None = None,
) -> dict[str, float]:
    """Score COCO-format box detections against ground truth; returns AP, AP50, AP75, APs, APm, APl (+ AR*).
    `score_detections` with the statistics only."""
    return score_detections(gt, detections, backend, image_ids).stats


def rows_to_coco(
    per_image: Mapping[int, np.ndarray | torch.Tensor], category_ids: Sequence[int] | None = None
) -> list[dict]:
    """COCO result dicts from per-image `[x1, y1, x2, y2, score, class, ...]` rows in original pixels.

    bbox = [x, y, w, h] rounded to 3 decimals and score to 5, like the official val.py; `category_ids` maps the
    contiguous class index to the dataset category id (identity when None).
    """
    detections = []
    for image_id, rows in per_image.items():
        values = rows.tolist() if hasattr(rows, "tolist") else list(rows)
        for x1, y1, x2, y2, score, cls, *_ in values:
            index = int(cls)
            detections.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(category_ids[index]) if category_ids is not None else index,
                    "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                    "score": round(score, 5),
                }
            )
    return detections


def predictions_to_coco(
    boxes_xyxy: torch.Tensor,
    scores: torch.Tensor,
    classes: torch.Tensor,
    image_id: int,
    category_ids: Sequence[int] | None = None,
) -> list[dict]:
    """One image's detections (original pixels) as COCO result dicts."""
    rows = torch.cat([boxes_xyxy.float(), scores.float()[:, None], classes.float()[:, None]], dim=1)
    return rows_to_coco({int(image_id): rows.detach().cpu().double()}, category_ids)


def write_detections_json(detections: Sequence[dict], path: str | Path) -> Path:
    """Write COCO results json (dataset category ids), the file format accepted by the COCO evaluation server."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(list(detections)))
    return path


def fitness(metrics: dict[str, float]) -> float:
    """Checkpoint-selection score of the official recipe: 0.1·mAP50 + 0.9·mAP50-95."""
    return 0.1 * metrics["AP50"] + 0.9 * metrics["AP"]
