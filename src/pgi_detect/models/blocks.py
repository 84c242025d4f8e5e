"""GELAN / YOLOv9 building blocks (reference spec section 2), written for a lean training forward.

Every block takes its input channel count(s) first and exposes `out_channels`, so a layer table only lists
the arguments after the input (like the official yaml). `OFFICIAL_NAMES` maps our child names to the
submodule names in official state dicts; `convert.py` walks it, so readable names cost nothing at import.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BN_EPS = 1e-3
BN_MOMENTUM = 0.03


def fold_batch_norm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """(weight, bias) of a single conv equal to `bn(conv(x))` in eval mode."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    weight = conv.weight * scale.view(-1, 1, 1, 1)
    bias = bn.bias - bn.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    return weight.detach(), bias.detach()


def conv_like(template: nn.Conv2d, weight: Tensor, bias: Tensor) -> nn.Conv2d:
    """A biased Conv2d with `template`'s geometry holding the given folded tensors."""
    conv = torch.nn.utils.skip_init(  # no random init: the folded tensors overwrite it anyway
        nn.Conv2d,
        template.in_channels,
        template.out_channels,
        template.kernel_size,
        template.stride,
        template.padding,
        template.dilation,
        template.groups,
        bias=True,
        device=weight.device,
        dtype=weight.dtype,
    )
    conv.weight.data.copy_(weight)
    conv.bias.data.copy_(bias)
    return conv


class SiLU(nn.Module):
    """SiLU that works in place only when autograd is not recording the input.

    In training an in-place SiLU makes autograd clone its input (the backward needs it): one extra copy per
    activation, about 30 ms of a 1.4 s gelan-t CPU step. In inference in place saves an allocation."""

    def forward(self, x: Tensor) -> Tensor:
        return F.silu(x, inplace=not x.requires_grad)


class Conv(nn.Module):
    """Conv2d (no bias, 'same' padding) + BatchNorm (eps 1e-3, momentum 0.03) + optional SiLU.

    `fuse()` folds the BN into the conv for inference. Each instance owns its activation (the official code
    shares one through a class attribute that a yaml can overwrite for the whole process).
    """

    def __init__(
        self, c_in: int, c_out: int, kernel: int = 1, stride: int = 1, groups: int = 1, act: bool = True
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False)
        self.bn: nn.BatchNorm2d | None = nn.BatchNorm2d(c_out, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = SiLU() if act else nn.Identity()
        self.out_channels = c_out

    def forward(self, x: Tensor) -> Tensor:
        if self.bn is None:
            return self.act(self.conv(x))
        return self.act(self.bn(self.conv(x)))

    def fused_tensors(self) -> tuple[Tensor, Tensor]:
        """(weight, bias) of this conv with its BN folded in (the BN is left untouched)."""
        if self.bn is None:
            return self.conv.weight.detach(), self.conv.bias.detach()
        return fold_batch_norm(self.conv, self.bn)

    @torch.no_grad()
    def fuse(self) -> None:
        if self.bn is not None:
            self.conv = conv_like(self.conv, *self.fused_tensors())
            self.bn = None


class RepConvN(nn.Module):
    """Re-parameterisable conv: SiLU(3x3 conv-BN + 1x1 conv-BN), no identity branch; fuses to one 3x3 conv."""

    OFFICIAL_NAMES = {"dense": "conv1", "pointwise": "conv2", "fused": "conv"}

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.dense: Conv | None = Conv(c_in, c_out, 3, stride, act=False)
        self.pointwise: Conv | None = Conv(c_in, c_out, 1, stride, act=False)
        self.fused: nn.Conv2d | None = None
        self.act = SiLU()
        self.out_channels = c_out

    def forward(self, x: Tensor) -> Tensor:
        if self.fused is not None:
            return self.act(self.fused(x))
        return self.act(self.dense(x) + self.pointwise(x))

    @torch.no_grad()
    def fuse(self) -> None:
        if self.fused is not None:
            return
        weight3, bias3 = self.dense.fused_tensors()
        weight1, bias1 = self.pointwise.fused_tensors()
        weight = weight3 + F.pad(weight1, [1, 1, 1, 1])
        self.fused = conv_like(self.dense.conv, weight, bias3 + bias1)
        self.dense = None
        self.pointwise = None


class RepNBottleneck(nn.Module):
    """RepConvN 3x3 then Conv 3x3, with a residual add when the widths allow it."""

    OFFICIAL_NAMES = {"rep": "cv1", "conv": "cv2"}

    def __init__(self, c_in: int, c_out: int, shortcut: bool = True) -> None:
        super().__init__()
        self.rep = RepConvN(c_in, c_out)
        self.conv = Conv(c_out, c_out, 3)
        self.residual = shortcut and c_in == c_out
        self.out_channels = c_out

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(self.rep(x))
        return x + y if self.residual else y


class RepNCSP(nn.Module):
    """CSP stage: half the width goes through `depth` RepNBottlenecks, half bypasses; a 1x1 conv merges."""

    OFFICIAL_NAMES = {"into_bottlenecks": "cv1", "bypass": "cv2", "bottlenecks": "m", "merge": "cv3"}

    def __init__(self, c_in: int, c_out: int, depth: int = 1) -> None:
        super().__init__()
        hidden = c_out // 2
        self.into_bottlenecks = Conv(c_in, hidden, 1)
        self.bypass = Conv(c_in, hidden, 1)
        self.bottlenecks = nn.Sequential(*(RepNBottleneck(hidden, hidden) for _ in range(depth)))
        self.merge = Conv(2 * hidden, c_out, 1)
        self.out_channels = c_out

    def forward(self, x: Tensor) -> Tensor:
        return self.merge(torch.cat((self.bottlenecks(self.into_bottlenecks(x)), self.bypass(x)), 1))


class _SplitStagesMerge(nn.Module):
    """Shared ELAN data flow: split a 1x1 projection in two halves, chain two stages on the second half, and merge
    all four tensors with a 1x1 Conv. Subclasses only choose what a stage is."""

    OFFICIAL_NAMES = {"split": "cv1", "stage1": "cv2", "stage2": "cv3", "merge": "cv4"}

    def forward(self, x: Tensor) -> Tensor:
        first, second = self.split(x).chunk(2, 1)
        third = self.stage1(second)
        fourth = self.stage2(third)
        return self.merge(torch.cat((first, second, third, fourth), 1))


class RepNCSPELAN4(_SplitStagesMerge):
    """GELAN block: 1x1 split into two halves, two chained (RepNCSP + 3x3 Conv) stages on the second half,
    and a 1x1 merge of all four tensors. Args after c_in as in the yaml: (c_out, c_split, c_stage, depth)."""

    def __init__(self, c_in: int, c_out: int, c_split: int, c_stage: int, depth: int = 1) -> None:
        super().__init__()
        self.split = Conv(c_in, c_split, 1)
        self.stage1 = nn.Sequential(RepNCSP(c_split // 2, c_stage, depth), Conv(c_stage, c_stage, 3))
        self.stage2 = nn.Sequential(RepNCSP(c_stage, c_stage, depth), Conv(c_stage, c_stage, 3))
        self.merge = Conv(c_split + 2 * c_stage, c_out, 1)
        self.out_channels = c_out


class ELAN1(_SplitStagesMerge):
    """Light ELAN (t/s stems): like RepNCSPELAN4 but each stage is a single 3x3 Conv."""

    def __init__(self, c_in: int, c_out: int, c_split: int, c_stage: int) -> None:
        super().__init__()
        self.split = Conv(c_in, c_split, 1)
        self.stage1 = Conv(c_split // 2, c_stage, 3)
        self.stage2 = Conv(c_stage, c_stage, 3)
        self.merge = Conv(c_split + 2 * c_stage, c_out, 1)
        self.out_channels = c_out


class AConv(nn.Module):
    """Downsample x2: 2x2 average pool (stride 1) then a strided 3x3 Conv (t/s/m)."""

    OFFICIAL_NAMES = {"conv": "cv1"}

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = Conv(c_in, c_out, 3, 2)
        self.out_channels = c_out

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.avg_pool2d(x, 2, 1, 0, False, True))


class ADown(nn.Module):
    """Downsample x2 (c/e): after a 2x2 average pool, half the channels take a strided 3x3 Conv and the other
    half a 3x3/2 max pool + 1x1 Conv; the halves are concatenated."""

    OFFICIAL_NAMES = {"strided": "cv1", "pooled": "cv2"}

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.strided = Conv(c_in // 2, c_out // 2, 3, 2)
        self.pooled = Conv(c_in // 2, c_out // 2, 1, 1)
        self.out_channels = c_out

    def forward(self, x: Tensor) -> Tensor:
        first, second = F.avg_pool2d(x, 2, 1, 0, False, True).chunk(2, 1)
        return torch.cat((self.strided(first), self.pooled(F.max_pool2d(second, 3, 2, 1))), 1)


class SPPELAN(nn.Module):
    """Spatial pyramid pooling: 1x1 reduce, three chained 5x5 max pools, 1x1 merge of all four."""

    OFFICIAL_NAMES = {"reduce": "cv1", "merge": "cv5"}

    def __init__(self, c_in: int, c_out: int, c_hidden: int) -> None:
        super().__init__()
        self.reduce = Conv(c_in, c_hidden, 1)
        self.merge = Conv(4 * c_hidden, c_out, 1)
        self.out_channels = c_out

    def forward(self, x: Tensor) -> Tensor:
        pooled = [self.reduce(x)]
        for _ in range(3):
            pooled.append(F.max_pool2d(pooled[-1], 5, 1, 2))
        return self.merge(torch.cat(pooled, 1))


class Concat(nn.Module):
    """Channel concatenation of several layer outputs."""

    def __init__(self, c_ins: Sequence[int]) -> None:
        super().__init__()
        self.out_channels = sum(c_ins)

    def forward(self, xs: list[Tensor]) -> Tensor:
        return torch.cat(xs, 1)


class Upsample(nn.Module):
    """Nearest-neighbour x2 upsampling."""

    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.out_channels = c_in

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="nearest")


class Silence(nn.Module):
    """Identity layer 0 of the CBNet configs: gives the image a layer index so a second backbone can read it."""

    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.out_channels = c_in

    def forward(self, x: Tensor) -> Tensor:
        return x


class CBLinear(nn.Module):
    """One biased 1x1 conv (no BN, no activation) whose output is split into per-target-level routes."""

    OFFICIAL_NAMES = {"proj": "conv"}

    def __init__(self, c_in: int, splits: Sequence[int]) -> None:
        super().__init__()
        self.splits = list(splits)
        self.proj = nn.Conv2d(c_in, sum(self.splits), 1, 1, 0, bias=True)
        self.out_channels = tuple(self.splits)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        return self.proj(x).split(self.splits, 1)


class CBFuse(nn.Module):
    """Sum of the last input and one route picked from each earlier CBLinear output, resized (nearest) to it."""

    def __init__(self, c_ins: Sequence, picks: Sequence[int]) -> None:
        super().__init__()
        self.picks = list(picks)
        self.out_channels = c_ins[-1]

    def forward(self, xs: list) -> Tensor:
        target = xs[-1]
        size = target.shape[2:]
        total = None
        for routes, pick in zip(xs[:-1], self.picks):
            route = routes[pick]
            if route.shape[2:] != size:
                route = F.interpolate(route, size=size, mode="nearest")
            total = route if total is None else total + route
        return target if total is None else total + target
