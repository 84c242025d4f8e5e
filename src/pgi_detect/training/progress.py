"""Progress that reaches the user wherever stdout goes: Rich bars in a terminal, plain lines in log files."""
from __future__ import annotations

import datetime
import sys
import time
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import RichProgressBar

LOSS_NAMES = ("box", "cls", "dfl")


class DetectionProgressBar(RichProgressBar):
    """Lightning's Rich progress bar in a terminal. When stdout is not a terminal (nohup, SLURM `.out` files, CI),
    where Rich would print nothing until the end, it prints a line every `log_every_n_steps` training batches
    (epoch, step/total, losses, lr, images/s, ETA) and one line per validation with its mAP."""

    def __init__(self, log_every_n_steps: int = 50, terminal: bool | None = None, **rich_kwargs: Any) -> None:
        super().__init__(**rich_kwargs)
        self.log_every_n_steps = max(int(log_every_n_steps), 1)
        self.terminal = sys.stdout.isatty() if terminal is None else terminal
        if not self.terminal:
            self.disable()
        self._epoch_started = self._validation_started = time.monotonic()
        self._images = 0

    @property
    def printing(self) -> bool:
        """Plain lines are printed (not a terminal), by the global-zero process only."""
        return not self.terminal and self._trainer is not None and self._trainer.is_global_zero

    def _print(self, line: str) -> None:
        print(line, flush=True)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self._epoch_started, self._images = time.monotonic(), 0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self._images += len(batch["images"]) if isinstance(batch, dict) and "images" in batch else 0
        done = batch_idx + 1
        if self.printing and (done % self.log_every_n_steps == 0 or done == trainer.num_training_batches):
            self._print(self.training_line(trainer, done))

    def training_line(self, trainer: pl.Trainer, done: int) -> str:
        metrics = trainer.callback_metrics
        elapsed = max(time.monotonic() - self._epoch_started, 1e-9)
        total = trainer.num_training_batches
        budget = trainer.estimated_stepping_batches
        # Under --trainer.max_steps the step budget ends the run, not max_epochs: "epoch 0/500" would mislead.
        by_steps = trainer.max_steps is not None and trainer.max_steps > 0 and budget == trainer.max_steps
        epochs = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 and not by_steps else ""
        parts = [f"epoch {trainer.current_epoch}{epochs}",
                 f"step {trainer.global_step}/{_count(budget)}{' (max_steps)' if by_steps else ''}",
                 f"batch {done}/{_count(total)}"]
        if "train/loss_step" in metrics:
            items = " ".join(f"{name} {float(metrics[f'train/{name}_loss_step']):.3f}" for name in LOSS_NAMES
                             if f"train/{name}_loss_step" in metrics)
            parts.append(f"loss {float(metrics['train/loss_step']):.3f} ({items})")
        optimizers = trainer.optimizers
        if optimizers:
            parts.append(f"lr {optimizers[0].param_groups[-1]['lr']:.3g}")
        parts.append(f"{self._images / elapsed:.1f} img/s")
        if isinstance(total, int) or float(total) != float("inf"):
            remaining = (float(total) - done) * elapsed / done
            parts.append(f"epoch ETA {_duration(remaining)}")
        return "  ".join(parts)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_start(trainer, pl_module)
        self._validation_started = time.monotonic()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if self.printing and not trainer.sanity_checking:
            self._print(self.evaluation_line(trainer, "val"))

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_test_end(trainer, pl_module)
        if self.printing:
            self._print(self.evaluation_line(trainer, "test"))

    def evaluation_line(self, trainer: pl.Trainer, stage: str) -> str:
        metrics = trainer.callback_metrics
        undefined = set((getattr(trainer.lightning_module, "last_eval", None) or {}).get("undefined", ()))
        keys = [(name, f"{stage}/{name}") for name in ("mAP", "mAP50", "mAP75") if f"{stage}/{name}" in metrics]
        scores = "  ".join(f"{name} undefined" if key in undefined else f"{name} {float(metrics[key]):.4f}"
                           for name, key in keys)
        seconds = time.monotonic() - self._validation_started
        weights = evaluated_weights(trainer, getattr(trainer, "lightning_module", None))
        return f"{stage} {weights}: {scores or 'no metrics'}  ({_duration(seconds)})"


def evaluated_weights(trainer: pl.Trainer, pl_module: Any) -> str:
    """Which weights an evaluation line is about: during fit the epoch being trained; in validate/test the epoch of
    the checkpoint (or of the fit that ran before in this process). The trainer's own counters say nothing there:
    a fresh trainer is at epoch 0, and one after a 20-epoch fit at epoch 20, which it never trained."""
    if trainer.state.fn == "fit":
        return f"after epoch {trainer.current_epoch} (step {trainer.global_step})"
    trained = getattr(pl_module, "trained_through", None)
    if trained is None:
        return "of the initial weights (no checkpoint)"
    epoch, step = trained
    return f"of epoch {epoch} (step {step})"


def _count(value: Any) -> str:
    return "?" if value is None or float(value) == float("inf") else str(int(value))


def _duration(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(seconds)))
