"""Training batches that a checkpoint can resume exactly: the epoch's order depends only on (seed, epoch), every
sample's augmentation only on (seed, epoch, index), and the loader tells Lightning how far into the epoch it got.

Lightning saves `ResumableLoader.state_dict()` in every checkpoint and hands it back through `load_state_dict` before
the first batch of a resumed run, so a run stopped after an epoch, or in the middle of one (preemption), continues
with the same batches the uninterrupted run would have seen.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sized
from typing import Any

from torch.utils.data import DataLoader, DistributedSampler


class EpochSampler(DistributedSampler):
    """The training order: a permutation drawn from (seed, epoch), one share per rank (a DistributedSampler, so
    Lightning keeps it under DDP), yielding `(epoch, index)` keys so the dataset seeds each sample's augmentation from
    its epoch. `resume(epoch, start)` makes the next pass begin at position `start` of that epoch's share."""

    def __init__(self, dataset: Sized, rank: int = 0, world_size: int = 1, seed: int = 0) -> None:
        super().__init__(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)  # type: ignore[arg-type]
        self.start = 0
        self.resuming = False  # a checkpoint's position is set for the next pass

    def resume(self, epoch: int, start: int) -> None:
        self.set_epoch(epoch)
        self.start = start
        self.resuming = True

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        indices = list(super().__iter__())
        start, self.start, self.resuming = self.start, 0, False  # a resume applies to one pass only
        return iter([(self.epoch, index) for index in indices[start:]])


class ResumableLoader(DataLoader):
    """A DataLoader over an `EpochSampler` whose position Lightning checkpoints (`state_dict`/`load_state_dict`).

    `processed_batches` reports how many batches of the current epoch were trained on (the trainer's progress, not
    what the loader has fetched ahead); `training_epoch` the epoch the trainer is about to train. Every new iterator
    gives the sampler that epoch first: DataLoader workers draw their first indices as soon as the iterator exists,
    which for the first epoch of a run is before Lightning calls `set_epoch`, and Lightning hands a checkpoint's
    loader state back only for a run stopped mid-epoch. Without this a run resumed at an epoch boundary replayed epoch
    0's order whenever the loader had workers."""

    def __init__(self, dataset: Any, *, sampler: EpochSampler, batch_size: int,
                 processed_batches: Callable[[], int], training_epoch: Callable[[], int | None] = lambda: None,
                 **kwargs: Any) -> None:
        super().__init__(dataset, sampler=sampler, batch_size=batch_size, **kwargs)
        self.processed_batches = processed_batches
        self.training_epoch = training_epoch

    def __iter__(self):  # type: ignore[override]
        epoch = self.training_epoch()
        if epoch is not None and isinstance(self.sampler, EpochSampler) and not self.sampler.resuming:
            self.sampler.set_epoch(int(epoch))
        return super().__iter__()

    def state_dict(self) -> dict[str, int]:
        sampler = self.sampler
        if not isinstance(sampler, EpochSampler):  # Lightning swapped the sampler (e.g. overfit_batches)
            return {}
        return {"epoch": int(sampler.epoch), "batches": int(self.processed_batches()), "seed": int(sampler.seed)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        sampler = self.sampler
        if not state or not isinstance(sampler, EpochSampler):
            return
        if state.get("seed", sampler.seed) != sampler.seed:
            raise ValueError(f"the checkpoint's data order used seed {state['seed']}, this run seed {sampler.seed}; "
                             "resume with the same data.seed")
        epoch, batches = int(state["epoch"]), int(state["batches"])
        if batches >= len(self):  # the epoch was finished: the next one starts from its beginning
            sampler.resume(epoch + 1, 0)
        else:
            sampler.resume(epoch, batches * int(self.batch_size or 1))
