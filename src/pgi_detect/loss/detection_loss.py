"""YOLOv9 / GELAN training loss (box CIoU + DFL + BCE) over one or several head branches.

Numerically equal to the official `loss_tal.ComputeLoss` (one branch), `loss_tal_dual.ComputeLoss` (two branches,
[aux, main], each assigned on its own predictions: `assignment="independent"`) and `loss_tal_dual.ComputeLossLH`
(one assignment from the main branch serves both: `assignment="lead"`); see docs/loss.md for the formulas and the
batch-size scaling of the result.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from pgi_detect.geometry import anchor_grid, bbox2dist, ciou, dist2bbox, map_shapes
from pgi_detect.loss.assigner import Assignment, TaskAlignedAssigner

AssignmentMode = Literal["independent", "lead"]
BOX_GAIN = 7.5
CLS_GAIN = 0.5
DFL_GAIN = 1.5


@dataclass(frozen=True)
class PaddedTargets:
    """Targets of a batch, padded per image: labels (B, n) long, boxes (B, n, 4) xyxy pixels, mask (B, n) bool."""

    labels: Tensor
    boxes: Tensor
    mask: Tensor


def loss_dtype(maps: Sequence[Tensor]) -> torch.dtype:
    """The dtype the loss computes in: float32 for float32 and half-precision maps (an autocast forward), float64
    for float64 maps (`64-true`), so a double-precision run stays double through the loss."""
    return torch.promote_types(maps[0].dtype, torch.float32)


def pad_targets(targets: Tensor, batch_size: int, image_size: tuple[float, float],
                dtype: torch.dtype = torch.float32) -> PaddedTargets:
    """Scatter (n, 6) `[img, cls, cx, cy, w, h]` rows (normalised) into per-image padded tensors, in pixels xyxy.

    Rows keep their order within an image. Images with fewer boxes (or none) are padded with zero boxes whose
    mask is False. One vectorised scatter; no loop over images.
    """
    height, width = image_size
    device = targets.device
    image_index = targets[:, 0].long()
    counts = torch.bincount(image_index, minlength=batch_size)
    max_boxes = int(counts.max()) if targets.shape[0] else 0

    order = torch.sort(image_index, stable=True).indices
    sorted_image = image_index[order]
    first_row_of_image = torch.cumsum(counts, 0) - counts
    slot = torch.arange(targets.shape[0], device=device) - first_row_of_image[sorted_image]

    rows = targets[order].to(dtype)
    scale = torch.tensor([width, height, width, height], device=device, dtype=dtype)
    centre_size = rows[:, 2:6] * scale
    boxes_xyxy = torch.cat((centre_size[:, :2] - centre_size[:, 2:] / 2, centre_size[:, :2] + centre_size[:, 2:] / 2), 1)

    labels = torch.zeros(batch_size, max_boxes, dtype=torch.long, device=device)
    boxes = torch.zeros(batch_size, max_boxes, 4, dtype=dtype, device=device)
    mask = torch.zeros(batch_size, max_boxes, dtype=torch.bool, device=device)
    labels[sorted_image, slot] = rows[:, 1].long()
    boxes[sorted_image, slot] = boxes_xyxy
    # The reference marks a gt real when its xyxy coordinates sum > 0 (drops degenerate all-zero rows).
    mask[sorted_image, slot] = boxes_xyxy.sum(1) > 0
    return PaddedTargets(labels=labels, boxes=boxes, mask=mask)


def split_branch(maps: Sequence[Tensor], reg_max: int, num_classes: int) -> tuple[Tensor, Tensor]:
    """Flatten per-level maps (B, 4*reg_max+nc, H, W) into (B, A, 4*reg_max) and (B, A, nc) views in the loss
    dtype."""
    batch_size = maps[0].shape[0]
    flat = torch.cat([m.reshape(batch_size, 4 * reg_max + num_classes, -1) for m in maps], 2).to(loss_dtype(maps))
    distribution, class_logits = flat.split((4 * reg_max, num_classes), 1)
    return distribution.transpose(1, 2), class_logits.transpose(1, 2)


def gather_anchor_rows(maps: Sequence[Tensor], image: Tensor, anchor: Tensor) -> Tensor:
    """All channels of the given (image, flat anchor index) cells in the loss dtype (n, C), read from the maps
    directly so the backward pass writes sparse rows instead of flowing through a full-size concatenation."""
    level_sizes = torch.tensor([m.shape[-2] * m.shape[-1] for m in maps], device=anchor.device)
    level_starts = torch.cumsum(level_sizes, 0) - level_sizes
    level = torch.bucketize(anchor, level_starts[1:], right=True)
    pieces, positions = [], []
    for index, level_map in enumerate(maps):  # a loop over the 3 levels, not over images or boxes
        rows_here = (level == index).nonzero().squeeze(1)
        cell = anchor[rows_here] - level_starts[index]
        pieces.append(level_map.flatten(2)[image[rows_here], :, cell])
        positions.append(rows_here)
    inverse = torch.empty_like(anchor)
    inverse[torch.cat(positions)] = torch.arange(anchor.numel(), device=anchor.device)
    return torch.cat(pieces)[inverse].to(loss_dtype(maps))


def decode_distribution(distribution: Tensor, anchor_points: Tensor, reg_max: int) -> Tensor:
    """Expected ltrb distance of each side's softmax over `reg_max` bins -> xyxy boxes in grid units.

    distribution (..., 4*reg_max), anchor_points broadcastable to (..., 2)."""
    bins = torch.arange(reg_max, device=distribution.device, dtype=distribution.dtype)
    probabilities = distribution.unflatten(-1, (4, reg_max)).softmax(-1)
    return dist2bbox(probabilities @ bins, anchor_points)


def distribution_focal_loss(logits: Tensor, target: Tensor) -> Tensor:
    """DFL: cross-entropy to the two bins around a continuous target, weighted by linear interpolation.

    logits (n, 4, bins), target (n, 4) in [0, bins - 1). Returns (n,): the mean over the four sides.
    """
    log_probs = logits.log_softmax(-1)
    left = target.long()
    right_weight = target - left
    left_weight = 1 - right_weight
    log_left = log_probs.gather(-1, left.unsqueeze(-1)).squeeze(-1)
    log_right = log_probs.gather(-1, (left + 1).unsqueeze(-1)).squeeze(-1)
    return -(log_left * left_weight + log_right * right_weight).mean(-1)


class DetectionLoss:
    """Task-aligned YOLO loss for `[main]` (GELAN) or `[aux, main]` (YOLOv9 PGI) head outputs.

    `__call__` returns `(total * batch_size, items[box, cls, dfl].detach())` with the gains (7.5, 0.5, 1.5)
    already applied to the items. Branches are combined with `branch_weights` (a detector's own:
    `Detector.branch_weights`; default (1,) or (0.25, 1) like the official losses). `assignment="independent"`
    assigns each branch on its own predictions and normalises it by its own target-score sum (clamped to 1);
    `"lead"` assigns once, on the main (last) branch's predictions, and both branches use that assignment and its
    score sum, which the official lead-guided loss does not clamp (here an all-empty batch divides by 1 instead of 0).
    """

    item_names = ("box", "cls", "dfl")  # what the items are, in order (LossResult names them so)

    def __init__(
        self,
        num_classes: int,
        strides: Sequence[float] = (8, 16, 32),
        reg_max: int = 16,
        branch_weights: Sequence[float] | None = None,
        assignment: AssignmentMode = "independent",
    ) -> None:
        if assignment not in ("independent", "lead"):
            raise ValueError(f"assignment={assignment!r}: use 'independent' or 'lead'")
        self.num_classes = num_classes
        self.strides = tuple(float(s) for s in strides)
        self.reg_max = reg_max
        self.branch_weights = None if branch_weights is None else tuple(float(w) for w in branch_weights)
        self.assignment = assignment
        self.assigner = TaskAlignedAssigner(topk=10, alpha=0.5, beta=6.0, eps=1e-9)

    def weights_for(self, num_branches: int) -> tuple[float, ...]:
        if self.branch_weights is not None:
            if len(self.branch_weights) != num_branches:
                raise ValueError(f"{len(self.branch_weights)} branch weights for {num_branches} branches")
            return self.branch_weights
        if num_branches == 1:
            return (1.0,)
        if num_branches == 2:
            return (0.25, 1.0)
        raise ValueError(f"no default branch weights for {num_branches} branches; pass branch_weights")

    def __call__(self, branches: Sequence[Sequence[Tensor]], targets: Tensor) -> tuple[Tensor, Tensor]:
        weights = self.weights_for(len(branches))
        first_maps = branches[0]
        device_type = first_maps[0].device.type
        # The loss is computed in float32 at least, also when the maps come from an autocast forward (loss_dtype).
        dtype = loss_dtype(first_maps)
        with torch.autocast(device_type=device_type, enabled=False):
            batch_size = first_maps[0].shape[0]
            grid_h, grid_w = first_maps[0].shape[-2:]
            image_size = (grid_h * self.strides[0], grid_w * self.strides[0])
            anchor_points, stride_tensor = anchor_grid(map_shapes(first_maps), self.strides, first_maps[0].device,
                                                      dtype)
            anchor_pixels = anchor_points * stride_tensor  # shared by every branch's assignment
            gts = pad_targets(targets.to(first_maps[0].device), batch_size, image_size, dtype)

            items = torch.zeros(3, device=first_maps[0].device, dtype=dtype)
            lead = None
            if self.assignment == "lead":
                lead = self.assign(branches[-1], anchor_points, stride_tensor, gts, anchor_pixels)
            for weight, maps in zip(weights, branches):
                items = items + weight * self.branch_items(maps, anchor_points, stride_tensor, anchor_pixels, gts,
                                                           lead)
            items = torch.stack((items[0] * BOX_GAIN, items[1] * CLS_GAIN, items[2] * DFL_GAIN))
        return items.sum() * batch_size, items.detach()

    def assign(
        self,
        maps: Sequence[Tensor],
        anchor_points: Tensor,
        stride_tensor: Tensor,
        gts: PaddedTargets,
        anchor_pixels: Tensor | None = None,
    ) -> Assignment:
        """Decode one branch (without gradient) and run the assigner on it in pixels; boxes of the returned
        assignment are in pixels. `anchor_pixels` (= anchor_points * stride_tensor) may be passed precomputed."""
        if anchor_pixels is None:
            anchor_pixels = anchor_points * stride_tensor
        with torch.no_grad():
            distribution, class_logits = split_branch([m.detach() for m in maps], self.reg_max, self.num_classes)
            pred_boxes = decode_distribution(distribution, anchor_points, self.reg_max)
        return self.assigner(
            class_logits,
            pred_boxes * stride_tensor,
            anchor_pixels,
            gts.labels,
            gts.boxes,
            gts.mask,
            scores_are_logits=True,
        )

    def branch_items(
        self,
        maps: Sequence[Tensor],
        anchor_points: Tensor,
        stride_tensor: Tensor,
        anchor_pixels: Tensor,
        gts: PaddedTargets,
        lead: Assignment | None = None,
    ) -> Tensor:
        """Un-gained (box, cls, dfl) of one branch, as a (3,) tensor carrying gradients; `lead`: the main branch's
        assignment, used instead of one on this branch's own predictions."""
        if lead is None:
            assignment = self.assign(maps, anchor_points, stride_tensor, gts, anchor_pixels)
            score_sum = assignment.scores.sum().clamp(min=1)
        else:
            assignment, total = lead, lead.scores.sum()
            score_sum = torch.where(total > 0, total, torch.ones_like(total))
        image, anchor = assignment.fg_mask.nonzero(as_tuple=True)
        weight = assignment.scores[image, anchor]
        box_channels = 4 * self.reg_max
        fg_rows = gather_anchor_rows(maps, image, anchor)  # (n_fg, 4*reg_max + nc), with gradient
        fg_distribution = fg_rows[:, :box_channels]

        # BCE-with-logits against a one-hot*score target, without building the (B, A, nc) target:
        # sum(bce) = sum(softplus(x)) - sum over fg anchors of x[assigned class] * score.
        background_term = sum(F.softplus(m[:, box_channels:].to(fg_rows.dtype)).sum() for m in maps)
        assigned_logit = fg_rows[:, box_channels:].gather(1, assignment.labels[image, anchor].unsqueeze(1)).squeeze(1)
        cls_loss = (background_term - (assigned_logit * weight).sum()) / score_sum
        if image.numel() == 0:
            zero = fg_rows.sum()  # sum of an empty gather: an exact 0 that stays in the graph (DDP-friendly)
            return torch.stack((zero, cls_loss, zero))

        # Box terms only touch fg anchors, so they are decoded again, with gradient, for those rows only.
        fg_anchors = anchor_points[anchor]
        pred_boxes = decode_distribution(fg_distribution, fg_anchors, self.reg_max)
        target_boxes = assignment.boxes[image, anchor] / stride_tensor[anchor]  # pixels -> grid units

        box_loss = ((1 - ciou(pred_boxes, target_boxes)) * weight).sum() / score_sum
        target_ltrb = bbox2dist(fg_anchors, target_boxes, self.reg_max - 1 - 0.01)
        fg_logits = fg_distribution.unflatten(-1, (4, self.reg_max))
        dfl_loss = (distribution_focal_loss(fg_logits, target_ltrb) * weight).sum() / score_sum
        return torch.stack((box_loss, cls_loss, dfl_loss))
