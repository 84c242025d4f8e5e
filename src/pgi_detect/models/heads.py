"""Detection heads (DDetect and its dual PGI form) and the decoding of raw maps into boxes and scores.

Heads return a list of branches, each a list of per-level maps `(B, 4*reg_max + nc, H, W)` with the box
distribution channels first; decoding is separate so training never pays for it.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pgi_detect.geometry import dist2bbox
from pgi_detect.models.blocks import Conv

REG_MAX = 16
STRIDES = (8, 16, 32)


def make_divisible(value: float, divisor: int) -> int:
    return int(math.ceil(value / divisor) * divisor)


class DFL(nn.Module):
    """Distribution focal layer: expected bin index of a softmax over `reg_max` bins, per box side.

    The bin values `arange(reg_max)` are a frozen parameter (not a buffer) so parameter counts and official
    state dicts line up (official key `dfl.conv.weight`, shape (1, reg_max, 1, 1)).
    """

    OFFICIAL_NAMES = {"weight": "conv.weight"}

    def __init__(self, reg_max: int = REG_MAX) -> None:
        super().__init__()
        self.reg_max = reg_max
        bins = torch.arange(reg_max, dtype=torch.float32).view(1, reg_max, 1, 1)
        self.weight = nn.Parameter(bins, requires_grad=False)

    def forward(self, distribution: Tensor) -> Tensor:
        """(B, 4*reg_max, N) logits -> (B, 4, N) distances in stride units."""
        batch, _, anchors = distribution.shape
        # bins on the channel axis and a 1x1 conv: the reference's summation order, so decoded boxes match
        # it to the last bit (an einsum differs by a few ulps, i.e. ~1e-4 px).
        probs = distribution.view(batch, 4, self.reg_max, anchors).transpose(2, 1).softmax(1)
        return F.conv2d(probs, self.weight.to(probs.dtype)).view(batch, 4, anchors)


def head_widths(
    first_in_channels: int, num_classes: int, reg_max: int = REG_MAX, cls_width: int | None = None
) -> tuple[int, int]:
    """(box width, class width) of a DDetect head; both depend on the FIRST (P3) input only.

    The class width is the official `max(ch0, min(2 nc, 128))` unless `cls_width` overrides it (e.g. 80 for
    gelan-t / yolov9-t, which reproduces the official README's 2.0M / 7.7G; reference section 1.3).
    """
    box_width = make_divisible(max(first_in_channels // 4, reg_max * 4, 16), 4)
    if cls_width is None:
        return box_width, max(first_in_channels, min(num_classes * 2, 128))
    if isinstance(cls_width, bool) or not isinstance(cls_width, int) or cls_width < 1:
        raise ValueError(f"cls_width must be a positive int or None, got {cls_width!r}")
    return box_width, cls_width


class DetectHead(nn.Module):
    """DDetect: per level a grouped box branch (4 groups, one per side) and a class branch.

    Biases start at 1.0 (box) and log(5 / nc / (640 / stride)^2) (class) for every level. `cls_width`
    overrides the class-branch width (default: the official formula, see `head_widths`).
    """

    OFFICIAL_NAMES = {"box": "cv2", "cls": "cv3", "dfl": "dfl"}

    def __init__(
        self,
        c_ins: Sequence[int],
        num_classes: int,
        strides: Sequence[int] = STRIDES,
        reg_max: int = REG_MAX,
        cls_width: int | None = None,
    ) -> None:
        super().__init__()
        if len(c_ins) != len(strides):
            raise ValueError(f"DetectHead got {len(c_ins)} inputs for {len(strides)} strides")
        self.num_classes = num_classes  # read by reset_biases
        box_width, cls_width = head_widths(c_ins[0], num_classes, reg_max, cls_width)
        self.cls_width = cls_width  # the width actually built
        self.box = nn.ModuleList(
            nn.Sequential(
                Conv(c, box_width, 3),
                Conv(box_width, box_width, 3, groups=4),
                nn.Conv2d(box_width, 4 * reg_max, 1, groups=4),
            )
            for c in c_ins
        )
        self.cls = nn.ModuleList(
            nn.Sequential(Conv(c, cls_width, 3), Conv(cls_width, cls_width, 3), nn.Conv2d(cls_width, num_classes, 1))
            for c in c_ins
        )
        self.dfl = DFL(reg_max)
        self.out_channels = 4 * reg_max + num_classes
        self.reset_biases(strides)

    @torch.no_grad()
    def reset_biases(self, strides: Sequence[int], image_size: int = 640) -> None:
        for box, cls, stride in zip(self.box, self.cls, strides):
            box[-1].bias.fill_(1.0)
            cls[-1].bias.fill_(math.log(5 / self.num_classes / (image_size / stride) ** 2))

    def branch(self, xs: Sequence[Tensor]) -> list[Tensor]:
        return [torch.cat((box(x), cls(x)), 1) for x, box, cls in zip(xs, self.box, self.cls)]

    def forward(self, xs: list[Tensor]) -> list[list[Tensor]]:
        return [self.branch(xs)]


class DualDetectHead(nn.Module):
    """DualDDetect: an auxiliary DetectHead on the first half of the inputs, the main one on the second half.

    Output `[aux maps, main maps]`. Official names: aux = cv2/cv3/dfl, main = cv4/cv5/dfl2. A `cls_width`
    override applies to both heads.
    """

    OFFICIAL_NAMES = {
        "aux.box": "cv2",
        "aux.cls": "cv3",
        "aux.dfl": "dfl",
        "main.box": "cv4",
        "main.cls": "cv5",
        "main.dfl": "dfl2",
    }

    def __init__(
        self,
        c_ins: Sequence[int],
        num_classes: int,
        strides: Sequence[int] = STRIDES,
        reg_max: int = REG_MAX,
        cls_width: int | None = None,
    ) -> None:
        super().__init__()
        levels = len(c_ins) // 2
        self.num_levels = levels
        self.aux = DetectHead(c_ins[:levels], num_classes, strides, reg_max, cls_width)
        self.main = DetectHead(c_ins[levels:], num_classes, strides, reg_max, cls_width)
        self.out_channels = self.main.out_channels

    def forward(self, xs: list[Tensor]) -> list[list[Tensor]]:
        return [self.aux.branch(xs[: self.num_levels]), self.main.branch(xs[self.num_levels :])]


def decode_maps(maps: Sequence[Tensor], anchors: Tensor, anchor_strides: Tensor, dfl: DFL) -> Tensor:
    """Raw per-level maps -> `(B, 4 + nc, N)`: xywh in input pixels + sigmoid class scores. `anchors` (2, N) and
    `anchor_strides` (1, N) are the transposed `geometry.anchor_grid`."""
    batch = maps[0].shape[0]
    flat = torch.cat([m.reshape(batch, m.shape[1], -1) for m in maps], 2)
    distribution, logits = flat.split((4 * dfl.reg_max, flat.shape[1] - 4 * dfl.reg_max), 1)
    boxes = dist2bbox(dfl(distribution), anchors, xywh=True, dim=1) * anchor_strides
    return torch.cat((boxes, logits.sigmoid()), 1)
