"""The anchor grid: one anchor per feature-map cell, at the cell centre, for every pyramid level."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def anchor_grid(
    shapes: Sequence[Sequence[int]], strides: Sequence[float], device: torch.device | str | None = None,
    dtype: torch.dtype | None = None, offset: float = 0.5,
) -> tuple[Tensor, Tensor]:
    """Cell centres of every level of size `(height, width)`, in grid units, and the stride of each anchor.

    Levels are concatenated P3 -> P5 and rows are row-major within a level, the order in which the head flattens its
    maps. Returns `(points (A, 2) as (x, y), strides (A, 1))`; the head's channel-first decode uses the transposes.
    Pass float32 for half-precision maps: their grids are not exact in bf16.
    """
    points, stride_rows = [], []
    for (height, width), stride in zip(shapes, strides):
        kwargs = dict(device=device, dtype=dtype)
        xs = torch.arange(width, **kwargs) + offset
        ys = torch.arange(height, **kwargs) + offset
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack((grid_x, grid_y), -1).reshape(-1, 2))
        stride_rows.append(torch.full((height * width, 1), float(stride), **kwargs))
    return torch.cat(points), torch.cat(stride_rows)


def map_shapes(maps: Sequence[Tensor]) -> list[tuple[int, int]]:
    """`(height, width)` of each level's map, the `shapes` argument of `anchor_grid`."""
    return [(int(m.shape[-2]), int(m.shape[-1])) for m in maps]
