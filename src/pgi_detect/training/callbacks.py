"""Training callbacks of the YOLOv9 recipe: EMA weights, close-mosaic, validation-image logging, prediction
writing, plus the non-finite-loss guard used inside `DetectionTask.training_step`."""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import BasePredictionWriter, Callback, WeightAveraging
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
import torch
from torch import Tensor

from pgi_detect.geometry import Letterbox

if TYPE_CHECKING:  # lightning_module imports this module
    from pgi_detect.training.lightning_module import DetectionTask


def ema_decay(updates: float, decay: float = 0.9999, tau: float = 2000.0) -> float:
    """Decay of the reference ModelEMA after `updates` optimizer steps: decay·(1 − exp(−updates/tau)).

    Small at the start (the EMA follows the raw weights closely) and approaching `decay` after a few `tau` steps.
    """
    return decay * (1.0 - math.exp(-updates / tau))


class ModelEMA(WeightAveraging):
    """Exponential moving average of all weights and BatchNorm buffers, as in the official recipe.

    Built on Lightning's `WeightAveraging`, which swaps the average in for validation, writes it as the checkpoint's
    `state_dict` (raw weights go to `current_model_state`, restored on resume) and copies it into the module when
    training ends. The update count `n` equals the optimizer steps taken; the k-th update uses decay
    `ema_decay(k)` and the average starts from the initial weights, exactly like the reference. Integer buffers
    (`num_batches_tracked`) are copied, not averaged.
    """

    def __init__(self, decay: float = 0.9999, tau: float = 2000.0, device: str | None = None) -> None:
        super().__init__(device=device, use_buffers=True, avg_fn=self._average)
        self.decay = decay
        self.tau = tau

    def _average(self, averaged: Tensor, current: Tensor, num_averaged: Tensor) -> Tensor:
        if not averaged.is_floating_point():
            return current
        d = ema_decay(float(num_averaged), self.decay, self.tau)
        return averaged * d + current.to(averaged.dtype) * (1.0 - d)

    @property
    def updates(self) -> int:
        """Optimizer updates folded into the average so far."""
        if self._average_model is None:
            return 0
        return int(self._average_model.n_averaged) - 1

    @property
    def averaged_module(self) -> pl.LightningModule | None:
        """The averaged copy of the LightningModule (None outside `fit`)."""
        return None if self._average_model is None else self._average_model.module

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            # validate/test/predict: checkpoints already hold the EMA weights; an average left over from an
            # earlier fit must not be swapped in.
            self._average_model = None
            return
        super().setup(trainer, pl_module, stage)
        if self._average_model is not None:
            # AveragedModel copies on its first update; starting the count at 1 makes the first update average
            # the initial weights with decay ema_decay(1), as the reference does. Resume overwrites this count.
            self._average_model.n_averaged.fill_(1)

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        if self._average_model is None:
            return  # validate/test/predict: the checkpoint's state_dict already holds the EMA weights
        super().on_load_checkpoint(trainer, pl_module, checkpoint)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # `setup` runs before the strategy moves the module to its device; keep the average next to the weights.
        if self._device is None and self._average_model is not None:
            self._average_model.to(pl_module.device)


class CloseMosaic(Callback):
    """Switch mosaic (and with it mixup) off for the last `close_mosaic` epochs via `datamodule.set_mosaic(False)`.

    Applied at the start of every epoch >= max_epochs − close_mosaic. On resume the decision is also taken while
    the checkpoint loads, i.e. before Lightning creates the first data-loader iterator, so worker processes see it.
    """

    def __init__(self, close_mosaic: int = 15) -> None:
        self.close_mosaic = close_mosaic
        self.closed = False

    def first_closed_epoch(self, max_epochs: int) -> int:
        return max_epochs - self.close_mosaic

    def _close(self, trainer: pl.Trainer, epoch: int) -> None:
        if self.closed or self.close_mosaic <= 0 or trainer.max_epochs is None or trainer.max_epochs < 0:
            return
        if epoch < self.first_closed_epoch(trainer.max_epochs):
            return
        datamodule = getattr(trainer, "datamodule", None)
        set_mosaic = getattr(datamodule, "set_mosaic", None)
        if set_mosaic is None:
            rank_zero_warn("CloseMosaic: the datamodule has no set_mosaic(); mosaic stays as it is")
            return
        set_mosaic(False)
        self.closed = True
        rank_zero_info(f"CloseMosaic: mosaic off from epoch {epoch} (last {self.close_mosaic} epochs)")

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        # The checkpoint stores the epoch it was written in; training resumes in the next one (end-of-epoch
        # checkpoints, the usual case) so close if that next epoch is a closed one.
        self._close(trainer, int(checkpoint.get("epoch", 0)) + 1)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close(trainer, trainer.current_epoch)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close(trainer, trainer.current_epoch)


class NonFiniteLossGuard:
    """Decides whether a training step with a NaN/inf loss is skipped, and fails after too many in a row.

    One bad batch (an AMP overflow, a degenerate box) should not kill a long run, but a run that only produces
    non-finite losses is broken and must stop. Used by `DetectionTask.training_step`.
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


def _wandb_loggers(trainer: pl.Trainer) -> list[Any]:
    from lightning.pytorch.loggers import WandbLogger

    return [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]


def wandb_box_data(detections: Tensor, class_names: list[str] | None) -> dict:
    """wandb.Image `boxes` payload for one image's `(n, 6)` xyxy/score/class rows in that image's pixels."""
    rows = []
    for x1, y1, x2, y2, score, cls in detections.detach().float().cpu().tolist():
        index = int(cls)
        name = class_names[index] if class_names and index < len(class_names) else str(index)
        rows.append(
            {
                "position": {"minX": x1, "minY": y1, "maxX": x2, "maxY": y2},
                "domain": "pixel",
                "class_id": index,
                "box_caption": f"{name} {score:.2f}",
                "scores": {"score": score},
            }
        )
    labels = {i: n for i, n in enumerate(class_names)} if class_names else None
    payload: dict = {"box_data": rows}
    if labels:
        payload["class_labels"] = labels
    return {"predictions": payload}


class ValidationImageLogger(Callback):
    """Log the first validation batch's images with predicted boxes to wandb (no-op for other loggers).

    Expects `validation_step` to return `{"detections": [(n, 6) per image in original pixels]}`; boxes are drawn on
    the letterboxed network input.
    """

    def __init__(self, num_images: int = 8, every_n_epochs: int = 1, min_score: float = 0.25) -> None:
        self.num_images = num_images
        self.every_n_epochs = every_n_epochs
        self.min_score = min_score
        self.logged_count = 0

    def on_validation_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if batch_idx != 0 or trainer.sanity_checking or not trainer.is_global_zero:
            return
        if self.every_n_epochs <= 0 or trainer.current_epoch % self.every_n_epochs:
            return
        loggers = _wandb_loggers(trainer)
        if not loggers or not isinstance(outputs, dict) or "detections" not in outputs:
            return
        class_names = getattr(pl_module.hparams, "class_names", None)
        images = batch["images"][: self.num_images].detach().cpu()
        pictures, boxes = [], []
        for index, (image, dets) in enumerate(zip(images, outputs["detections"])):
            dets = dets[dets[:, 4] >= self.min_score].detach().float().cpu()
            letterbox = Letterbox(tuple(batch["orig_shapes"][index].tolist()), tuple(image.shape[-2:]),
                                  tuple(batch["scales"][index].tolist()), tuple(batch["pads"][index].tolist()))
            dets[:, :4] = torch.from_numpy(letterbox.boxes_to_input(dets[:, :4].numpy()))
            pictures.append(image.permute(1, 2, 0).numpy())
            boxes.append(wandb_box_data(dets, class_names))
        for logger in loggers:
            logger.log_image(key="val/predictions", images=pictures, boxes=boxes, step=trainer.global_step)
        self.logged_count += len(pictures)


class PredictionWriter(BasePredictionWriter):
    """Write `predict` results with pgi_detect.inference's writers: COCO-style json and annotated images.

    `output_dir` defaults to `<trainer.default_root_dir>/predictions`; under DDP each rank writes its share into
    `<output_dir>/rank<N>`.
    """

    def __init__(self, output_dir: str | None = None, save_images: bool = True, max_images: int | None = 100) -> None:
        super().__init__(write_interval="epoch")
        self.output_dir = output_dir
        self.save_images = save_images
        self.max_images = max_images

    def write_on_epoch_end(
        self, trainer: pl.Trainer, pl_module: DetectionTask, predictions: Any, batch_indices: Any
    ) -> None:
        from pgi_detect.inference import write_task_predictions

        per_image = [item for batch in predictions for item in batch]
        output_dir = Path(self.output_dir or Path(trainer.default_root_dir) / "predictions")
        if trainer.world_size > 1:
            output_dir = output_dir / f"rank{trainer.global_rank}"
        # The task's own lookup (datamodule first, then hparams): the same ids as its COCO evaluation uses.
        write_task_predictions(per_image, output_dir, category_ids=pl_module._category_ids(),
                               save_images=self.save_images, max_images=self.max_images)
        rank_zero_info(f"PredictionWriter: wrote {len(per_image)} images' predictions to {output_dir}")
