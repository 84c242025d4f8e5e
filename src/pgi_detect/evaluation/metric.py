"""`CocoDetectionMetric`: COCO box mAP as a torchmetrics `Metric`, so that torchmetrics gathers the detections of
every rank and each image is scored once.

Why not torchmetrics' own `MeanAveragePrecision` (measured with its faster-coco-eval backend by
scripts/compare_torchmetrics_map.py, docs/evaluation.md): fed each image's COCO ground truth with its `iscrowd` and
`area` and the dataset category ids as labels, it equals pycocotools (1.5e-8 on coco128) only once its IoU and recall
thresholds are passed as COCO's float64 values (its defaults are float32, e.g. 0.6000000238, which moves AP by
5e-4); but it has no image ids, so the images a DistributedSampler repeats to pad the ranks are scored twice (AP off
by 1.5e-3 with 5 ranks on coco128), and it wants the ground truth with every update, while our batches carry
letterboxed training targets without the crowd regions and segmentation areas that COCO scoring uses. This metric
keeps the dataset's own COCO ground truth, drops repeated images, and scores with `score_detections`, which the
tests prove equal to pycocotools.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from pgi_detect.evaluation.coco_eval import Backend, PrecisionArrays, rows_to_coco, score_detections

ROW_WIDTH = 6  # [x1, y1, x2, y2, score, class]


@dataclass
class CocoEvaluation:
    """What one evaluation scored and found: the 12 COCO statistics (`AP`, `AP50`, ... `ARl`), the COCO result
    records that were scored (dataset image and category ids), the image ids, and the evaluator's accumulated
    precision arrays (per-class AP and PR curves; None when nothing was scored)."""

    stats: dict[str, float]
    detections: list[dict]
    image_ids: list[int]
    arrays: PrecisionArrays | None = None
    undefined: tuple[str, ...] = ()  # statistics COCO cannot define on this ground truth (CocoScores.undefined)


class CocoDetectionMetric(Metric):
    """Accumulates per-image detection rows (original pixels) and scores them against a COCO ground truth.

    `update(detections, image_ids)`: one `(n, 6)` tensor per image. Set `ground_truth` (a COCO object or dict) and
    `category_ids` (class index -> dataset category id) before `compute()`, which returns a `CocoEvaluation` of all
    ranks' detections, each image once. Under torch.distributed only global rank 0 scores them (COCO evaluation is
    CPU-heavy, and every rank would compute the same numbers); the others get the image ids and empty `stats`, and
    the caller broadcasts rank 0's `stats`.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, backend: Backend = "faster", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.backend = backend
        self.ground_truth: Any = None
        self.category_ids: list[int] | None = None
        # Flat 1-D states (rows are (n, 6) flattened) so that ranks with different counts gather cleanly.
        self.add_state("image_ids", default=[], dist_reduce_fx="cat")
        self.add_state("row_counts", default=[], dist_reduce_fx="cat")
        self.add_state("rows", default=[], dist_reduce_fx="cat")

    def update(self, detections: Sequence[Tensor], image_ids: Tensor) -> None:
        self.image_ids.append(torch.as_tensor(image_ids, device=self.device).reshape(-1).long())
        self.row_counts.append(torch.tensor([len(d) for d in detections], device=self.device, dtype=torch.long))
        rows = torch.cat([d.detach().float().reshape(-1, ROW_WIDTH) for d in detections]) if detections else None
        self.rows.append(rows.reshape(-1).to(self.device) if rows is not None else torch.zeros(0, device=self.device))

    def per_image_rows(self) -> dict[int, np.ndarray]:
        """{image id: (n, 6) rows}, each image once: the first copy wins (DistributedSampler and the rect sampler
        repeat images so that all ranks take the same number of steps)."""
        image_ids, counts = _concatenated(self.image_ids).tolist(), _concatenated(self.row_counts).tolist()
        rows = _concatenated(self.rows).reshape(-1, ROW_WIDTH).cpu().numpy()
        per_image: dict[int, np.ndarray] = {}
        for image_id, part in zip(image_ids, np.split(rows, np.cumsum(counts)[:-1]) if counts else []):
            per_image.setdefault(int(image_id), part)
        return per_image

    def compute(self) -> CocoEvaluation:
        if self.ground_truth is None:
            raise RuntimeError("CocoDetectionMetric needs its ground_truth set before compute()")
        per_image = self.per_image_rows()
        if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
            return CocoEvaluation({}, [], sorted(per_image))
        detections = rows_to_coco(per_image, self.category_ids)
        scores = score_detections(self.ground_truth, detections, self.backend, image_ids=per_image.keys())
        return CocoEvaluation(scores.stats, detections, sorted(per_image), scores.arrays, scores.undefined)


def _concatenated(state: list[Tensor] | Tensor) -> Tensor:
    """A list state as one tensor: a list before synchronisation, already one tensor after it."""
    if isinstance(state, Tensor):
        return state
    return dim_zero_cat(state) if state else torch.zeros(0)
