"""The optimisation side of the official YOLOv9 recipe, in pure PyTorch (no Lightning): its settings, parameter
groups, weight-decay scaling with the nominal batch of 64, gradient accumulation (ramped during warmup, as the
official loop does), the per-iteration warmup followed by a per-epoch linear or cosine decay, and the guard that
skips steps with a non-finite loss.
"""
from __future__ import annotations

import collections
import math
import statistics
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import torch
from torch import nn

from pgi_detect.settings import AT_LEAST_ONE, NON_NEGATIVE, Range, check_ranges

OptimizerName = Literal["sgd", "adamw"]
DecayName = Literal["linear", "cosine", "flat"]

NOMINAL_BATCH_SIZE = 64

# Every normalisation layer whose affine weight must not be decayed (BatchNorm/SyncBatchNorm/InstanceNorm share
# _NormBase; LayerNorm and GroupNorm do not).
_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
)


def accumulate_steps(global_batch_size: int, nominal_batch_size: int = NOMINAL_BATCH_SIZE) -> int:
    """Batches per optimizer step so one step sees ~`nominal_batch_size` images: max(round(64 / bs), 1).

    Python rounds half to even like the reference, so bs 128 gives 1 (round(0.5) == 0).
    """
    if global_batch_size <= 0:
        raise ValueError(f"batch size must be positive, got {global_batch_size}")
    return AccumulationSchedule(nominal_ratio=nominal_batch_size / global_batch_size).final


def scaled_weight_decay(
    weight_decay: float, global_batch_size: int, accumulate: int, nominal_batch_size: int = NOMINAL_BATCH_SIZE
) -> float:
    """Weight decay scaled by the images per optimizer step relative to the nominal batch (bs·accumulate/64).

    Reproduces the reference including its quirk: 5e-4 becomes 1e-3 at batch 128 (accumulate 1).
    """
    return weight_decay * global_batch_size * accumulate / nominal_batch_size


def parameter_groups(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter], list[nn.Parameter]]:
    """Split parameters like the reference: (biases, weights to decay, norm-layer weights).

    Every `bias` parameter goes to group 0, weights of normalisation layers to group 2, and all other parameters
    (conv/linear weights, including frozen ones such as the DFL projection) to group 1.
    """
    biases: list[nn.Parameter] = []
    decayed: list[nn.Parameter] = []
    norm_weights: list[nn.Parameter] = []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if name == "bias":
                biases.append(param)
            elif name == "weight" and isinstance(module, _NORM_TYPES):
                norm_weights.append(param)
            else:
                decayed.append(param)
    return biases, decayed, norm_weights


def build_optimizer(
    model: nn.Module,
    name: OptimizerName = "sgd",
    lr: float = 0.01,
    momentum: float = 0.937,
    weight_decay: float = 5e-4,
) -> torch.optim.Optimizer:
    """Optimizer over the three parameter groups in reference order [biases, decayed weights, norm weights].

    `weight_decay` is applied to group 1 only and should already be scaled (`scaled_weight_decay`). For AdamW,
    `momentum` is used as beta1 so that the momentum warmup still applies.
    """
    biases, decayed, norm_weights = parameter_groups(model)
    groups = [
        {"params": biases, "weight_decay": 0.0},
        {"params": decayed, "weight_decay": weight_decay},
        {"params": norm_weights, "weight_decay": 0.0},
    ]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(momentum, 0.999))
    raise ValueError(f"unknown optimizer {name!r}; use 'sgd' or 'adamw'")


def lr_factor(epoch: int, epochs: int, lrf: float, decay: DecayName = "linear") -> float:
    """Multiplier of the base lr during `epoch` (0-based): linear (1-e/E)(1-lrf)+lrf, cosine to lrf, or flat 1."""
    if decay == "linear":
        return (1.0 - epoch / epochs) * (1.0 - lrf) + lrf
    if decay == "cosine":
        return lrf + (1.0 - lrf) * (1.0 + math.cos(math.pi * epoch / epochs)) / 2.0
    if decay == "flat":
        return 1.0
    raise ValueError(f"unknown lr decay {decay!r}; use 'linear', 'cosine' or 'flat'")


def warmup_iterations(warmup_epochs: float, batches_per_epoch: int, min_iterations: int = 100) -> int:
    """Warmup length in batches: max(round(warmup_epochs · nb), 100); 0 disables warmup entirely."""
    if warmup_epochs <= 0:
        return 0
    return max(round(warmup_epochs * batches_per_epoch), min_iterations)


@dataclass(frozen=True)
class RecipeSchedule:
    """Learning rate and momentum of each parameter group as a pure function of (iteration, epoch).

    `iteration` counts training batches since the start of training (not optimizer steps), like the reference's
    `ni`. During the first `warmup_iters` batches the bias lr falls from `warmup_bias_lr` and the other lrs rise from
    0 to the epoch's lr, and momentum rises from `warmup_momentum`; afterwards lr = lr0 · lr_factor(epoch), or, with
    `lr_decay_lag` (the official loop), lr0 · lr_factor(epoch - 1) from the epoch after the one in which warmup ends:
    the official loop sets its LambdaLR back to `last_epoch = -1` after building it, so every epoch's step at its end
    re-applies the factor of the epoch just finished. Being stateless, it resumes exactly from a checkpoint's epoch
    and step without a scheduler state.
    """

    lr0: float = 0.01
    lrf: float = 0.01
    epochs: int = 500
    decay: DecayName = "linear"
    momentum: float = 0.937
    warmup_iters: int = 0
    warmup_bias_lr: float = 0.1
    warmup_momentum: float = 0.8
    batches_per_epoch: int = 0
    lr_decay_lag: bool = True

    def epoch_lr(self, epoch: int) -> float:
        return self.lr0 * lr_factor(epoch, self.epochs, self.lrf, self.decay)

    def in_warmup(self, iteration: int) -> bool:
        return self.warmup_iters > 0 and iteration <= self.warmup_iters

    def decay_epoch(self, epoch: int) -> int:
        """The epoch whose factor the lr follows after warmup (see the class docstring)."""
        if not self.lr_decay_lag:
            return epoch
        warmup_end_epoch = self.warmup_iters // self.batches_per_epoch if self.batches_per_epoch > 0 else 0
        return epoch if epoch <= warmup_end_epoch else epoch - 1

    def lr(self, group_index: int, iteration: int, epoch: int) -> float:
        if not self.in_warmup(iteration):
            return self.epoch_lr(self.decay_epoch(epoch))
        start = self.warmup_bias_lr if group_index == 0 else 0.0
        return float(np.interp(iteration, [0, self.warmup_iters], [start, self.epoch_lr(epoch)]))

    def momentum_at(self, iteration: int) -> float:
        if not self.in_warmup(iteration):
            return self.momentum
        return float(np.interp(iteration, [0, self.warmup_iters], [self.warmup_momentum, self.momentum]))

    def apply(self, optimizer: torch.optim.Optimizer, iteration: int, epoch: int) -> None:
        """Write this iteration's lr and momentum (beta1 for Adam-style optimizers) into every group."""
        momentum = self.momentum_at(iteration)
        for index, group in enumerate(optimizer.param_groups):
            group["lr"] = self.lr(index, iteration, epoch)
            if "betas" in group:
                group["betas"] = (momentum, group["betas"][1])
            elif "momentum" in group:
                group["momentum"] = momentum


@dataclass(frozen=True)
class AccumulationSchedule:
    """Which batches end with an optimizer step, as in the official loop.

    During warmup the number of batches per step ramps: accumulate(ni) = max(1, round(interp(ni, [0, nw], [1,
    nominal / global batch]))), then stays at max(round(nominal / global batch), 1). Batch `ni` ends with a step when
    ni - last_step >= accumulate(ni), counted across epoch boundaries; the loop clears the gradients at the start of
    every epoch, so batches accumulated after an epoch's last step do not reach a step (the task does the same).
    """

    nominal_ratio: float = 1.0  # nominal batch / global batch (1: a step after every batch)
    warmup_iters: int = 0

    @property
    def final(self) -> int:
        return max(round(self.nominal_ratio), 1)

    def accumulate_at(self, iteration: int) -> int:
        if self.warmup_iters > 0 and iteration <= self.warmup_iters:
            ramp = np.interp(iteration, [0, self.warmup_iters], [1.0, self.nominal_ratio])
            return max(1, int(np.round(ramp)))
        return self.final

    def steps_at(self, iteration: int, last_step: int) -> bool:
        """Whether batch `iteration` ends with a step, the previous step having been at batch `last_step`."""
        return iteration - last_step >= self.accumulate_at(iteration)

    def last_step_before(self, iteration: int) -> int:
        """The batch of the last step before batch `iteration` (-1: none yet), for a resume that lacks it."""
        last = -1
        ramp_end = min(iteration, self.warmup_iters + 1)
        for n in range(ramp_end):
            if self.steps_at(n, last):
                last = n
        if iteration <= ramp_end:
            return last
        first = max(ramp_end, last + self.final)  # after the ramp the steps are `final` batches apart
        if first > iteration - 1:
            return last
        return first + (iteration - 1 - first) // self.final * self.final


@dataclass(frozen=True)
class OptimizerSettings:
    """The recipe's optimizer, schedule and batch-size rules (`--model.optim.<field>` on the command line).

    optimizer: "sgd" (nesterov, the recipe) or "adamw" (`momentum` is then beta1, so the warmup still applies).
    lr0, lrf: initial lr and final lr fraction; lr_decay: per-epoch "linear" (recipe), "cosine" or "flat".
    warmup_epochs, min_warmup_iters: warmup length max(round(warmup_epochs * batches), min_warmup_iters) batches;
        the bias lr falls from warmup_bias_lr and momentum rises from warmup_momentum during it.
    nominal_batch_size: images per optimizer step the recipe is tuned for; with `auto_accumulate` gradient
        accumulation is max(round(64 / global batch), 1), ramped from 1 during warmup as the official loop does,
        and weight decay is scaled by global·accumulate/64.
    gradient_clip_norm: clip the gradient norm before each step (recipe 10; null: no clipping).
    lr_decay_lag: after warmup, each epoch runs at the previous epoch's decay factor, as the official loop does
        (its LambdaLR is reset to last_epoch -1); false: lr0 · lf(epoch), the schedule as written.
    """

    optimizer: OptimizerName = "sgd"
    lr0: float = 0.01
    lrf: float = 0.01
    momentum: float = 0.937
    weight_decay: float = 5e-4
    lr_decay: DecayName = "linear"
    warmup_epochs: float = 3.0
    min_warmup_iters: int = 100
    warmup_bias_lr: float = 0.1
    warmup_momentum: float = 0.8
    nominal_batch_size: int = NOMINAL_BATCH_SIZE
    auto_accumulate: bool = True
    gradient_clip_norm: float | None = 10.0
    lr_decay_lag: bool = True

    RANGES: ClassVar[dict[str, Range]] = {
        "lr0": NON_NEGATIVE, "lrf": NON_NEGATIVE, "momentum": Range(0, 1, high_open=True),
        "weight_decay": NON_NEGATIVE, "warmup_epochs": NON_NEGATIVE, "min_warmup_iters": NON_NEGATIVE,
        "warmup_bias_lr": NON_NEGATIVE, "warmup_momentum": Range(0, 1, high_open=True),
        "nominal_batch_size": AT_LEAST_ONE, "gradient_clip_norm": Range(0, low_open=True, optional=True)}

    def __post_init__(self) -> None:
        check_ranges(self, self.RANGES)

    def accumulation(self, global_batch_size: int) -> int:
        """Batches per optimizer step after warmup (1 without `auto_accumulate`)."""
        return accumulate_steps(global_batch_size, self.nominal_batch_size) if self.auto_accumulate else 1

    def accumulation_schedule(self, global_batch_size: int, warmup_iters: int) -> AccumulationSchedule:
        ratio = self.nominal_batch_size / global_batch_size if self.auto_accumulate else 1.0
        return AccumulationSchedule(nominal_ratio=ratio, warmup_iters=warmup_iters)

    def build_optimizer(self, model: nn.Module, global_batch_size: int, accumulate: int) -> torch.optim.Optimizer:
        """The three-group optimizer with the weight decay scaled for this global batch and accumulation."""
        weight_decay = scaled_weight_decay(self.weight_decay, global_batch_size, accumulate, self.nominal_batch_size)
        return build_optimizer(model, self.optimizer, self.lr0, self.momentum, weight_decay)

    def schedule(self, epochs: int, batches_per_epoch: int) -> RecipeSchedule:
        return RecipeSchedule(
            lr0=self.lr0, lrf=self.lrf, epochs=max(int(epochs), 1), decay=self.lr_decay, momentum=self.momentum,
            warmup_iters=warmup_iterations(self.warmup_epochs, batches_per_epoch, self.min_warmup_iters),
            warmup_bias_lr=self.warmup_bias_lr, warmup_momentum=self.warmup_momentum,
            batches_per_epoch=max(int(batches_per_epoch), 0), lr_decay_lag=self.lr_decay_lag,
        )


@dataclass(frozen=True)
class GuardSettings:
    """When a run is broken rather than unlucky (`--model.guard.<field>`).

    max_nonfinite_steps: a NaN/inf loss skips its step; this many in a row stop training.
    divergence_factor: a loss above this multiple of the running median of recent losses counts as diverging
        (a warning); 0 disables the check.
    divergence_patience: this many diverging steps in a row stop training.
    divergence_window: how many recent losses the running median covers; the check starts once it is full.
    """

    max_nonfinite_steps: int = 10
    divergence_factor: float = 10.0
    divergence_patience: int = 50
    divergence_window: int = 100

    RANGES: ClassVar[dict[str, Range]] = {"max_nonfinite_steps": AT_LEAST_ONE, "divergence_factor": NON_NEGATIVE,
                                          "divergence_patience": AT_LEAST_ONE, "divergence_window": AT_LEAST_ONE}

    def __post_init__(self) -> None:
        check_ranges(self, self.RANGES)


class DivergenceGuard:
    """Flags losses far above their running median, and stops a run whose loss stays there.

    Gradient clipping keeps an exploding run finite (its loss can grow to 1e18 with weights near 1e22), so the
    non-finite guard never fires; a loss many times its recent median, for many steps in a row, is the symptom.
    """

    def __init__(self, factor: float = 10.0, patience: int = 50, window: int = 100) -> None:
        self.factor, self.patience = float(factor), int(patience)
        self.recent: collections.deque[float] = collections.deque(maxlen=max(int(window), 1))
        self.consecutive = 0

    def check(self, loss: float, step: int) -> str | None:
        """A warning for a diverging loss (None when it is not); raises once `patience` steps in a row diverged."""
        if self.factor <= 0 or not math.isfinite(loss):
            return None
        median = statistics.median(self.recent) if len(self.recent) == self.recent.maxlen else None
        if median is None or loss <= self.factor * median:
            self.consecutive = 0
            self.recent.append(loss)
            return None
        self.consecutive += 1  # diverging losses stay out of the median, so it keeps describing the healthy run
        message = (f"training loss {loss:.4g} at step {step} is {loss / median:.3g}x the median {median:.4g} of the "
                   f"last {len(self.recent)} steps")
        if self.patience > 0 and self.consecutive >= self.patience:
            raise FloatingPointError(
                f"{message}, for {self.consecutive} steps in a row: training diverged, stopping. Likely causes: a "
                "learning rate too high for this batch size (model.optim.lr0, warmup), bad labels (run `pgi-detect "
                "check-data`), or float16 overflow (try --trainer.precision bf16-mixed)"
            )
        return message


class NonFiniteLossGuard:
    """Decides whether a training step with a NaN/inf loss is skipped, and fails after too many in a row.

    One bad batch (an AMP overflow, a degenerate box) should not kill a long run, but a run that only produces
    non-finite losses is broken and must stop.
    """

    def __init__(self, max_consecutive: int = 10) -> None:
        self.max_consecutive = max_consecutive
        self.consecutive = 0
        self.total_skipped = 0

    def should_skip(self, finite: bool) -> bool:
        if finite:
            self.consecutive = 0
            return False
        self.consecutive += 1
        self.total_skipped += 1
        if self.max_consecutive > 0 and self.consecutive >= self.max_consecutive:
            raise FloatingPointError(
                f"{self.consecutive} consecutive training steps had a non-finite loss; stopping "
                "(lower the learning rate, check the data with `pgi-detect check-data`, or try bf16-mixed)"
            )
        return True
