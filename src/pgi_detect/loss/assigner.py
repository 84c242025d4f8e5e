"""Task-aligned label assignment (TOOD), with the exact semantics of the official YOLOv9 training code.

Reference behaviour (docs/loss.md, spec section 3): overlaps are CIoU clamped at 0; the alignment metric is
`score**alpha * overlap**beta`; candidates are the top-k anchors per gt among those whose centre lies strictly
inside the gt; an anchor claimed by several gts goes to the gt with the highest (unmasked) overlap; there is no
"at least one anchor per gt" step. Everything is batched over (B, n_gt, A); nothing loops over images or boxes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from pgi_detect.geometry import ciou


@dataclass(frozen=True)
class Assignment:
    """Per-anchor targets, kept compact: at most one class is positive per anchor, so its score is a scalar.

    labels (B, A) long, boxes (B, A, 4) xyxy in the units of the gt boxes, scores (B, A) the soft target of the
    assigned class (0 on background), fg_mask (B, A) bool. Background anchors carry the label/box of gt 0 of
    their image (what the reference returns; they never enter the loss).
    """

    labels: Tensor
    boxes: Tensor
    scores: Tensor
    fg_mask: Tensor

    def dense_scores(self, num_classes: int) -> Tensor:
        """The (B, A, num_classes) one-hot-times-score target the reference materialises."""
        dense = self.scores.new_zeros(*self.scores.shape, num_classes)
        return dense.scatter_(-1, self.labels.unsqueeze(-1), self.scores.unsqueeze(-1))


def anchors_inside_boxes(anchor_points: Tensor, gt_boxes: Tensor, eps: float = 1e-9) -> Tensor:
    """(B, n, A) bool: anchor centre strictly inside the gt box (every side distance > eps)."""
    ax, ay = anchor_points[:, 0], anchor_points[:, 1]
    x1, y1, x2, y2 = (side.unsqueeze(-1) for side in gt_boxes.unbind(-1))
    inside = torch.minimum(ax - x1, ay - y1)
    inside = torch.minimum(inside, x2 - ax)
    inside = torch.minimum(inside, y2 - ay)
    return inside > eps


class _Positives(NamedTuple):
    """Positive (image, gt, anchor) pairs with their alignment metric and overlap, as flat index tensors."""

    image: Tensor
    gt: Tensor
    anchor: Tensor
    metric: Tensor
    overlap: Tensor

    def where(self, keep: Tensor) -> _Positives:
        return _Positives(*(field[keep] for field in self))

    def extended(self, other: _Positives) -> _Positives:
        return _Positives(*(torch.cat((a, b)) for a, b in zip(self, other)))


@dataclass(frozen=True)
class _Pairs:
    """The predictions and gts of one assignment, and the alignment metric of any (image, gt, anchor) pairs."""

    pred_scores: Tensor
    pred_boxes: Tensor
    gt_labels: Tensor
    gt_boxes: Tensor
    alpha: float
    beta: float
    scores_are_logits: bool

    def metric(self, image: Tensor, gt: Tensor, anchor: Tensor) -> tuple[Tensor, Tensor]:
        """(score**alpha * overlap**beta, overlap) with overlap the CIoU clamped at 0."""
        overlap = ciou(self.gt_boxes[image, gt], self.pred_boxes[image, anchor]).clamp_(min=0)
        score = self.pred_scores[image, anchor, self.gt_labels[image, gt]]
        if self.scores_are_logits:
            score = score.sigmoid()
        return score.pow(self.alpha) * overlap.pow(self.beta), overlap


class TaskAlignedAssigner:
    """Assign gts to anchors by `score(cls)**alpha * CIoU**beta`. Stateless and gradient-free.

    Memory: only boolean (B, n, A) masks and one float (B, n, A) metric (for top-k) are dense. CIoU and scores
    are evaluated on the (image, gt, anchor) pairs that can matter: anchors inside a gt, plus, for an anchor
    claimed by several gts, its pairs with every gt of its image.
    """

    def __init__(self, topk: int = 10, alpha: float = 0.5, beta: float = 6.0, eps: float = 1e-9) -> None:
        self.topk = topk
        self.alpha = alpha
        self.beta = beta
        self.eps = eps

    @torch.no_grad()
    def __call__(
        self,
        pred_scores: Tensor,
        pred_boxes: Tensor,
        anchor_points: Tensor,
        gt_labels: Tensor,
        gt_boxes: Tensor,
        gt_mask: Tensor,
        scores_are_logits: bool = False,
    ) -> Assignment:
        """Args: pred_scores (B, A, nc) probabilities (or logits with `scores_are_logits`, which saves a sigmoid
        over the whole tensor), pred_boxes (B, A, 4) xyxy, anchor_points (A, 2), gt_labels (B, n) long, gt_boxes
        (B, n, 4) xyxy, gt_mask (B, n) bool for real (non-padding) gts. Boxes and points share one unit system
        (pixels in the reference)."""
        pairs = _Pairs(pred_scores, pred_boxes, gt_labels, gt_boxes, self.alpha, self.beta, scores_are_logits)
        positives = self._top_candidates(pairs, anchor_points, gt_mask)
        positives = self._one_gt_per_anchor(pairs, positives)
        return self._targets(pairs, positives)

    def _top_candidates(self, pairs: _Pairs, anchor_points: Tensor, gt_mask: Tensor) -> _Positives:
        """Each gt's top-k anchors by metric among the anchors whose centre lies inside it."""
        batch_size, num_anchors = pairs.pred_boxes.shape[:2]
        inside = anchors_inside_boxes(anchor_points, pairs.gt_boxes) & gt_mask.unsqueeze(-1)  # (B, n, A)
        image, gt, anchor = inside.nonzero(as_tuple=True)
        metric, overlap = pairs.metric(image, gt, anchor)
        dense_metric = pairs.pred_boxes.new_zeros(batch_size, pairs.gt_boxes.shape[1], num_anchors)
        dense_metric[image, gt, anchor] = metric  # = metric * inside, what top-k ranks (ties included)
        chosen = self._topk_mask(dense_metric)[image, gt, anchor]
        return _Positives(image[chosen], gt[chosen], anchor[chosen], metric[chosen], overlap[chosen])

    @staticmethod
    def _one_gt_per_anchor(pairs: _Pairs, positives: _Positives) -> _Positives:
        """An anchor positive for several gts keeps only the gt of highest overlap among *all* gts of its image,
        even one it is not inside (the reference argmaxes unmasked overlaps)."""
        batch_size, num_anchors = pairs.pred_boxes.shape[:2]
        flat_anchor = positives.image * num_anchors + positives.anchor
        claims = torch.bincount(flat_anchor, minlength=batch_size * num_anchors)
        contested = claims[flat_anchor] > 1
        if not bool(contested.any()):
            return positives
        contested_anchor = (claims > 1).nonzero().squeeze(1)
        image, anchor = contested_anchor // num_anchors, contested_anchor % num_anchors
        all_overlaps = ciou(pairs.gt_boxes[image], pairs.pred_boxes[image, anchor].unsqueeze(1)).clamp_(min=0)
        gt = all_overlaps.argmax(1)
        metric, overlap = pairs.metric(image, gt, anchor)
        return positives.where(~contested).extended(_Positives(image, gt, anchor, metric, overlap))

    def _targets(self, pairs: _Pairs, positives: _Positives) -> Assignment:
        """Soft targets: each gt's metric rescaled so its best positive anchor scores that gt's best positive CIoU;
        background anchors carry gt 0 of their image, like the reference."""
        batch_size, num_anchors = pairs.pred_boxes.shape[:2]
        num_gt = pairs.gt_boxes.shape[1]
        image, gt, anchor, metric, overlap = positives
        flat_gt = image * num_gt + gt
        best_metric = metric.new_zeros(batch_size * num_gt).scatter_reduce_(0, flat_gt, metric, "amax")
        best_overlap = overlap.new_zeros(batch_size * num_gt).scatter_reduce_(0, flat_gt, overlap, "amax")
        soft_score = metric * best_overlap[flat_gt] / (best_metric[flat_gt] + self.eps)

        device = pairs.pred_boxes.device
        fg_mask = torch.zeros(batch_size, num_anchors, dtype=torch.bool, device=device)
        fg_mask[image, anchor] = True
        scores = pairs.pred_boxes.new_zeros(batch_size, num_anchors)
        scores[image, anchor] = soft_score
        assigned_gt = torch.zeros(batch_size, num_anchors, dtype=torch.long, device=device)
        assigned_gt[image, anchor] = gt
        if num_gt == 0:
            labels = assigned_gt
            boxes = pairs.pred_boxes.new_zeros(batch_size, num_anchors, 4)
        else:
            labels = pairs.gt_labels.gather(1, assigned_gt)
            boxes = pairs.gt_boxes.gather(1, assigned_gt.unsqueeze(-1).expand(-1, -1, 4))
        return Assignment(labels=labels, boxes=boxes, scores=scores, fg_mask=fg_mask)

    def _topk_mask(self, metric: Tensor) -> Tensor:
        """(B, n, A) bool marking each gt's top-k anchors by metric (scatter, no (B, n, k, A) one-hot)."""
        k = min(self.topk, metric.shape[-1])
        top_index = metric.topk(k, dim=-1).indices
        mask = torch.zeros_like(metric, dtype=torch.bool)
        return mask.scatter_(-1, top_index, True)
