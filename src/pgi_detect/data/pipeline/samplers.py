"""Rectangular validation batches: images sorted by aspect ratio, one padded shape per batch (less padding than
square letterboxing, same results as the reference's rect validation), sharded by rank under DDP."""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence, Sized

import numpy as np
from torch.utils.data import DistributedSampler


def rect_batches(sizes_hw: np.ndarray, batch_size: int, img_size: int, stride: int = 32,
                 pad: float = 0.5) -> tuple[list[list[int]], dict[int, tuple[int, int]]]:
    """Group dataset indices into batches of similar aspect ratio.

    Returns (batches of indices in aspect-ratio order, {index: (h, w) letterbox shape of its batch}). A batch's
    shape is ceil(ratio·img_size/stride + pad)·stride per side, the long side of the batch's extreme image = 1.
    Every batch but the last holds exactly batch_size indices.
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


class RectShardSampler(DistributedSampler):
    """One rank's share of precomputed rect batches, flattened; use with DataLoader(batch_size=the batches' size).

    Rank r takes batches r, r+W, r+2W, ... so each image is evaluated once overall. Ranks with fewer batches repeat
    one of theirs so all ranks run the same number of steps: Lightning rejects an empty loader on any rank (fewer
    batches than ranks), and validation steps during fit go through the DDP wrapper, whose first forward after a
    training step broadcasts buffers, a collective that every rank must join. The evaluator keeps one result per
    image id, so the repeats do not count twice.

    A flat index sampler, not a batch sampler, because Lightning (use_distributed_sampler=True) replaces the
    sampler of any loader whose sampler is not a DistributedSampler, and cannot inject one into a custom batch
    sampler (TypeError). Being a DistributedSampler marks the loader as already sharded, so Lightning leaves it
    alone, and the DataLoader's own BatchSampler re-cuts exactly our batches: only the last one can be short, and
    it ends its rank's stream.
    """

    def __init__(self, dataset: Sized, batches: Sequence[Sequence[int]], rank: int = 0,
                 world_size: int = 1) -> None:
        super().__init__(dataset, num_replicas=world_size, rank=rank, shuffle=False)  # type: ignore[arg-type]
        batches = [list(b) for b in batches]
        full = len(batches[0]) if batches else 0
        if any(len(b) != full for b in batches[:-1]) or (batches and len(batches[-1]) > full):
            raise ValueError("rect batches must all have the same size except a shorter last one")
        mine = batches[rank::world_size]
        missing = math.ceil(len(batches) / world_size) - len(mine)
        # A padding rank never holds the short last batch, and batches[0] is full unless it is the only one, so
        # the DataLoader still cuts the repeats at batch boundaries.
        self.batches = mine + [(mine or batches)[0]] * missing if missing else mine

    def __iter__(self) -> Iterator[int]:
        return (index for batch in self.batches for index in batch)

    def __len__(self) -> int:
        return sum(len(batch) for batch in self.batches)
