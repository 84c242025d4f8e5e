"""`DetectionTask`: the LightningModule that trains a detector with the official YOLOv9 recipe and scores it with COCO
mAP (main branch, stripped and fused, EMA weights during fit).

It is a base class with three hooks, as torchgeo's tasks are: `configure_models` builds `self.detector` (and its
`spec`), `configure_losses` sets `self.criterion`, `configure_metrics` sets `self.metric`. Override one to train a
custom backbone, loss or metric (docs/models.md). The recipe's step loop is `self.loop` (`RecipeLoop`);
validate / test / predict are the `EvaluationSteps` it mixes in (`training/eval_hooks.py`); the datamodule is used
through the `DetectionDataSource` protocol.
"""
from __future__ import annotations

import errno
from dataclasses import asdict, is_dataclass
from typing import Any, Literal, TypeVar

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor

from pgi_detect.data import Batch
from pgi_detect.evaluation import CocoDetectionMetric
from pgi_detect.geometry import NMS_DETECT, NMS_EVAL, NMSSettings
from pgi_detect.loss import AssignmentMode, DetectionLoss, LossResult, as_loss_result
from pgi_detect.models import AUX_WEIGHT, AuxiliaryForm, Backbone, DetectorSpec, build_detector, freeze_layers
from pgi_detect.models.spec import as_plain_dict
from pgi_detect.settings import AT_LEAST_ONE, NON_NEGATIVE, Range, SettingError, check_ranges, option_prefix
from pgi_detect.training.checkpoint_io import CheckpointError
from pgi_detect.training.contracts import DetectionDataSource
from pgi_detect.training.derived import DerivedModels
from pgi_detect.training.eval_hooks import EvaluationSteps
from pgi_detect.training.optim import GuardSettings, OptimizerSettings
from pgi_detect.training.recipe_loop import RecipeLoop
from pgi_detect.weights import CHECKPOINT_RECORD, checkpoint_record, load_weights_into

STATE_PREFIX = "detector."  # the detector's keys in this module's state dict
LAST_STEP_KEY = "pgi_detect_last_step"  # the recipe iteration of the latest optimizer step (exact resume)
# DetectionTask arguments with a valid range (its settings groups check their own: optim, guard, *_nms).
TASK_RANGES = {"aux_weight": NON_NEGATIVE, "num_classes": AT_LEAST_ONE, "cls_width": Range(1, optional=True)}
Settings = TypeVar("Settings")


def as_settings(value: Any, kind: type[Settings], prefix: str) -> Settings:
    """A settings object from itself or from its dict form (checkpoint hyperparameters hold dicts); a value out of
    range names its option (`model.optim.momentum`)."""
    with option_prefix(prefix):
        return value if isinstance(value, kind) else kind(**dict(value))


class DetectionTask(EvaluationSteps, pl.LightningModule):
    """Train / validate / test / predict a `pgi_detect` detector.

    Args:
        model: zoo name (`gelan-{t,s,m,c,e}`, `yolov9-{t,s,m,c,e}`), or a free label when `backbone` is given.
        backbone: optional custom backbone (any `pgi_detect.models.Backbone`, e.g. `TimmBackbone`), joined to a GELAN
            `neck` ("gelan-t" or "gelan-s") and a detect head instead of a zoo model.
        auxiliary: the PGI auxiliary branch, trained beside the main one and removed for evaluation and export:
            null, "fpn", "reversible" or "deep_supervision" (docs/pgi.md); the yolov9 zoo names carry their own.
        aux_weight: loss weight of the auxiliary branch (official 0.25; the main branch weighs 1).
        aux_widths: P3/P4/P5 widths of the reversible form's auxiliary backbone on a custom backbone.
        assignment: "independent" (each branch assigned on its own predictions: the official ComputeLoss) or "lead"
            (one assignment from the main branch's predictions serves both: the official ComputeLossLH).
        num_classes, class_names, category_ids: linked from the datamodule by the CLI; `category_ids` maps a
            contiguous class index to the dataset category id written into COCO results.
        cls_width: optional width of the detect heads' class branches (None: the official formula).
        weights: a file or a pretrained name to initialise the detector from; every tensor must fit except the
            class branch, re-initialised for another class count; `partial_weights` loads only what fits.
        freeze: layers to keep fixed while fine-tuning (official `--freeze`): a row count, a list of rows, or
            "backbone" (`pgi_detect.models.freeze`).
        batch_size: images per device and step; linked from the datamodule (the recipe's nominal-batch rules).
        optim: the recipe's optimizer, schedule, accumulation and clipping (`OptimizerSettings`).
        guard: when to stop a broken run: non-finite losses, a loss far above its running median (`GuardSettings`).
        eval_nms / predict_nms: NMS for COCO evaluation (conf 0.001, IoU 0.7, multi-label) / for `predict`.
        fuse_for_eval: evaluate the stripped + fused model (identical maths, faster) instead of the raw one.
        eval_backend: "faster" (faster-coco-eval) or "pycocotools".
        channels_last: NHWC weights and images (training and evaluation); 20-25 % faster t/s steps on CPU.
        compile: `torch.compile` the training forward (True, or a dict of its keyword arguments).
        img_size: the training image size (linked from `data.img_size`): the model summary's example input.
        save_json: evaluations write their scored detections to `<run>/reports/<stage>/detections.json`.
    """

    def __init__(
        self,
        model: str = "gelan-c",
        backbone: Backbone | None = None,
        neck: str = "gelan-s",
        auxiliary: AuxiliaryForm | None = None,
        aux_weight: float = AUX_WEIGHT,
        aux_widths: list[int] | None = None,
        assignment: AssignmentMode = "independent",
        num_classes: int = 80,
        cls_width: int | None = None,
        class_names: list[str] | None = None,
        category_ids: list[int] | None = None,
        weights: str | None = None,
        partial_weights: bool = False,
        freeze: int | str | list[int | str] | None = None,
        batch_size: int | None = None,
        optim: OptimizerSettings = OptimizerSettings(),
        guard: GuardSettings = GuardSettings(),
        eval_nms: NMSSettings = NMS_EVAL,
        predict_nms: NMSSettings = NMS_DETECT,
        fuse_for_eval: bool = True,
        eval_backend: Literal["faster", "pycocotools"] = "faster",
        channels_last: bool = False,
        compile: bool | dict[str, Any] = False,
        img_size: int | None = None,
        save_json: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        # Settings are kept as plain dicts in the hyperparameters, so checkpoints load with weights_only=True.
        for key, value in self.hparams.items():
            if is_dataclass(value):
                self.hparams[key] = asdict(value)
        check_ranges({"aux_weight": aux_weight, "num_classes": num_classes, "cls_width": cls_width}, TASK_RANGES,
                     prefix="model.")
        self.optim = as_settings(optim, OptimizerSettings, "model.optim.")
        self.eval_nms = as_settings(eval_nms, NMSSettings, "model.eval_nms.")
        self.predict_nms = as_settings(predict_nms, NMSSettings, "model.predict_nms.")
        self.guard = as_settings(guard, GuardSettings, "model.guard.")
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self._backbone = {"module": backbone}  # a dict: not registered as a submodule of the task
        self.configure_models()
        self.configure_losses()
        # The official loop's optimisation, step by step (its accumulation ramps during warmup and counts across
        # epochs, which Lightning's automatic accumulation cannot express): the task steps itself.
        self.automatic_optimization = False
        self.loop = RecipeLoop(self.optim, self.guard)
        # (epoch, global step) of the weights held: the last trained epoch, or the loaded checkpoint's (reports)
        self.trained_through: tuple[int, int] | None = None
        self.configure_metrics()
        self.last_eval: dict[str, Any] = {}
        self.derived = DerivedModels()

    # ------------------------------------------------------------------ hooks a subclass overrides

    def configure_models(self) -> None:
        """Build `self.spec` and `self.detector` (weights loaded, layers frozen, in the memory format). The spec
        records the backbone as the hyperparameters hold it: {class_path, init_args} under the LightningCLI
        (portable), the module itself from Python; the detector is built on the module as given."""
        hp = self.hparams
        try:
            self.spec = DetectorSpec(hp.model, hp.num_classes, hp.cls_width, as_plain_dict(hp.get("backbone")),
                                     hp.neck, hp.auxiliary, hp.aux_weight,
                                     None if hp.aux_widths is None else tuple(hp.aux_widths))
            self.detector = build_detector(self.spec, backbone=self._backbone["module"])
        except KeyError as error:  # an unknown zoo or neck name: the registry's message lists the known ones
            raise SettingError(f"model: {error.args[0]}") from None
        if hp.weights:
            rank_zero_info(f"DetectionTask: {load_weights_into(self.detector, hp.weights, partial=hp.partial_weights)}")
        if hp.freeze is not None:
            with option_prefix("model."):
                frozen = freeze_layers(self.detector, hp.freeze)
            rank_zero_info(f"DetectionTask: {frozen}")
        self.detector.to(memory_format=self.memory_format)

    def configure_losses(self) -> None:
        """Set `self.criterion`: called with (per-branch maps, targets (n, 6) [image, class, x1, y1, x2, y2] in
        input pixels), it returns a `LossResult`, or `(total, items)` named by its `item_names` (default box, cls,
        dfl: the official losses' order)."""
        self.criterion = DetectionLoss(self.hparams.num_classes, strides=tuple(self.detector.strides),
                                       reg_max=self.detector.reg_max, branch_weights=self.detector.branch_weights,
                                       assignment=self.hparams.assignment)

    def configure_metrics(self) -> None:
        """Set `self.metric`: a torchmetrics Metric updated with each evaluated batch's detections and image ids,
        whose `compute()` returns a `CocoEvaluation` (`pgi_detect.evaluation.CocoDetectionMetric`)."""
        self.metric = CocoDetectionMetric(self.hparams.eval_backend)

    # ------------------------------------------------------------------ contracts and model forms

    @property
    def example_input_array(self) -> Tensor | None:
        """One image at the training size in the weights' dtype, so the model summary reports real FLOPs."""
        size = self.hparams.img_size
        return None if not size else torch.zeros(1, 3, size, size, dtype=self.dtype, device=self.device)

    @example_input_array.setter
    def example_input_array(self, example: Any) -> None:
        raise AttributeError("DetectionTask.example_input_array follows model.img_size; set that instead")

    @property
    def datasource(self) -> DetectionDataSource | None:
        """The attached datamodule when it implements the `DetectionDataSource` protocol."""
        datamodule = self._trainer.datamodule if self._trainer is not None else None
        return datamodule if isinstance(datamodule, DetectionDataSource) else None

    @property
    def class_names(self) -> list[str] | None:
        return self.hparams.class_names

    @property
    def category_ids(self) -> list[int] | None:
        """Class index -> dataset category id: the datamodule's when attached, else the saved ones."""
        source = self.datasource
        ids = source.category_ids if source is not None else self.hparams.category_ids
        return None if ids is None else list(ids)

    def forward(self, images: Tensor) -> list[list[Tensor]]:
        """Raw per-branch maps for float images in [0, 1] (main branch last)."""
        return self.detector(images)

    def inference_model(self) -> torch.nn.Module:
        """A stripped (main branch only), fused copy of the current weights in eval mode, for eval and export."""
        return self.detector.inference_copy().to(memory_format=self.memory_format)

    def training_detector(self) -> torch.nn.Module:
        """The detector as the training step calls it: compiled on first use when `compile` is set."""
        return self.derived.compiled(self.detector, self.hparams.compile)

    def network_input(self, images: Tensor) -> Tensor:
        """uint8 batch -> float in [0, 1] of the weights' dtype, in the detector's memory format."""
        return (images.to(self.dtype) / 255.0).contiguous(memory_format=self.memory_format)

    # ------------------------------------------------------------------ training

    def global_batch_size(self) -> int:
        size = self.hparams.batch_size or (self.datasource.batch_size if self.datasource is not None else None)
        if not size:
            rank_zero_warn("DetectionTask: batch size unknown (pass model.batch_size); assuming 16 for the recipe")
            size = 16
        return int(size) * self.trainer.world_size

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.loop.load_state_dict({})  # before a checkpoint is restored (on_load_checkpoint sets it)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.loop.build_optimizer(self.detector, self.global_batch_size())

    def on_train_start(self) -> None:
        self.loop.start(self.global_batch_size(), self.trainer.max_epochs, self.trainer.num_training_batches)

    def on_train_epoch_start(self) -> None:
        self.loop.epoch_start(self.optimizers(use_pl_optimizer=False))

    def on_train_epoch_end(self) -> None:
        self.trained_through = (self.trainer.current_epoch, self.trainer.global_step)

    def on_train_batch_start(self, batch: Batch, batch_idx: int) -> None:
        iteration = self.loop.iteration(self.trainer.current_epoch, batch_idx)
        self.loop.batch_start(self.optimizers(use_pl_optimizer=False), iteration, self.trainer.current_epoch)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Called inside the step, after AMP's unscaling: the official loop clips the unscaled gradients' norm.
        if self.optim.gradient_clip_norm:
            self.clip_gradients(optimizer, self.optim.gradient_clip_norm, "norm")

    def compute_loss(self, batch: Batch) -> LossResult:
        branches = self.training_detector()(self.network_input(batch["images"]))
        # The loss (assignment, IoU, DFL) runs in float32 under any mixed precision, in float64 under 64-true.
        dtype = torch.promote_types(self.dtype, torch.float32)
        with torch.autocast(device_type=self.device.type, enabled=False):
            branches = [[level.to(dtype) for level in branch] for branch in branches]
            output = self.criterion(branches, batch["targets"].to(dtype))
        names = getattr(self.criterion, "item_names", DetectionLoss.item_names)  # the official losses' order
        return as_loss_result(output, names, batch["images"].shape[0])

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor | None:
        iteration = self.loop.iteration(self.trainer.current_epoch, batch_idx)
        self.loop.resume_at(iteration)
        result = self.compute_loss(batch)
        if not self.loop.loss_is_usable(result.per_image(), self.trainer, self.device, self.global_step):
            # Nothing of this batch reaches the gradients; a step due now waits for the next batch.
            rank_zero_warn(f"non-finite loss at step {self.global_step} (batch {batch_idx}); step skipped")
            self.log("train/nonfinite_skipped", float(self.loop.nonfinite_guard.total_skipped), on_step=True)
            return None
        stepping = self.loop.steps_at(iteration)
        with self.loop.gradient_sync(self.trainer, stepping):
            self.manual_backward(result.total * self.loop.backward_scale(self.trainer.world_size))
        if stepping:
            optimizer = self.optimizers()
            optimizer.step()
            optimizer.zero_grad()
            self.loop.stepped(iteration)
        self.log_loss(result, batch["images"].shape[0])
        return result.total.detach()

    def log_loss(self, result: LossResult, batch_size: int) -> None:
        """`train/loss` (the sum of the items) and `train/<item>_loss`, averaged over the ranks (a no-op on one
        process), and the lr of the bias and weight groups."""
        self.log("train/loss", sum(result.items.values()), prog_bar=True, on_step=True, on_epoch=True,
                 batch_size=batch_size, sync_dist=True)
        self.log_dict({f"train/{name}_loss": value for name, value in result.items.items()},
                      on_step=True, on_epoch=True, batch_size=batch_size, sync_dist=True)
        groups = self.optimizers(use_pl_optimizer=False).param_groups
        self.log_dict({"train/lr_bias": groups[0]["lr"], "train/lr": groups[1]["lr"]}, on_step=True,
                      on_epoch=False, batch_size=batch_size)

    # ------------------------------------------------------------------ checkpoints

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A checkpoint of another architecture or class count is an error naming both, not a key mismatch."""
        self.loop.load_state_dict({"last_step": checkpoint.get(LAST_STEP_KEY)})
        self.trained_through = (int(checkpoint.get("epoch", 0)), int(checkpoint.get("global_step", 0)))
        record = checkpoint.get(CHECKPOINT_RECORD)
        differences = DetectorSpec.from_dict(record["spec"]).architecture_difference(self.spec) if record else None
        if differences:
            raise CheckpointError(errno.EINVAL, f"the checkpoint holds another detector than this run builds "
                                                f"({'; '.join(differences)}, checkpoint vs run); the data's class "
                                                "list or the model options differ from the checkpoint's")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Every checkpoint records the detector spec and class table (loaders need nothing else) and the loop's
        state (an exact resume)."""
        checkpoint[CHECKPOINT_RECORD] = checkpoint_record(self.spec, STATE_PREFIX, self.class_names,
                                                          self.category_ids)
        if self.loop.last_step is not None:
            checkpoint[LAST_STEP_KEY] = self.loop.state_dict()["last_step"]
        hparams = checkpoint.get("hyper_parameters")
        if isinstance(hparams, dict) and hparams.get("weights"):
            # The state dict replaces the initial weights: `load_from_checkpoint` must not re-read that file.
            checkpoint["hyper_parameters"] = {**hparams, "weights": None}
