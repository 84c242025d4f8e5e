"""`DetectionTask`: the LightningModule that trains a zoo detector with the official YOLOv9 recipe and scores it
with COCO mAP (main branch, stripped and fused, EMA weights during fit)."""
from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor

from pgi_detect.evaluation import evaluate_detections, fitness, rows_to_coco
from pgi_detect.geometry import NMSSettings, postprocess
from pgi_detect.loss import DetectionLoss
from pgi_detect.models import (
    CHECKPOINT_RECORD,
    Backbone,
    DetectorSpec,
    build_detector,
    checkpoint_record,
    load_weights_into,
)
from pgi_detect.training.callbacks import NonFiniteLossGuard
from pgi_detect.training.optim import (
    DecayName,
    OptimizerName,
    RecipeSchedule,
    accumulate_steps,
    build_optimizer,
    scaled_weight_decay,
    warmup_iterations,
)

# Logged metric name -> key of evaluate_detections().
EVAL_METRICS = {
    "mAP": "AP",
    "mAP50": "AP50",
    "mAP75": "AP75",
    "mAP_small": "APs",
    "mAP_medium": "APm",
    "mAP_large": "APl",
}


class DerivedModels:
    """Models derived from the task's detector (the eval copy, the compiled wrapper), kept off the module tree so
    that state_dict(), parameters() and the EMA swap never see them. Copies and pickles of the task (the EMA
    callback deep-copies it) start without them and rebuild their own from their own detector."""

    def __init__(self) -> None:
        self.eval_model: torch.nn.Module | None = None
        self.compiled_detector: torch.nn.Module | None = None

    def __deepcopy__(self, memo: dict) -> "DerivedModels":
        return DerivedModels()

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()


class DetectionTask(pl.LightningModule):
    """Train / validate / test / predict a `pgi_detect` zoo model.

    Args:
        model: zoo name (`gelan-{t,s,m,c,e}`, `yolov9-{t,s,m,c,e}`), or a free label when `backbone` is given.
        backbone: optional custom backbone (any `pgi_detect.models.Backbone`, e.g. `TimmBackbone`): the detector
            is then `Detector.from_backbone(backbone, num_classes, neck=neck)` instead of a zoo model.
        neck: GELAN neck widths for a custom backbone ("gelan-t" or "gelan-s").
        num_classes, class_names, category_ids: linked from the datamodule by the CLI; `category_ids` maps a
            contiguous class index to the dataset category id written into COCO results.
        cls_width: optional width of the detect heads' class branches. None (default) keeps the official
            `max(ch0, min(2·nc, 128))`; 80 on gelan-t / yolov9-t gives the official README's 2.0M params /
            7.7 GFLOPs inference model (docs/models.md). Saved in the hyperparameters, so checkpoints rebuild
            the same shapes. `weights` of another class width skip the class-branch tensors (shape differs).
        weights: optional checkpoint (a DetectionTask .ckpt or a plain state dict) to initialise from; tensors
            whose shapes differ (e.g. a head for another class count) are skipped.
        batch_size: images per device and step; linked from the datamodule. Used for the nominal-batch rules.
        optimizer: "sgd" (nesterov, the recipe) or "adamw"; lr0/momentum/weight_decay are its arguments.
        lr_decay: per-epoch decay after warmup, "linear" (recipe), "cosine" or "flat"; it ends at lr0·lrf.
        nominal_batch_size: images per optimizer step the recipe is tuned for (64). With `auto_accumulate` the
            task sets `trainer.accumulate_grad_batches = max(round(64 / global_batch), 1)` unless the Trainer was
            given a value other than 1; weight decay is scaled by global_batch·accumulate/64 either way.
        gradient_clip_norm: clip the gradient norm before each step (recipe: 10); `Trainer(gradient_clip_val=...)`
            overrides it.
        max_nonfinite_steps: a NaN/inf loss skips its step; this many in a row stops training.
        conf_thres, iou_thres, multi_label, max_det: NMS for COCO evaluation (recipe: 0.001, 0.7, True, 300).
        predict_*: NMS for `predict` (detect.py: 0.25, 0.45, single label).
        fuse_for_eval: evaluate the stripped + fused model (identical maths, faster) instead of the raw one.
        eval_backend: "faster" (faster-coco-eval) or "pycocotools".
        channels_last: keep weights and images in NHWC layout (training and evaluation). On CPU this makes the
            t/s training steps about 20-25 % faster (docs/benchmarks.md); on GPUs it is what AMP convolutions
            prefer.
        compile: `torch.compile` the training forward: True, or a dict of `torch.compile` keyword arguments
            (e.g. `{mode: max-autotune}`). The first step pays the compilation; checkpoints and state-dict keys
            are unchanged, and evaluation keeps running the eager stripped + fused copy (no recompiles for
            rectangular batches).
    """

    def __init__(
        self,
        model: str = "gelan-c",
        backbone: Backbone | None = None,
        neck: str = "gelan-s",
        num_classes: int = 80,
        cls_width: int | None = None,
        class_names: list[str] | None = None,
        category_ids: list[int] | None = None,
        weights: str | None = None,
        batch_size: int | None = None,
        optimizer: OptimizerName = "sgd",
        lr0: float = 0.01,
        lrf: float = 0.01,
        momentum: float = 0.937,
        weight_decay: float = 5e-4,
        lr_decay: DecayName = "linear",
        warmup_epochs: float = 3.0,
        min_warmup_iters: int = 100,
        warmup_bias_lr: float = 0.1,
        warmup_momentum: float = 0.8,
        nominal_batch_size: int = 64,
        auto_accumulate: bool = True,
        gradient_clip_norm: float | None = 10.0,
        max_nonfinite_steps: int = 10,
        conf_thres: float = 0.001,
        iou_thres: float = 0.7,
        multi_label: bool = True,
        max_det: int = 300,
        predict_conf_thres: float = 0.25,
        predict_iou_thres: float = 0.45,
        predict_max_det: int = 300,
        fuse_for_eval: bool = True,
        eval_backend: Literal["faster", "pycocotools"] = "faster",
        channels_last: bool = False,
        compile: bool | dict[str, Any] = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        # Under the LightningCLI the saved hyperparameters hold the backbone's {class_path, init_args} (portable);
        # from Python they hold the module itself.
        self.spec = DetectorSpec(model, num_classes, cls_width, self.hparams.get("backbone"), neck)
        self.detector = build_detector(self.spec)
        self.criterion = DetectionLoss(
            num_classes, strides=tuple(self.detector.strides), reg_max=self.detector.reg_max
        )
        if weights:
            rank_zero_info(f"DetectionTask: {load_weights_into(self.detector, weights)}")
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.detector.to(memory_format=self.memory_format)
        self.nonfinite_guard = NonFiniteLossGuard(max_nonfinite_steps)
        self.schedule: RecipeSchedule | None = None
        self._eval_rows: list[tuple[int, np.ndarray]] = []
        self.last_eval: dict[str, Any] = {}
        self.derived = DerivedModels()

    # ------------------------------------------------------------------ model forms

    def forward(self, images: Tensor) -> list[list[Tensor]]:
        """Raw per-branch maps for float images in [0, 1] (main branch last)."""
        return self.detector(images)

    def inference_model(self) -> torch.nn.Module:
        """A stripped (main branch only), fused copy of the current weights in eval mode, for eval and export."""
        return self.detector.inference_copy().to(memory_format=self.memory_format)

    def training_detector(self) -> torch.nn.Module:
        """The detector as the training step calls it: compiled on first use when `compile` is set.

        The compiled wrapper shares the detector's parameters; it lives in `self.derived` so that checkpoints,
        the EMA copy and `inference_copy()` only ever see the plain detector."""
        options = self.hparams.compile
        if not options:
            return self.detector
        if self.derived.compiled_detector is None:
            kwargs = options if isinstance(options, dict) else {}
            self.derived.compiled_detector = torch.compile(self.detector, **kwargs)
        return self.derived.compiled_detector

    def _network_input(self, images: Tensor) -> Tensor:
        """uint8 batch -> float in [0, 1], in the detector's memory format."""
        return (images.float() / 255.0).contiguous(memory_format=self.memory_format)

    def _build_eval_model(self) -> None:
        # Called after the EMA callback has swapped its weights in (callback hooks run before module hooks).
        model = self.inference_model() if self.hparams.fuse_for_eval else self.detector
        self.derived.eval_model = model

    # ------------------------------------------------------------------ batch-size rules

    def per_device_batch_size(self) -> int:
        if self.hparams.batch_size:
            return int(self.hparams.batch_size)
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        size = getattr(datamodule, "batch_size", None)
        if isinstance(size, int) and size > 0:
            return size
        rank_zero_warn("DetectionTask: batch size unknown (pass model.batch_size); assuming 16 for the recipe rules")
        return 16

    def global_batch_size(self) -> int:
        return self.per_device_batch_size() * self.trainer.world_size

    def setup(self, stage: str) -> None:
        if stage != "fit" or not self.hparams.auto_accumulate:
            return
        if self.trainer.accumulate_grad_batches == 1:
            steps = accumulate_steps(self.global_batch_size(), self.hparams.nominal_batch_size)
            self.trainer.accumulate_grad_batches = steps
            rank_zero_info(
                f"DetectionTask: global batch {self.global_batch_size()} -> accumulate_grad_batches={steps} "
                f"(nominal batch {self.hparams.nominal_batch_size})"
            )

    # ------------------------------------------------------------------ optimisation

    def configure_optimizers(self) -> torch.optim.Optimizer:
        accumulate = self.trainer.accumulate_grad_batches
        weight_decay = scaled_weight_decay(
            self.hparams.weight_decay, self.global_batch_size(), accumulate, self.hparams.nominal_batch_size
        )
        return build_optimizer(
            self.detector, self.hparams.optimizer, self.hparams.lr0, self.hparams.momentum, weight_decay
        )

    def on_train_start(self) -> None:
        batches = self.trainer.num_training_batches
        batches = int(batches) if np.isfinite(batches) else 1000
        self.schedule = RecipeSchedule(
            lr0=self.hparams.lr0,
            lrf=self.hparams.lrf,
            epochs=max(int(self.trainer.max_epochs or 1), 1),
            decay=self.hparams.lr_decay,
            momentum=self.hparams.momentum,
            warmup_iters=warmup_iterations(self.hparams.warmup_epochs, batches, self.hparams.min_warmup_iters),
            warmup_bias_lr=self.hparams.warmup_bias_lr,
            warmup_momentum=self.hparams.warmup_momentum,
        )

    def training_iteration(self, batch_idx: int) -> int:
        """Batches seen since training began (the recipe's `ni`), consistent across resume."""
        batches = self.trainer.num_training_batches
        batches = int(batches) if np.isfinite(batches) else 0
        return self.trainer.current_epoch * batches + batch_idx

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self.schedule is not None:
            optimizer = self.optimizers(use_pl_optimizer=False)
            self.schedule.apply(optimizer, self.training_iteration(batch_idx), self.trainer.current_epoch)

    def configure_gradient_clipping(
        self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        if gradient_clip_val:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm or "norm")
        elif self.hparams.gradient_clip_norm:
            self.clip_gradients(optimizer, self.hparams.gradient_clip_norm, "norm")

    def backward_scale(self) -> float:
        """Factor that makes the gradient equal the reference's: its loss is summed over accumulated batches and
        multiplied by WORLD_SIZE, while Lightning divides by accumulate_grad_batches and DDP averages ranks."""
        return float(self.trainer.accumulate_grad_batches * self.trainer.world_size)

    def compute_loss(self, batch: dict) -> tuple[Tensor, Tensor]:
        branches = self.training_detector()(self._network_input(batch["images"]))
        # The loss (assignment, IoU, DFL) always runs in float32, whatever the Trainer precision.
        with torch.autocast(device_type=self.device.type, enabled=False):
            branches = [[level.float() for level in branch] for branch in branches]
            return self.criterion(branches, batch["targets"].float())

    def training_step(self, batch: dict, batch_idx: int) -> Tensor | None:
        loss, items = self.compute_loss(batch)
        nonfinite = not bool(torch.isfinite(loss).item())
        if self.trainer.world_size > 1:
            # Every rank must skip together, otherwise DDP's gradient all-reduce would hang.
            nonfinite = bool(self.trainer.strategy.reduce_boolean_decision(nonfinite, all=False))
        if self.nonfinite_guard.should_skip(not nonfinite):
            rank_zero_warn(f"non-finite loss at step {self.global_step} (batch {batch_idx}); step skipped")
            self.log("train/nonfinite_skipped", float(self.nonfinite_guard.total_skipped), on_step=True)
            return None
        batch_size = batch["images"].shape[0]
        box, cls, dfl = items.float()
        self.log("train/loss", box + cls + dfl, prog_bar=True, on_step=True, on_epoch=True, batch_size=batch_size)
        self.log_dict(
            {"train/box_loss": box, "train/cls_loss": cls, "train/dfl_loss": dfl},
            on_step=True, on_epoch=True, batch_size=batch_size,
        )
        optimizer = self.optimizers(use_pl_optimizer=False)
        groups = optimizer.param_groups
        self.log_dict(
            {"train/lr_bias": groups[0]["lr"], "train/lr": groups[1]["lr"]}, on_step=True, on_epoch=False,
            batch_size=batch_size,
        )
        return loss * self.backward_scale()

    # ------------------------------------------------------------------ evaluation

    def on_validation_epoch_start(self) -> None:
        self._build_eval_model()
        self._eval_rows = []

    def on_test_epoch_start(self) -> None:
        self.on_validation_epoch_start()

    def on_predict_epoch_start(self) -> None:
        self._build_eval_model()

    def _decoded_predictions(self, batch: dict) -> Tensor:
        model = self.derived.eval_model if self.derived.eval_model is not None else self.detector
        main_maps = model(self._network_input(batch["images"]))[-1]
        with torch.autocast(device_type=self.device.type, enabled=False):
            return model.decode([m.float() for m in main_maps])

    def _detections(self, batch: dict, nms: NMSSettings) -> list[Tensor]:
        """Per image `(n, 6)` rows `[x1, y1, x2, y2, score, class]` in original pixels."""
        return postprocess(self._decoded_predictions(batch), nms, batch["scales"], batch["pads"], batch["orig_shapes"])

    def _eval_step(self, batch: dict) -> dict:
        hp = self.hparams
        original = self._detections(batch, NMSSettings(hp.conf_thres, hp.iou_thres, hp.multi_label, hp.max_det))
        # One device->host copy per batch, then split per image.
        host_rows = torch.cat(original).detach().float().cpu().numpy()
        per_image = np.split(host_rows, np.cumsum([len(rows) for rows in original])[:-1])
        for image_id, rows in zip(batch["image_ids"].tolist(), per_image):
            self._eval_rows.append((int(image_id), rows))
        return {"detections": original}

    def validation_step(self, batch: dict, batch_idx: int) -> dict:
        return self._eval_step(batch)

    def test_step(self, batch: dict, batch_idx: int) -> dict:
        return self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        self._finish_eval("val")

    def on_test_epoch_end(self) -> None:
        self._finish_eval("test")

    def _gather_rows(self) -> dict[int, np.ndarray]:
        """All ranks' per-image rows, each image once (DistributedSampler pads by repeating images)."""
        parts: list[list[tuple[int, np.ndarray]]] = [self._eval_rows]
        if self.trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            parts = [None] * dist.get_world_size()  # type: ignore[list-item]
            dist.all_gather_object(parts, self._eval_rows)
        per_image: dict[int, np.ndarray] = {}
        for part in parts:
            for image_id, rows in part:
                per_image.setdefault(image_id, rows)
        return per_image

    def _ground_truth(self, stage: str) -> Any:
        datamodule = self.trainer.datamodule
        if datamodule is None:
            raise RuntimeError("COCO evaluation needs a datamodule with val_coco() (and optionally test_coco())")
        getter = getattr(datamodule, f"{stage}_coco", None) or datamodule.val_coco
        return getter()

    def _category_ids(self) -> list[int] | None:
        datamodule = getattr(self._trainer, "datamodule", None)
        ids = getattr(datamodule, "category_ids", None) if datamodule is not None else None
        return list(ids) if ids is not None else self.hparams.category_ids

    def _finish_eval(self, stage: str) -> None:
        per_image = self._gather_rows()
        self._eval_rows = []
        metrics: dict[str, float] | None = None
        if self.trainer.is_global_zero:
            detections = rows_to_coco(per_image, self._category_ids())
            metrics = evaluate_detections(
                self._ground_truth(stage), detections, self.hparams.eval_backend, image_ids=per_image.keys()
            )
        metrics = self.trainer.strategy.broadcast(metrics, src=0)
        assert metrics is not None
        self.last_eval = {"stage": stage, "image_ids": sorted(per_image), "metrics": metrics}
        logged = {f"{stage}/{name}": metrics[key] for name, key in EVAL_METRICS.items() if name != "mAP"}
        logged[f"{stage}/fitness"] = fitness(metrics)
        # Identical on every rank after the broadcast, so no further reduction is needed.
        self.log(f"{stage}/mAP", metrics["AP"], prog_bar=True, sync_dist=False)
        self.log_dict(logged, sync_dist=False)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Every checkpoint records the detector spec and class table, so loaders need nothing else."""
        checkpoint[CHECKPOINT_RECORD] = checkpoint_record(self.spec, "detector.", self.hparams.class_names,
                                                          self._category_ids())

    # ------------------------------------------------------------------ prediction

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> list[dict]:
        """Per image: `{"image_id", "path", "detections": inference.Detections}` in original pixels."""
        from pgi_detect.inference.detections import Detections

        hp = self.hparams
        original = self._detections(
            batch, NMSSettings(hp.predict_conf_thres, hp.predict_iou_thres, False, hp.predict_max_det)
        )
        return [
            {
                "image_id": int(image_id),
                "path": path,
                "detections": Detections.from_rows(rows, tuple(shape.tolist()), self.hparams.class_names),
            }
            for image_id, path, rows, shape in zip(batch["image_ids"], batch["paths"], original, batch["orig_shapes"])
        ]
