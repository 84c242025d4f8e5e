"""The bad-sample policy of a dataset: `error` raises, `skip` remembers the image as bad and counts every
replacement, in shared memory so that the DataLoader workers' skips add up in the main process."""
from __future__ import annotations

import logging

import torch
from torch.utils.data import get_worker_info

from pgi_detect.data.problems import DataError, check_policy

logger = logging.getLogger("pgi_detect.data")
# Slots of the shared skip counter: the main process uses slot 0, DataLoader worker w slot 1 + w (mod the size), so
# each slot has one writer and no lock is needed.
SKIP_COUNTER_SLOTS = 257


class BadSamples:
    def __init__(self, policy: str) -> None:
        self.policy = check_policy(policy)
        self.bad: set[int] = set()
        self._skipped = torch.zeros(SKIP_COUNTER_SLOTS, dtype=torch.int64).share_memory_()

    def handle(self, index: int, error: DataError) -> None:
        """Raise (policy `error`), or remember `index` as bad with one warning line."""
        if self.policy == "error":
            raise error
        self.bad.add(index)
        logger.warning("%s (skipped; %d bad image(s) so far in this process)", error, len(self.bad))

    def count_skip(self) -> None:
        worker = get_worker_info()
        self._skipped[0 if worker is None else 1 + worker.id % (SKIP_COUNTER_SLOTS - 1)] += 1

    @property
    def skipped(self) -> int:
        return int(self._skipped.sum())
