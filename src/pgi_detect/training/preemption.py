"""Preemption: when the cluster announces the end of the job, save the exact training state and requeue."""
from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

from pgi_detect.training.checkpoints import CHECKPOINT_DIR


class Preempted(Exception):
    """Raised on every rank once the preemption checkpoint is written: it ends `Trainer.fit` at once (stopping through
    `trainer.should_stop` would first run a validation and save again, past the saved position). `pgi-detect` exits
    with status 0 on it."""


class Preemption(Callback):
    """On `signal_name` (SIGUSR1: what `#SBATCH --signal=USR1@90` sends before the time limit or a preemption),
    write `last.ckpt` at the next optimizer-step boundary, requeue the SLURM job (`scontrol requeue`), and stop
    (`Preempted`).

    The checkpoint holds the loop position, the data order and the samples already trained on, so the requeued job
    (`--ckpt_path last`) continues with the same batch an uninterrupted run would have seen. The signal handler only
    raises a flag: Lightning's own SLURM handler saves from inside the signal handler, at an arbitrary point of a
    step, which cannot be resumed exactly; with this callback installed Lightning leaves SIGUSR1 to us.
    """

    def __init__(self, signal_name: str = "SIGUSR1", requeue: bool = True) -> None:
        self.signum = signal.Signals[signal_name]
        self.requeue = requeue
        self.requested = False
        self._previous: Any = None
        self._steps_before_batch = 0

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and self._previous is None:
            try:
                self._previous = signal.signal(self.signum, self._on_signal)
            except ValueError:  # not the main thread (e.g. a notebook worker): no signal handling there
                rank_zero_warn(f"Preemption: cannot handle {self.signum.name} outside the main thread")

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._previous is not None:
            signal.signal(self.signum, self._previous)
            self._previous = None

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.requested = True

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._steps_before_batch = trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # At a step boundary no gradients are held back; after an epoch's last batch neither (the next epoch starts by
        # clearing them, as the official loop does). The same answer on every rank: no collective needed.
        stepped = trainer.global_step > self._steps_before_batch
        if not (stepped or batch_idx + 1 == trainer.num_training_batches):
            return
        requested = self.requested
        if trainer.world_size > 1:  # the signal reaches the ranks at slightly different times: agree first
            requested = bool(trainer.strategy.reduce_boolean_decision(requested, all=False))
        if not requested:
            return
        path = last_checkpoint_path(trainer)
        trainer.save_checkpoint(path)
        message = (f"Preemption: {self.signum.name} received; saved {path} at epoch {trainer.current_epoch}, batch "
                   f"{batch_idx + 1}, step {trainer.global_step}; stopping")
        rank_zero_info(message)
        if self.requeue and trainer.is_global_zero and os.environ.get("SLURM_JOB_ID"):
            requeue_slurm_job()
        self.requested = False
        raise Preempted(message)


def last_checkpoint_path(trainer: pl.Trainer) -> Path:
    """Where `last.ckpt` lives: the folder of the checkpoint callback that writes it, else the run's folder."""
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath and (
                callback.save_last or callback.filename == ModelCheckpoint.CHECKPOINT_NAME_LAST):
            return Path(callback.dirpath) / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"
    return Path(trainer.default_root_dir) / CHECKPOINT_DIR / "last.ckpt"


def requeue_slurm_job() -> None:
    """`scontrol requeue <job>` for this job (array jobs included); a failure is reported, not raised."""
    array_job, array_task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    job = f"{array_job}_{array_task}" if array_job and array_task else os.environ["SLURM_JOB_ID"]
    try:
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        rank_zero_warn(f"Preemption: scontrol not found; job {job} was not requeued")
        return
    if result.returncode == 0:
        rank_zero_info(f"Preemption: requeued SLURM job {job}")
    else:
        rank_zero_warn(f"Preemption: `scontrol requeue {job}` failed ({result.returncode}): {result.stderr.strip()}")
