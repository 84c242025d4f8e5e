"""Box geometry shared by the head's decode, the assigner and the loss: distance <-> box conversion and CIoU."""
from __future__ import annotations

import math

import torch
from torch import Tensor


def dist2bbox(distance: Tensor, anchor_points: Tensor, xywh: bool = False, dim: int = -1) -> Tensor:
    """Turn (left, top, right, bottom) distances from anchor points into boxes (xyxy, or xywh); the four
    coordinates run along `dim` (-1 in the loss, 1 in the head's `(B, 4, N)` decode)."""
    left_top, right_bottom = distance.chunk(2, dim)
    top_left_corner = anchor_points - left_top
    bottom_right_corner = anchor_points + right_bottom
    if xywh:
        return torch.cat(((top_left_corner + bottom_right_corner) / 2, bottom_right_corner - top_left_corner), dim)
    return torch.cat((top_left_corner, bottom_right_corner), dim)


def bbox2dist(anchor_points: Tensor, bbox: Tensor, max_dist: float) -> Tensor:
    """Inverse of `dist2bbox` for xyxy boxes, clamped to [0, max_dist] so it indexes a DFL bin pair."""
    top_left_corner, bottom_right_corner = bbox.chunk(2, -1)
    distance = torch.cat((anchor_points - top_left_corner, bottom_right_corner - anchor_points), -1)
    return distance.clamp(0, max_dist)


def ciou(box1: Tensor, box2: Tensor, eps: float = 1e-7) -> Tensor:
    """Complete IoU of xyxy boxes, broadcasting over leading dims; returns shape `broadcast(...)` (no last dim).

    Written here instead of torchvision's `complete_box_iou[_loss]` because the assigner needs it broadcast
    over (B, n_gt, 1) x (B, 1, A) without a per-image loop, with the aspect term computed on the
    un-broadcast inputs, and with the reference's eps placement (eps added to heights, the union and the
    enclosing diagonal). The aspect trade-off weight `alpha` carries no gradient, as in the CIoU paper.
    """
    b1_x1, b1_y1, b1_x2, b1_y2 = box1.unbind(-1)
    b2_x1, b2_y1, b2_x2, b2_y2 = box2.unbind(-1)
    w1, h1 = b1_x2 - b1_x1, b1_y2 - b1_y1 + eps
    w2, h2 = b2_x2 - b2_x1, b2_y2 - b2_y1 + eps

    inter_w = (torch.minimum(b1_x2, b2_x2) - torch.maximum(b1_x1, b2_x1)).clamp(min=0)
    inter_h = (torch.minimum(b1_y2, b2_y2) - torch.maximum(b1_y1, b2_y1)).clamp(min=0)
    inter = inter_w * inter_h
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union

    enclose_w = torch.maximum(b1_x2, b2_x2) - torch.minimum(b1_x1, b2_x1)
    enclose_h = torch.maximum(b1_y2, b2_y2) - torch.minimum(b1_y1, b2_y1)
    diagonal_sq = enclose_w.square() + enclose_h.square() + eps
    centre_dist_sq = ((b2_x1 + b2_x2 - b1_x1 - b1_x2).square() + (b2_y1 + b2_y2 - b1_y1 - b1_y2).square()) / 4

    aspect = (4 / math.pi**2) * (torch.atan(w2 / h2) - torch.atan(w1 / h1)).square()
    with torch.no_grad():
        alpha = aspect / (aspect - iou + (1 + eps))
    return iou - (centre_dist_sq / diagonal_sq + aspect * alpha)
