"""`RecipeLoop`: the official training loop's optimisation, step by step, in one object with one state.

The official loop accumulates gradients over a number of batches that ramps during warmup and counts across epoch
boundaries, sets every group's lr and momentum per batch, clears the gradients when an epoch starts, clips the
gradient norm before each step and scales the loss by the world size. Lightning's automatic optimisation (a fixed
accumulation per epoch, a step forced at every epoch end) cannot express that, so `DetectionTask` optimises
manually and asks this object what to do at every batch. It also owns the loss guards (non-finite losses skip
their step, a diverging loss stops the run), whose decisions all ranks must share.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any

import numpy as np
import torch
from lightning.pytorch.strategies import ParallelStrategy
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import nn

from pgi_detect.training.optim import (
    AccumulationSchedule,
    DivergenceGuard,
    GuardSettings,
    NonFiniteLossGuard,
    OptimizerSettings,
    RecipeSchedule,
)

# Batches per epoch assumed for the schedule when the loader has no length (an iterable dataset).
UNKNOWN_EPOCH_LENGTH = 1000


class RecipeLoop:
    """What the recipe does at every training batch; `state_dict()` is what an exact resume needs of it."""

    def __init__(self, optim: OptimizerSettings, guard: GuardSettings) -> None:
        self.optim = optim
        self.guard = guard
        self.nonfinite_guard = NonFiniteLossGuard(guard.max_nonfinite_steps)
        self.divergence_guard = DivergenceGuard(guard.divergence_factor, guard.divergence_patience,
                                                guard.divergence_window)
        self.schedule: RecipeSchedule | None = None
        self.accumulation: AccumulationSchedule | None = None
        self.batches_per_epoch = 0
        self.last_step: int | None = None  # the batch (recipe `ni`) of the latest optimizer step

    # ------------------------------------------------------------------ set-up

    def build_optimizer(self, model: nn.Module, global_batch: int) -> torch.optim.Optimizer:
        """The three-group optimizer, weight decay scaled for this global batch and its accumulation."""
        return self.optim.build_optimizer(model, global_batch, self.optim.accumulation(global_batch))

    def start(self, global_batch: int, max_epochs: int | None, num_training_batches: float) -> None:
        """Schedule and accumulation ramp for this run, once its epoch length is known (Lightning's train start)."""
        self.batches_per_epoch = int(num_training_batches) if np.isfinite(num_training_batches) \
            else UNKNOWN_EPOCH_LENGTH
        self.schedule = self.optim.schedule(max_epochs or 1, self.batches_per_epoch)
        self.accumulation = self.optim.accumulation_schedule(global_batch, self.schedule.warmup_iters)
        if self.accumulation.final > 1:
            rank_zero_info(f"DetectionTask: global batch {global_batch} -> {self.accumulation.final} batches per "
                           f"optimizer step (nominal batch {self.optim.nominal_batch_size}), ramped from 1 over the "
                           f"{self.schedule.warmup_iters} warmup batches")

    # ------------------------------------------------------------------ per epoch and batch

    def iteration(self, epoch: int, batch_idx: int) -> int:
        """Batches seen since training began (the recipe's `ni`), the same after a resume."""
        return epoch * self.batches_per_epoch + batch_idx

    def epoch_start(self, optimizer: torch.optim.Optimizer) -> None:
        # The official loop clears the gradients when an epoch starts: what was accumulated after the previous
        # epoch's last step does not reach a step.
        optimizer.zero_grad()

    def batch_start(self, optimizer: torch.optim.Optimizer, iteration: int, epoch: int) -> None:
        """Every group's lr and momentum for this batch (warmup ramps, then the per-epoch decay)."""
        if self.schedule is not None:
            self.schedule.apply(optimizer, iteration, epoch)

    def resume_at(self, iteration: int) -> None:
        """Know the last step before this batch: a fresh run, or a checkpoint written before it was recorded."""
        if self.last_step is None:
            self.last_step = (self.accumulation or AccumulationSchedule()).last_step_before(iteration)

    def steps_at(self, iteration: int) -> bool:
        """Whether this batch ends with an optimizer step."""
        return (self.accumulation or AccumulationSchedule()).steps_at(iteration, self.last_step)

    def stepped(self, iteration: int) -> None:
        self.last_step = iteration

    @staticmethod
    def backward_scale(world_size: int) -> float:
        """Factor that makes the gradient equal the reference's: its loss is summed over accumulated batches and
        multiplied by WORLD_SIZE, while DDP averages the ranks' gradients."""
        return float(world_size)

    @staticmethod
    def gradient_sync(trainer: Any, stepping: bool) -> Any:
        """DDP all-reduces gradients only on the batch that steps (the sum over batches is the same either way)."""
        strategy = trainer.strategy
        if not stepping and isinstance(strategy, ParallelStrategy) and trainer.world_size > 1:
            return strategy.block_backward_sync()
        return contextlib.nullcontext()

    # ------------------------------------------------------------------ loss guards

    def loss_is_usable(self, loss_per_image: float, trainer: Any, device: torch.device, step: int) -> bool:
        """Whether this batch's loss may reach the gradients. A non-finite loss skips its step (too many in a row
        stop the run); a loss far above its running median warns, and stops the run when it stays there. Every
        rank reaches the same answer in one all-reduce (else DDP's gradient all-reduce would hang)."""
        failure = None
        if math.isfinite(loss_per_image):
            try:
                warning = self.divergence_guard.check(loss_per_image, step)
            except FloatingPointError as error:
                warning, failure = None, error
            if warning:
                rank_zero_warn(warning)
        flags = (not math.isfinite(loss_per_image), failure is not None)
        if trainer.world_size > 1:
            summed = trainer.strategy.reduce(torch.tensor(flags, dtype=torch.float32, device=device),
                                             reduce_op="sum")
            flags = tuple(bool(flag > 0) for flag in summed.tolist())
        if flags[1]:
            raise failure or FloatingPointError(f"training diverged on another rank at step {step}")
        return not self.nonfinite_guard.should_skip(not flags[0])

    # ------------------------------------------------------------------ checkpoint

    def state_dict(self) -> dict[str, Any]:
        return {"last_step": self.last_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_step = state.get("last_step")
