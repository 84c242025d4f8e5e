"""DataMonitor: reports what the data pipeline did behind the model's back, once per training epoch.

With `data.on_bad_sample: skip` a bad image met while training is replaced by another one in whichever DataLoader
worker meets it; the datamodule totals those skips over its worker processes (shared memory), and this callback logs
the epoch's total, summed over DDP ranks, plus the images left out when the data was read (never trained on either),
as the metric `train/skipped_samples`, with one warning line when nonzero.
"""
from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl
import torch

logger = logging.getLogger("pgi_detect.training")


class DataMonitor(pl.Callback):
    """Log `train/skipped_samples` (bad training images skipped this epoch, all workers and ranks) every epoch."""

    def __init__(self) -> None:
        self._seen = 0  # this process's running total at the end of the previous epoch

    @staticmethod
    def _running_total(trainer: pl.Trainer) -> int:
        datamodule: Any = getattr(trainer, "datamodule", None)
        return int(getattr(datamodule, "skipped_samples", 0) or 0)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # The count starts with the training set, at 0. Not read at the first epoch's start: DataLoader workers
        # start prefetching (and may meet a bad image) before that hook runs.
        if stage == "fit":
            self._seen = 0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._seen > self._running_total(trainer):  # a rebuilt training set counts from 0 again
            self._seen = 0

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        total = self._running_total(trainer)
        skipped = torch.tensor(float(total - self._seen), device=pl_module.device)
        self._seen = total
        skipped = trainer.strategy.reduce(skipped, reduce_op="sum")  # every rank's workers
        # Images left out when the data was read are not trained on in any epoch either (the same on every rank).
        dropped = int(getattr(trainer.datamodule, "dropped_at_load", 0) or 0)
        skipped = skipped + dropped
        # Already summed over ranks, so every rank holds the total: the `max` sync keeps it (and is what Lightning
        # expects of an epoch-level value under DDP; sync_dist=False made it warn on every run).
        pl_module.log("train/skipped_samples", float(skipped), on_step=False, on_epoch=True, sync_dist=True,
                      reduce_fx="max")
        if trainer.is_global_zero and skipped > 0:
            logger.warning("epoch %d: %d bad training sample(s) not trained on (%d left out when the data was read, "
                           "%d skipped while loading and replaced by other images); the files are named in the "
                           "warnings above", trainer.current_epoch, int(skipped), dropped, int(skipped) - dropped)
