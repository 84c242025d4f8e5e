"""The naive loss oracle: a per-image, per-gt reading of the spec (docs/loss.md) with dense one-hot targets, against
which the vectorised DetectionLoss and TaskAlignedAssigner are tested (and timed by scripts/bench_loss.py)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from pgi_detect.geometry import anchor_grid, bbox2dist, ciou, dist2bbox, map_shapes

TOPK, ALPHA, BETA, EPS = 10, 0.5, 6.0, 1e-9


def naive_assign_image(
    scores: Tensor, pred_boxes: Tensor, anchors: Tensor, gt_labels: Tensor, gt_boxes: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One image, one gt at a time. Returns labels (A,), boxes (A, 4), dense target scores (A, nc), fg (A,)."""
    num_anchors, num_classes = scores.shape
    if gt_boxes.shape[0] == 0:
        return (
            torch.zeros(num_anchors, dtype=torch.long),
            torch.zeros(num_anchors, 4),
            torch.zeros(num_anchors, num_classes),
            torch.zeros(num_anchors, dtype=torch.bool),
        )
    overlaps, metrics, positives = [], [], []
    for label, box in zip(gt_labels.tolist(), gt_boxes):
        overlap = ciou(box, pred_boxes).clamp(min=0)
        metric = scores[:, label] ** ALPHA * overlap**BETA
        inside = torch.cat((anchors - box[:2], box[2:] - anchors), 1).amin(1) > EPS
        positive = torch.zeros(num_anchors, dtype=torch.bool)
        positive[torch.topk(metric * inside, TOPK).indices] = True
        overlaps.append(overlap)
        metrics.append(metric)
        positives.append(positive & inside)
    overlaps, metrics, positives = torch.stack(overlaps), torch.stack(metrics), torch.stack(positives)

    for anchor in (positives.sum(0) > 1).nonzero().flatten().tolist():
        positives[:, anchor] = False
        positives[overlaps[:, anchor].argmax(), anchor] = True

    fg = positives.any(0)
    assigned = positives.to(torch.uint8).argmax(0)
    norm = torch.zeros(num_anchors)
    for metric, overlap, positive in zip(metrics, overlaps, positives):
        masked = metric * positive
        norm = torch.maximum(norm, masked * (overlap * positive).max() / (masked.max() + EPS))
    target_scores = torch.zeros(num_anchors, num_classes)
    labels = gt_labels[assigned]
    target_scores[torch.arange(num_anchors), labels] = norm * fg
    return labels, gt_boxes[assigned], target_scores, fg


def naive_branch_items(
    maps: Sequence[Tensor], targets: Tensor, num_classes: int, strides: Sequence[float], reg_max: int = 16
) -> Tensor:
    """Un-gained (box, cls, dfl) of one branch, image by image."""
    batch_size = maps[0].shape[0]
    height, width = maps[0].shape[2] * strides[0], maps[0].shape[3] * strides[0]
    anchors, stride_col = anchor_grid(map_shapes(maps), strides, dtype=maps[0].dtype)
    bins = torch.arange(reg_max, dtype=torch.float32)
    per_image = []
    for image in range(batch_size):
        flat = torch.cat([m[image].float().reshape(m.shape[1], -1) for m in maps], 1).T  # (A, 64 + nc)
        distribution, logits = flat[:, : 4 * reg_max], flat[:, 4 * reg_max :]
        pred_boxes = dist2bbox(distribution.reshape(-1, 4, reg_max).softmax(-1) @ bins, anchors)
        rows = targets[targets[:, 0] == image]
        cx, cy, w, h = rows[:, 2] * width, rows[:, 3] * height, rows[:, 4] * width, rows[:, 5] * height
        gt_boxes = torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), 1)
        labels, boxes, target_scores, fg = naive_assign_image(
            logits.detach().sigmoid(), pred_boxes.detach() * stride_col, anchors * stride_col, rows[:, 1].long(), gt_boxes
        )
        per_image.append((distribution, logits, pred_boxes, boxes / stride_col, target_scores, fg))

    score_sum = max(sum(item[4].sum() for item in per_image), 1)
    box = cls = dfl = torch.zeros(())
    for distribution, logits, pred_boxes, target_boxes, target_scores, fg in per_image:
        cls = cls + F.binary_cross_entropy_with_logits(logits, target_scores, reduction="sum") / score_sum
        if fg.any():
            weight = target_scores.sum(1)[fg]
            box = box + ((1 - ciou(pred_boxes[fg], target_boxes[fg])) * weight).sum() / score_sum
            target = bbox2dist(anchors[fg], target_boxes[fg], reg_max - 1.01).reshape(-1)
            logits_fg = distribution[fg].reshape(-1, reg_max)
            left = target.long()
            side_loss = F.cross_entropy(logits_fg, left, reduction="none") * (left + 1 - target) + F.cross_entropy(
                logits_fg, left + 1, reduction="none"
            ) * (target - left)
            dfl = dfl + (side_loss.reshape(-1, 4).mean(1) * weight).sum() / score_sum
    return torch.stack((box, cls, dfl))


def naive_detection_loss(
    branches: Sequence[Sequence[Tensor]],
    targets: Tensor,
    num_classes: int,
    strides: Sequence[float] = (8, 16, 32),
    branch_weights: Sequence[float] | None = None,
) -> tuple[Tensor, Tensor]:
    """Same contract as DetectionLoss.__call__, computed image by image."""
    weights = branch_weights or ((1.0,) if len(branches) == 1 else (0.25, 1.0))
    items = sum(w * naive_branch_items(maps, targets, num_classes, strides) for w, maps in zip(weights, branches))
    items = items * torch.tensor([7.5, 0.5, 1.5])
    return items.sum() * branches[0][0].shape[0], items.detach()


def random_batch(
    batch: int, size: int | tuple[int, int], boxes_per_image: int, num_classes: int, branches: int, seed: int = 0
) -> tuple[list[list[Tensor]], Tensor]:
    """Random head maps (requires_grad) and random normalised targets, `boxes_per_image` boxes per image."""
    generator = torch.Generator().manual_seed(seed)
    height, width = (size, size) if isinstance(size, int) else size
    maps = [
        [
            torch.randn(batch, 64 + num_classes, height // s, width // s, generator=generator).requires_grad_()
            for s in (8, 16, 32)
        ]
        for _ in range(branches)
    ]
    n = batch * boxes_per_image
    centre = torch.rand(n, 2, generator=generator) * 0.8 + 0.1
    extent = torch.rand(n, 2, generator=generator) * 0.35 + 0.02
    targets = torch.cat(
        (
            torch.arange(batch).repeat_interleave(boxes_per_image).float()[:, None],
            torch.randint(0, num_classes, (n, 1), generator=generator).float(),
            centre,
            extent,
        ),
        1,
    )
    return maps, targets
