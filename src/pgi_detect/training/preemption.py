"""Stopping without losing work: when the cluster announces the end of the job (SIGUSR1) or the user presses Ctrl-C
(SIGINT), save the exact training state at the next optimizer step and stop (and requeue, on SLURM)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_only, rank_zero_warn

from pgi_detect.training.checkpoint_io import CHECKPOINT_DIR


class Preempted(Exception):
    """Raised on every rank once the preemption checkpoint is written: it ends `Trainer.fit` at once (stopping through
    `trainer.should_stop` would first run a validation and save again, past the saved position). `pgi-detect` prints
    its message once and exits with status 0 on it."""


class Interrupted(Preempted):
    """Ctrl-C: the checkpoint is written and the run stops; `pgi-detect` prints its message and exits with 130."""


class Preemption(Callback):
    """On `signal_name` (SIGUSR1: what `#SBATCH --signal=USR1@90` sends before the time limit or a preemption),
    write `last.ckpt` at the next optimizer-step boundary, requeue the SLURM job (`scontrol requeue`), and stop
    (`Preempted`).

    The checkpoint holds the loop position, the data order and the samples already trained on, so the requeued job
    (`--ckpt_path last`) continues with the same batch an uninterrupted run would have seen. The signal handler only
    raises a flag: Lightning's own SLURM handler saves from inside the signal handler, at an arbitrary point of a
    step, which cannot be resumed exactly; with this callback installed Lightning leaves SIGUSR1 to us.
    """

    def __init__(self, signal_name: str = "SIGUSR1", requeue: bool = True, ctrl_c: bool = True) -> None:
        self.signum = signal.Signals[signal_name]
        self.requeue = requeue
        self.ctrl_c = ctrl_c
        self.requested = False
        self.interrupted = False
        self._previous: dict[int, Any] = {}
        self._steps_before_batch = 0
        self._pid = os.getpid()

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or self._previous:
            return
        self._pid = os.getpid()
        handlers = {self.signum: self._on_signal}
        if self.ctrl_c and self.signum != signal.SIGINT:
            handlers[signal.SIGINT] = self._on_ctrl_c
        for signum, handler in handlers.items():
            try:
                self._previous[signum] = signal.signal(signum, handler)
            except ValueError:  # not the main thread (e.g. a notebook worker): no signal handling there
                rank_zero_warn(f"Preemption: cannot handle {signal.Signals(signum).name} outside the main thread")

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.requested = True

    def _on_ctrl_c(self, signum: int, frame: Any) -> None:
        """The first Ctrl-C asks for a checkpoint at the next optimizer step; a second one stops at once (Lightning's
        own shutdown; the atomic checkpoint write leaves the previous file intact). DataLoader workers inherit this
        handler: Ctrl-C in a terminal reaches them too, and they must keep serving batches until the save."""
        if os.getpid() != self._pid:
            return
        self.requested = self.interrupted = True
        signal.signal(signal.SIGINT, self._previous.get(signal.SIGINT, signal.default_int_handler))
        if rank_zero_only.rank == 0:
            print("\nCtrl-C: saving last.ckpt at the next optimizer step, then stopping (Ctrl-C again stops without "
                  "saving)", file=sys.stderr, flush=True)

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
        if not any_rank(trainer, self.requested):  # the signal reaches the ranks at slightly different times
            return
        interrupted = any_rank(trainer, self.interrupted)
        path = last_checkpoint_path(trainer)
        trainer.save_checkpoint(path, weights_only=False)  # the full training state
        where = (f"saved {path} at epoch {trainer.current_epoch}, batch {batch_idx + 1}/"
                 f"{trainer.num_training_batches}, step {trainer.global_step}")
        self.requested = self.interrupted = False
        if interrupted:
            raise Interrupted(f"stopped by Ctrl-C; {where}. To continue, run the same command with --ckpt_path last")
        if self.requeue and trainer.is_global_zero and os.environ.get("SLURM_JOB_ID"):
            requeue_slurm_job()
        raise Preempted(f"Preemption: {self.signum.name} received; {where}; stopping")


def any_rank(trainer: pl.Trainer, flag: bool) -> bool:
    """Whether `flag` is set on any rank (the same answer on every rank; no collective on one process)."""
    if trainer.world_size > 1:
        return bool(trainer.strategy.reduce_boolean_decision(flag, all=False))
    return flag


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
