"""Training callbacks of the YOLOv9 recipe: EMA weights, close-mosaic, validation-image logging, prediction
writing. They use the task and the datamodule only through their public contracts (training/contracts.py)."""
from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import BasePredictionWriter, Callback, WeightAveraging
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
import torch
from torch import Tensor
from torch.optim.swa_utils import AveragedModel

from pgi_detect.geometry import Letterbox
from pgi_detect.inference import write_task_predictions
from pgi_detect.training.contracts import DetectionDataSource


def ema_decay(updates: float, decay: float = 0.9999, tau: float = 2000.0) -> float:
    """Decay of the reference ModelEMA after `updates` optimizer steps: decay·(1 − exp(−updates/tau)).

    Small at the start (the EMA follows the raw weights closely) and approaching `decay` after a few `tau` steps.
    """
    return decay * (1.0 - math.exp(-updates / tau))


class ModelEMA(WeightAveraging):
    """Exponential moving average of the detector's weights and BatchNorm buffers, as in the official recipe.

    Built on Lightning's `WeightAveraging`: the average is swapped in for validation, written as the checkpoint's
    `state_dict` (the raw weights go to `current_model_state` and are restored on resume) and copied into the module
    when training ends. Only `submodule` (the task's `detector`) is averaged, so the copy holds nothing else of the
    task. The update count `n` equals the optimizer steps taken; the k-th update uses decay `ema_decay(k)` and the
    average starts from the initial weights, exactly like the reference. Integer buffers (`num_batches_tracked`) are
    copied, not averaged. `submodule=None` averages the whole LightningModule.
    """

    def __init__(self, decay: float = 0.9999, tau: float = 2000.0, device: str | None = None,
                 submodule: str | None = "detector") -> None:
        super().__init__(device=device, use_buffers=True, avg_fn=self._average)
        self.decay = decay
        self.tau = tau
        self.submodule = submodule

    def _average(self, averaged: Tensor, current: Tensor, num_averaged: Tensor) -> Tensor:
        if not averaged.is_floating_point():
            return current
        d = ema_decay(float(num_averaged), self.decay, self.tau)
        return averaged * d + current.to(averaged.dtype) * (1.0 - d)

    def averaged_part(self, pl_module: pl.LightningModule) -> torch.nn.Module:
        """The module whose weights are averaged: `pl_module.<submodule>` (or the module itself)."""
        return pl_module if self.submodule is None else pl_module.get_submodule(self.submodule)

    @property
    def updates(self) -> int:
        """Optimizer updates folded into the average so far."""
        if self._average_model is None:
            return 0
        return int(self._average_model.n_averaged) - 1

    @property
    def averaged_module(self) -> torch.nn.Module | None:
        """The averaged copy of the detector (None outside `fit`)."""
        return None if self._average_model is None else self._average_model.module

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            # validate/test/predict: checkpoints already hold the EMA weights; an average left over from an
            # earlier fit must not be swapped in.
            self._average_model = None
            return
        device = self._device or pl_module.device
        self._average_model = AveragedModel(self.averaged_part(pl_module), device=device, use_buffers=True,
                                            avg_fn=self._average)
        # AveragedModel copies on its first update; starting the count at 1 makes the first update average the
        # initial weights with decay ema_decay(1), as the reference does. Resume overwrites this count.
        self._average_model.n_averaged.fill_(1)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # `setup` runs before the strategy moves the module to its device and precision; keep the average next to
        # the weights, in float32 at least (float64 under 64-true), like the reference's FP32 EMA.
        if self._average_model is not None:
            dtype = torch.promote_types(pl_module.dtype, torch.float32)
            self._average_model.to(device=self._device or pl_module.device, dtype=dtype)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # One update per optimizer step (the base class's rule), applied to the averaged part only.
        if self._average_model is not None and trainer.global_step > self._latest_update_step:
            self._average_model.update_parameters(self.averaged_part(pl_module))
            self._latest_update_step = trainer.global_step

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._average_model is not None:
            for average, current in self._pairs(pl_module):
                current.data.copy_(average.data)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._swap(pl_module)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._swap(pl_module)

    def _pairs(self, pl_module: pl.LightningModule) -> Iterator[tuple[Tensor, Tensor]]:
        assert self._average_model is not None
        averaged = self._average_model.module
        current = self.averaged_part(pl_module)
        return zip(itertools.chain(averaged.parameters(), averaged.buffers()),
                   itertools.chain(current.parameters(), current.buffers()))

    def _swap(self, pl_module: pl.LightningModule) -> None:
        if self._average_model is None:
            return
        for average, current in self._pairs(pl_module):
            held = average.data.clone()
            average.data.copy_(current.data)
            current.data.copy_(held)

    def _prefix(self) -> str:
        return "" if self.submodule is None else f"{self.submodule}."

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        """`state_dict` gets the averaged weights (what validate/predict/export load), `current_model_state` the raw
        ones and `averaging_state` the update count (both restored on resume)."""
        if self._average_model is None:
            return  # outside fit the module already holds the averaged weights
        averaged = self._average_model.state_dict()
        prefix = self._prefix()
        checkpoint["current_model_state"] = checkpoint["state_dict"]
        checkpoint["state_dict"] = {
            **checkpoint["state_dict"],
            **{prefix + name[len("module."):]: value for name, value in averaged.items() if name.startswith("module.")},
        }
        checkpoint["averaging_state"] = {k: v for k, v in averaged.items() if not k.startswith("module.")}

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        if self._average_model is None:
            return  # validate/test/predict: the checkpoint's state_dict already holds the EMA weights
        prefix = self._prefix()
        if "current_model_state" in checkpoint and "averaging_state" in checkpoint:
            averaged = {"module." + k[len(prefix):]: v for k, v in checkpoint["state_dict"].items()
                        if k.startswith(prefix)}
            self._average_model.load_state_dict({**averaged, **checkpoint["averaging_state"]})
            pl_module.load_state_dict(checkpoint["current_model_state"])
        else:
            rank_zero_warn("ModelEMA: the checkpoint holds no EMA state; the average restarts from its weights")
            part = {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
            self._average_model.module.load_state_dict(part)


def resumed_epoch(checkpoint: dict) -> int:
    """The epoch a fit resumed from `checkpoint` trains in: the next one after an end-of-epoch checkpoint, the same
    one after a mid-epoch one (Ctrl-C, preemption). Lightning counts an epoch as processed once its batches ran."""
    try:
        return int(checkpoint["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])
    except (KeyError, TypeError):
        return int(checkpoint.get("epoch", 0)) + 1


class CloseMosaic(Callback):
    """Switch mosaic (and with it mixup) off for the last `close_mosaic` epochs via `datamodule.set_mosaic(False)`.

    Applied at the start of every epoch >= max_epochs − close_mosaic. The first epoch of a run is decided before
    Lightning creates its data-loader iterator (whose workers prefetch batches before any epoch hook runs): at
    `setup` for a new run, while the checkpoint loads for a resumed one.
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
        datamodule = trainer.datamodule
        if not isinstance(datamodule, DetectionDataSource):
            rank_zero_warn("CloseMosaic: the datamodule is not a DetectionDataSource (no set_mosaic); mosaic stays on")
            return
        datamodule.set_mosaic(False)
        self.closed = True
        rank_zero_info(f"CloseMosaic: mosaic off from epoch {epoch} (last {self.close_mosaic} epochs)")

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._close(trainer, 0)  # a resumed run is decided again when its checkpoint loads

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        # Only a resumed fit trains on: validate/test/predict of a checkpoint never touch the training data.
        if trainer.state.fn != "fit":
            return
        self._close(trainer, resumed_epoch(checkpoint))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close(trainer, trainer.current_epoch)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close(trainer, trainer.current_epoch)


def _wandb_loggers(trainer: pl.Trainer) -> list[Any]:
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
        class_names = pl_module.class_names
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
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, predictions: Any, batch_indices: Any
    ) -> None:
        per_image = [item for batch in predictions for item in batch]
        output_dir = Path(self.output_dir or Path(trainer.default_root_dir) / "predictions")
        if trainer.world_size > 1:
            output_dir = output_dir / f"rank{trainer.global_rank}"
        # The task's category ids: the same as its COCO evaluation uses.
        write_task_predictions(per_image, output_dir, category_ids=pl_module.category_ids,
                               save_images=self.save_images, max_images=self.max_images)
        rank_zero_info(f"PredictionWriter: wrote {len(per_image)} images' predictions to {output_dir}")
