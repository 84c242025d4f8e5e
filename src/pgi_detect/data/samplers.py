"""Rectangular validation batches: images sorted by aspect ratio, one padded shape per batch (less padding than
square letterboxing, same results as the reference's rect validation)."""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


def rect_batches(sizes_hw: np.ndarray, batch_size: int, img_size: int, stride: int = 32,
                 pad: float = 0.5) -> tuple[list[list[int]], dict[int, tuple[int, int]]]:
    """Group dataset indices into batches of similar aspect ratio.

    Returns (batches of indices in aspect-ratio order, {index: (h, w) letterbox shape of its batch}). A batch's
    shape is ceil(ratio·img_size/stride + pad)·stride per side, the long side of the batch's extreme image = 1.
    """
    sizes_hw = np.asarray(sizes_hw, np.float64).reshape(-1, 2)
    aspect = sizes_hw[:, 0] / sizes_hw[:, 1]  # h / w
    order = np.argsort(aspect, kind="stable")
    batches: list[list[int]] = []
    shapes: dict[int, tuple[int, int]] = {}
    for start in range(0, len(order), batch_size):
        members = order[start:start + batch_size]
        lo, hi = aspect[members].min(), aspect[members].max()
        ratio_hw = (hi, 1.0) if hi < 1 else (1.0, 1.0 / lo) if lo > 1 else (1.0, 1.0)
        shape = tuple(int(math.ceil(r * img_size / stride + pad) * stride) for r in ratio_hw)
        batches.append([int(i) for i in members])
        shapes.update({int(i): shape for i in members})
    return batches, shapes


class FixedBatchSampler(Sampler[list[int]]):
    """Yields precomputed batches in order (optionally one shard of them, for distributed evaluation)."""

    def __init__(self, batches: Sequence[Sequence[int]], rank: int = 0, world_size: int = 1) -> None:
        self.batches = [list(b) for b in batches][rank::world_size]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)
