"""Non-maximum suppression of decoded predictions with the reference's semantics, and its named settings."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from typing import ClassVar

import torch
from torch import Tensor

from pgi_detect.settings import AT_LEAST_ONE, PROBABILITY, Range, check_ranges


@dataclass(frozen=True)
class NMSSettings:
    """A named NMS configuration. It is a mapping, so `non_max_suppression(pred, **NMS_EVAL)` works, and
    `dataclasses.replace(NMS_EVAL, max_det=100)` derives a variant."""

    conf_thres: float
    iou_thres: float
    multi_label: bool
    max_det: int
    RANGES: ClassVar[dict[str, Range]] = {"conf_thres": PROBABILITY, "iou_thres": PROBABILITY, "max_det": AT_LEAST_ONE}

    def __post_init__(self) -> None:
        check_ranges(self, self.RANGES)

    def keys(self) -> Iterator[str]:
        return (f.name for f in fields(self))

    def __getitem__(self, key: str) -> float | bool | int:
        return getattr(self, key)


# COCO evaluation (val.py --conf 0.001 --iou 0.7); multi-label is switched off automatically when nc == 1.
NMS_EVAL = NMSSettings(conf_thres=0.001, iou_thres=0.7, multi_label=True, max_det=300)
# Visual detection (detect.py thresholds). detect.py itself keeps up to 1000 boxes; 300 is what the golden used.
NMS_DETECT = NMSSettings(conf_thres=0.25, iou_thres=0.45, multi_label=False, max_det=300)


def _candidates(image_pred: Tensor, conf_thres: float, multi_label: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(xyxy boxes, scores, classes) of one image's `(N, 4 + nc)` predictions above `conf_thres`: one row per
    (box, class) pair when multi-label, else one row per box with its best class."""
    from torchvision.ops import box_convert  # on first use: importing torchvision.ops costs ~1.5 s (torch._dynamo)

    class_scores = image_pred[:, 4:]
    if multi_label:
        image_pred = image_pred[class_scores.amax(1) > conf_thres]  # cheap row prefilter before the pair search
        boxes = box_convert(image_pred[:, :4], "cxcywh", "xyxy")
        box_index, classes = (image_pred[:, 4:] > conf_thres).nonzero(as_tuple=True)
        return boxes[box_index], image_pred[box_index, 4 + classes], classes
    scores, classes = class_scores.max(1)
    keep = scores > conf_thres  # the best score is the only filter in single-label mode
    return box_convert(image_pred[keep, :4], "cxcywh", "xyxy"), scores[keep], classes[keep]


def non_max_suppression(
    pred: Tensor,
    conf_thres: float,
    iou_thres: float,
    multi_label: bool,
    max_det: int,
    classes: Sequence[int] | None = None,
    max_nms: int = 30000,
) -> list[Tensor]:
    """Per-class NMS of decoded predictions `(B, 4 + nc, N)` (xywh pixels + class probabilities).

    Returns one `(n, 6)` tensor per image, rows `[x1, y1, x2, y2, score, class]`, by decreasing score. Like the
    reference: anchors whose best score is <= conf are dropped first, the candidates are sorted by score and
    capped at `max_nms`, NMS runs per class, and the first `max_det` survivors are kept. No time limit.
    """
    from torchvision.ops import batched_nms  # on first use (see _candidates)

    num_classes = pred.shape[1] - 4
    multi_label = multi_label and num_classes > 1
    wanted_classes = None if classes is None else torch.as_tensor(classes, device=pred.device)
    outputs = []
    for image_pred in pred.transpose(1, 2):  # (N, 4 + nc); per-image candidate counts differ
        boxes, scores, labels = _candidates(image_pred, conf_thres, multi_label)
        if wanted_classes is not None:
            keep = torch.isin(labels, wanted_classes)
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        order = scores.argsort(descending=True, stable=True)[:max_nms]
        boxes, scores, labels = boxes[order], scores[order], labels[order]
        keep = batched_nms(boxes, scores, labels, iou_thres)[:max_det]
        outputs.append(torch.cat((boxes[keep], scores[keep, None], labels[keep, None].to(boxes.dtype)), 1))
    return outputs
