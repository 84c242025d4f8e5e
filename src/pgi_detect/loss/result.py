"""`LossResult`: what a training loss hands the task, whatever the loss: the total that backward receives and its
named parts for the logs."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor


@dataclass
class LossResult:
    """`total`: what backward receives (the official losses return the per-image loss times the batch size);
    `items`: detached named parts per image, logged as `train/<name>_loss` and summed as `train/loss`;
    `batch_size`: the images behind `total`, so `per_image()` is comparable across batch sizes (the loss guards)."""

    total: Tensor
    items: dict[str, Tensor]
    batch_size: int = 1

    def per_image(self) -> float:
        """The loss per image as a Python float: the step's one device -> host copy."""
        return float(self.total.detach()) / self.batch_size


def as_loss_result(output: LossResult | tuple[Tensor, Tensor], names: Sequence[str], batch_size: int) -> LossResult:
    """A criterion's output as a LossResult: one already, or the official `(total, items)` pair whose items are
    named by `names` (DetectionLoss.item_names)."""
    if isinstance(output, LossResult):
        return output
    total, items = output
    if len(items) != len(names):
        raise ValueError(f"the loss returned {len(items)} items for the names {list(names)}")
    return LossResult(total, {name: item for name, item in zip(names, items)}, batch_size)
