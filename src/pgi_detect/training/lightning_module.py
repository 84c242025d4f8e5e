"""`DetectionTask`: the LightningModule that trains a detector with the official YOLOv9 recipe and scores it with COCO
mAP (main branch, stripped and fused, EMA weights during fit).

Lightning glue only: the detector is built from its spec (`pgi_detect.models`), the recipe's optimisation lives in
`training/optim.py`, NMS in `pgi_detect.geometry`, COCO scoring in `pgi_detect.evaluation.CocoDetectionMetric`; the
datamodule is used through the `DetectionDataSource` protocol.
"""
from __future__ import annotations

import contextlib
import errno
import math
from dataclasses import asdict, is_dataclass
from typing import Any, Literal, TypeVar

import lightning.pytorch as pl
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.strategies import ParallelStrategy
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor

from pgi_detect.text import counted
from pgi_detect.settings import AT_LEAST_ONE, NON_NEGATIVE, Range, SettingError, check_ranges, option_prefix
from pgi_detect.data import Batch
from pgi_detect.evaluation import CocoDetectionMetric, fitness, write_detections_json
from pgi_detect.geometry import NMS_DETECT, NMS_EVAL, NMSSettings, postprocess
from pgi_detect.inference import Detections
from pgi_detect.loss import AssignmentMode, DetectionLoss
from pgi_detect.models import AUX_WEIGHT, Backbone, DetectorSpec, build_detector, freeze_layers
from pgi_detect.models.spec import as_plain_dict
from pgi_detect.weights import CHECKPOINT_RECORD, checkpoint_record, load_weights_into
from pgi_detect.training.checkpoints import CheckpointError
from pgi_detect.training.contracts import DetectionDataSource, EvalStage
from pgi_detect.training.derived import DerivedModels
from pgi_detect.training.optim import (
    AccumulationSchedule,
    DivergenceGuard,
    GuardSettings,
    NonFiniteLossGuard,
    OptimizerSettings,
    RecipeSchedule,
)
from pgi_detect.training.reports import report_dir

# Logged metric name -> key of evaluate_detections().
EVAL_METRICS = {
    "mAP": "AP",
    "mAP50": "AP50",
    "mAP75": "AP75",
    "mAP_small": "APs",
    "mAP_medium": "APm",
    "mAP_large": "APl",
}
STATE_PREFIX = "detector."  # the detector's keys in this module's state dict
LAST_STEP_KEY = "pgi_detect_last_step"  # the recipe iteration of the latest optimizer step (exact resume)
Settings = TypeVar("Settings")


def as_settings(value: Any, kind: type[Settings]) -> Settings:
    """A settings object from itself or from its dict form (checkpoint hyperparameters hold dicts)."""
    return value if isinstance(value, kind) else kind(**dict(value))


# DetectionTask arguments with a valid range (its settings groups check their own: optim, guard, *_nms).
TASK_RANGES = {"aux_weight": NON_NEGATIVE, "num_classes": AT_LEAST_ONE, "cls_width": Range(1, optional=True)}


class DetectionTask(pl.LightningModule):
    """Train / validate / test / predict a `pgi_detect` detector.

    Args:
        model: zoo name (`gelan-{t,s,m,c,e}`, `yolov9-{t,s,m,c,e}`), or a free label when `backbone` is given.
        backbone: optional custom backbone (any `pgi_detect.models.Backbone`, e.g. `TimmBackbone`), joined to a GELAN
            `neck` ("gelan-t" or "gelan-s") and a detect head instead of a zoo model.
        auxiliary: the PGI auxiliary branch, trained beside the main one and removed for evaluation and export:
            null, "fpn", "reversible" or "deep_supervision" (docs/pgi.md); the yolov9 zoo names carry their own.
        aux_weight: loss weight of the auxiliary branch (official 0.25; the main branch weighs 1).
        aux_widths: P3/P4/P5 widths of the reversible form's auxiliary backbone on a custom backbone (default: the
            neck's).
        assignment: "independent" (each branch assigned on its own predictions: the official ComputeLoss) or "lead"
            (one assignment from the main branch's predictions serves both: the official ComputeLossLH).
        num_classes, class_names, category_ids: linked from the datamodule by the CLI; `category_ids` maps a
            contiguous class index to the dataset category id written into COCO results.
        cls_width: optional width of the detect heads' class branches (None: the official formula; 80 on gelan-t /
            yolov9-t gives the official README's 2.0M params / 7.7 GFLOPs inference model, docs/models.md).
        weights: a file to initialise the detector from (training checkpoint, detector file, official weights or a
            state dict), or a pretrained name (gelan-c, yolov9-c, yolov9-c-converted, ...: downloaded once and
            cached, `pgi_detect.weights.hub`). Every tensor must fit except the class branch, which is re-initialised
            for another class count (reported); `partial_weights` loads only what fits and reports the rest.
        freeze: layers to keep fixed while fine-tuning (official `--freeze`): N freezes the first N rows of the layer
            table, a list the rows it names, "backbone" the rows ahead of the neck (`pgi_detect.models.freeze`).
        batch_size: images per device and step; linked from the datamodule (the recipe's nominal-batch rules).
        optim: the recipe's optimizer, schedule, accumulation and clipping (`OptimizerSettings`).
        guard: when to stop a broken run: non-finite losses, a loss far above its running median (`GuardSettings`).
        eval_nms: NMS for COCO evaluation (recipe: conf 0.001, IoU 0.7, multi-label, 300 boxes).
        predict_nms: NMS for `predict` (detect.py: conf 0.25, IoU 0.45, single label, 300 boxes).
        fuse_for_eval: evaluate the stripped + fused model (identical maths, faster) instead of the raw one.
        eval_backend: "faster" (faster-coco-eval) or "pycocotools".
        channels_last: NHWC weights and images (training and evaluation); 20-25 % faster t/s steps on CPU.
        compile: `torch.compile` the training forward: True, or a dict of `torch.compile` keyword arguments. The
            first step pays the compilation; checkpoints and state-dict keys are unchanged, and evaluation keeps
            running the eager stripped + fused copy.
        img_size: the training image size, linked from `data.img_size` by the CLI; gives Lightning's model summary
            an example input (1, 3, img_size, img_size), so it reports the FLOPs of one image at that size.
        save_json: validate/test (and fit's validation) write the scored detections, a COCO results file with the
            dataset's image and category ids, to `<default_root_dir>/reports/<fit|validate|test>/detections.json`.
    """

    def __init__(
        self,
        model: str = "gelan-c",
        backbone: Backbone | None = None,
        neck: str = "gelan-s",
        auxiliary: Literal["fpn", "reversible", "deep_supervision"] | None = None,
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
        with option_prefix("model.optim."):
            self.optim = as_settings(optim, OptimizerSettings)
        with option_prefix("model.eval_nms."):
            self.eval_nms = as_settings(eval_nms, NMSSettings)
        with option_prefix("model.predict_nms."):
            self.predict_nms = as_settings(predict_nms, NMSSettings)
        with option_prefix("model.guard."):
            self.guard = as_settings(guard, GuardSettings)
        # The spec records the backbone as the hyperparameters hold it: {class_path, init_args} under the LightningCLI
        # (portable), the module itself from Python; the detector is built on the module as given (one the CLI
        # instantiated keeps, e.g., its pretrained weights).
        recorded = self.hparams.get("backbone")
        try:
            self.spec = DetectorSpec(model, num_classes, cls_width, as_plain_dict(recorded), neck, auxiliary,
                                     aux_weight, None if aux_widths is None else tuple(aux_widths))
            self.detector = build_detector(self.spec, backbone=backbone)
        except KeyError as error:  # an unknown zoo or neck name: the registry's message lists the known ones
            raise SettingError(f"model: {error.args[0]}") from None
        self.criterion = DetectionLoss(num_classes, strides=tuple(self.detector.strides), reg_max=self.detector.reg_max,
                                       branch_weights=self.detector.branch_weights, assignment=assignment)
        if weights:
            rank_zero_info(f"DetectionTask: {load_weights_into(self.detector, weights, partial=partial_weights)}")
        if freeze is not None:
            with option_prefix("model."):
                frozen = freeze_layers(self.detector, freeze)
            rank_zero_info(f"DetectionTask: {frozen}")
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.detector.to(memory_format=self.memory_format)
        self.nonfinite_guard = NonFiniteLossGuard(self.guard.max_nonfinite_steps)
        self.divergence_guard = DivergenceGuard(self.guard.divergence_factor, self.guard.divergence_patience,
                                                self.guard.divergence_window)
        # The official loop's optimisation is reproduced step by step (scripts/trajectory_vs_official.py), including its
        # accumulation, which ramps during warmup and counts across epochs: Lightning's automatic accumulation (a
        # fixed count per epoch, a step forced at every epoch end) cannot express it, so the task steps itself.
        self.automatic_optimization = False
        self.schedule: RecipeSchedule | None = None
        self.accumulation: AccumulationSchedule | None = None
        self.last_step_iteration: int | None = None  # the batch (recipe `ni`) of the latest optimizer step
        # (epoch, global step) of the weights held: the last trained epoch, or the loaded checkpoint's (reports)
        self.trained_through: tuple[int, int] | None = None
        self.metric = CocoDetectionMetric(eval_backend)
        self.last_eval: dict[str, Any] = {}
        self.derived = DerivedModels()
        self._summary_size = img_size

    @property
    def example_input_array(self) -> Tensor | None:
        """One image at the training size in the weights' dtype, so the model summary reports real FLOPs (also under
        64-true or half-precision weights)."""
        size = self._summary_size
        return None if not size else torch.zeros(1, 3, size, size, dtype=self.dtype, device=self.device)

    @example_input_array.setter
    def example_input_array(self, example: Any) -> None:
        raise AttributeError("DetectionTask.example_input_array follows model.img_size; set that instead")

    # ------------------------------------------------------------------ contracts

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

    # ------------------------------------------------------------------ model forms

    def forward(self, images: Tensor) -> list[list[Tensor]]:
        """Raw per-branch maps for float images in [0, 1] (main branch last)."""
        return self.detector(images)

    def inference_model(self) -> torch.nn.Module:
        """A stripped (main branch only), fused copy of the current weights in eval mode, for eval and export."""
        return self.detector.inference_copy().to(memory_format=self.memory_format)

    def training_detector(self) -> torch.nn.Module:
        """The detector as the training step calls it: compiled on first use when `compile` is set."""
        return self.derived.compiled(self.detector, self.hparams.compile)

    def _network_input(self, images: Tensor) -> Tensor:
        """uint8 batch -> float in [0, 1] of the weights' dtype (float32 under mixed precision), in the detector's
        memory format."""
        return (images.to(self.dtype) / 255.0).contiguous(memory_format=self.memory_format)

    # ------------------------------------------------------------------ recipe: batch size, optimizer, schedule

    def global_batch_size(self) -> int:
        size = self.hparams.batch_size
        if not size:
            source = self.datasource
            size = source.batch_size if source is not None else None
        if not size:
            rank_zero_warn("DetectionTask: batch size unknown (pass model.batch_size); assuming 16 for the recipe")
            size = 16
        return int(size) * self.trainer.world_size

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.last_step_iteration = None  # before a checkpoint is restored (on_load_checkpoint sets it)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        global_batch = self.global_batch_size()
        return self.optim.build_optimizer(self.detector, global_batch, self.optim.accumulation(global_batch))

    def on_train_start(self) -> None:
        batches = self.trainer.num_training_batches
        self.schedule = self.optim.schedule(self.trainer.max_epochs or 1,
                                            int(batches) if np.isfinite(batches) else 1000)
        global_batch = self.global_batch_size()
        self.accumulation = self.optim.accumulation_schedule(global_batch, self.schedule.warmup_iters)
        if self.accumulation.final > 1:
            rank_zero_info(f"DetectionTask: global batch {global_batch} -> {self.accumulation.final} batches per "
                           f"optimizer step (nominal batch {self.optim.nominal_batch_size}), ramped from 1 over the "
                           f"{self.schedule.warmup_iters} warmup batches")

    def training_iteration(self, batch_idx: int) -> int:
        """Batches seen since training began (the recipe's `ni`), consistent across resume."""
        batches = self.trainer.num_training_batches
        batches = int(batches) if np.isfinite(batches) else 0
        return self.trainer.current_epoch * batches + batch_idx

    def on_train_epoch_end(self) -> None:
        self.trained_through = (self.trainer.current_epoch, self.trainer.global_step)

    def on_train_epoch_start(self) -> None:
        # The official loop clears the gradients when an epoch starts: what was accumulated after the previous
        # epoch's last step does not reach a step.
        self.optimizers(use_pl_optimizer=False).zero_grad()

    def on_train_batch_start(self, batch: Batch, batch_idx: int) -> None:
        if self.schedule is not None:
            optimizer = self.optimizers(use_pl_optimizer=False)
            self.schedule.apply(optimizer, self.training_iteration(batch_idx), self.trainer.current_epoch)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Called inside the step, after AMP's unscaling: the official loop clips the unscaled gradients' norm.
        if self.optim.gradient_clip_norm:
            self.clip_gradients(optimizer, self.optim.gradient_clip_norm, "norm")

    def backward_scale(self) -> float:
        """Factor that makes the gradient equal the reference's: its loss is summed over accumulated batches and
        multiplied by WORLD_SIZE, while DDP averages the ranks' gradients."""
        return float(self.trainer.world_size)

    # ------------------------------------------------------------------ training

    def compute_loss(self, batch: Batch) -> tuple[Tensor, Tensor]:
        branches = self.training_detector()(self._network_input(batch["images"]))
        # The loss (assignment, IoU, DFL) runs in float32 under any mixed precision, in float64 under 64-true.
        dtype = torch.promote_types(self.dtype, torch.float32)
        with torch.autocast(device_type=self.device.type, enabled=False):
            branches = [[level.to(dtype) for level in branch] for branch in branches]
            return self.criterion(branches, batch["targets"].to(dtype))

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor | None:
        iteration = self.training_iteration(batch_idx)
        accumulation = self.accumulation or AccumulationSchedule()
        if self.last_step_iteration is None:  # a fresh run, or a checkpoint written before this was recorded
            self.last_step_iteration = accumulation.last_step_before(iteration)
        loss, items = self.compute_loss(batch)
        batch_size = batch["images"].shape[0]
        # The step's one device -> host copy: the loss per image (box + cls + dfl, what the logs show).
        nonfinite, diverged = self._loss_health(float(loss.detach()) / batch_size)
        if diverged:
            raise diverged
        if self.nonfinite_guard.should_skip(not nonfinite):
            # Nothing of this batch reaches the gradients; a step due now waits for the next batch.
            rank_zero_warn(f"non-finite loss at step {self.global_step} (batch {batch_idx}); step skipped")
            self.log("train/nonfinite_skipped", float(self.nonfinite_guard.total_skipped), on_step=True)
            return None
        stepping = accumulation.steps_at(iteration, self.last_step_iteration)
        with self._gradient_sync(stepping):
            self.manual_backward(loss * self.backward_scale())
        if stepping:
            optimizer = self.optimizers()
            optimizer.step()
            optimizer.zero_grad()
            self.last_step_iteration = iteration
        box, cls, dfl = items  # float32, or float64 under 64-true
        # Averaged over the ranks (a no-op on one process): four scalars, next to a gradient all-reduce per step.
        self.log("train/loss", box + cls + dfl, prog_bar=True, on_step=True, on_epoch=True, batch_size=batch_size,
                 sync_dist=True)
        self.log_dict({"train/box_loss": box, "train/cls_loss": cls, "train/dfl_loss": dfl},
                      on_step=True, on_epoch=True, batch_size=batch_size, sync_dist=True)
        groups = self.optimizers(use_pl_optimizer=False).param_groups
        self.log_dict({"train/lr_bias": groups[0]["lr"], "train/lr": groups[1]["lr"]}, on_step=True,
                      on_epoch=False, batch_size=batch_size)
        return loss.detach()

    def _gradient_sync(self, stepping: bool) -> Any:
        """DDP all-reduces gradients only on the batch that steps (the sum over batches is the same either way)."""
        strategy = self.trainer.strategy
        if not stepping and isinstance(strategy, ParallelStrategy) and self.trainer.world_size > 1:
            return strategy.block_backward_sync()
        return contextlib.nullcontext()

    def _loss_health(self, loss: float) -> tuple[bool, FloatingPointError | None]:
        """(non-finite, divergence error) of this step's loss, agreed by every rank in one all-reduce: all ranks skip
        a step together (else DDP's gradient all-reduce would hang) and stop together. A diverging loss warns."""
        failure = None
        if math.isfinite(loss):
            try:
                warning = self.divergence_guard.check(loss, self.global_step)
            except FloatingPointError as error:
                warning, failure = None, error
            if warning:
                rank_zero_warn(warning)
        flags = (not math.isfinite(loss), failure is not None)
        if self.trainer.world_size > 1:
            summed = self.trainer.strategy.reduce(torch.tensor(flags, dtype=torch.float32, device=self.device),
                                                  reduce_op="sum")
            flags = tuple(bool(flag > 0) for flag in summed.tolist())
        if flags[1] and failure is None:
            failure = FloatingPointError(f"training diverged on another rank at step {self.global_step}")
        return flags[0], failure

    # ------------------------------------------------------------------ evaluation

    def _start_eval(self) -> None:
        # Runs after the EMA callback has swapped its weights in (callback hooks run before module hooks).
        if self.trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            # Without SyncBatchNorm each rank's BN statistics differ; evaluate rank 0's (what its checkpoint holds)
            # on every rank, so the gathered score is the checkpoint's score.
            for buffer in self.detector.buffers():
                dist.broadcast(buffer.data, src=0)
        self.derived.eval_model = self.inference_model() if self.hparams.fuse_for_eval else self.detector

    def _detections(self, batch: Batch, nms: NMSSettings) -> list[Tensor]:
        """Per image `(n, 6)` rows `[x1, y1, x2, y2, score, class]` in original pixels."""
        model = self.derived.eval_model if self.derived.eval_model is not None else self.detector
        main_maps = model(self._network_input(batch["images"]))[-1]
        with torch.autocast(device_type=self.device.type, enabled=False):
            pred = model.decode([m.float() for m in main_maps])
        return postprocess(pred, nms, batch["scales"], batch["pads"], batch["orig_shapes"])

    def on_validation_epoch_start(self) -> None:
        self._start_eval()
        self.metric.reset()

    def on_test_epoch_start(self) -> None:
        self.on_validation_epoch_start()

    def on_predict_epoch_start(self) -> None:
        self._start_eval()

    def validation_step(self, batch: Batch, batch_idx: int) -> dict[str, list[Tensor]]:
        detections = self._detections(batch, self.eval_nms)
        self.metric.update(detections, batch["image_ids"])
        return {"detections": detections}

    def test_step(self, batch: Batch, batch_idx: int) -> dict[str, list[Tensor]]:
        return self.validation_step(batch, batch_idx)

    def on_validation_epoch_end(self) -> None:
        self._finish_eval("val")

    def on_test_epoch_end(self) -> None:
        self._finish_eval("test")

    def _finish_eval(self, stage: EvalStage) -> None:
        source = self.datasource
        if source is None:
            raise RuntimeError("COCO evaluation needs a datamodule implementing DetectionDataSource "
                               "(ground_truth, category_ids; see pgi_detect.training.contracts)")
        self.metric.ground_truth = source.ground_truth(stage)
        self.metric.category_ids = self.category_ids
        evaluation = self.metric.compute()  # gathered from every rank, scored on rank 0
        self.metric.reset()
        metrics, undefined = self.trainer.strategy.broadcast((evaluation.stats, evaluation.undefined), src=0)
        # The whole evaluation (detections, arrays) is kept where reports and files are written: global rank 0.
        self.last_eval = {"stage": stage, "image_ids": evaluation.image_ids, "metrics": metrics,
                          "evaluation": evaluation if self.trainer.is_global_zero else None,
                          "undefined": [f"{stage}/{name}" for name, key in EVAL_METRICS.items() if key in undefined]}
        if "AP" in undefined and not self.trainer.sanity_checking:
            rank_zero_warn(f"{stage}: the {counted(len(evaluation.image_ids), 'image')} scored hold no ground-truth boxes, so "
                           f"mAP is undefined (COCO's -1; logged as 0): check the {stage} annotations")
        if self.hparams.save_json and self.trainer.is_global_zero:
            path = write_detections_json(evaluation.detections, report_dir(self.trainer) / "detections.json")
            rank_zero_info(f"DetectionTask: {counted(len(evaluation.detections), f'scored {stage} detection')} written to {path}")
        logged = {f"{stage}/{name}": metrics[key] for name, key in EVAL_METRICS.items() if name != "mAP"}
        logged[f"{stage}/fitness"] = fitness(metrics)
        # Identical on every rank (scored once, broadcast): the max over ranks is the value itself, exactly (a mean
        # could round), and Lightning no longer advises sync_dist for epoch-level values.
        self.log(f"{stage}/mAP", metrics["AP"], prog_bar=True, sync_dist=True, reduce_fx="max")
        self.log_dict(logged, sync_dist=True, reduce_fx="max")

    # ------------------------------------------------------------------ prediction and checkpoints

    def predict_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> list[dict]:
        """Per image: `{"image_id", "path", "detections": inference.Detections}` in original pixels."""
        rows = self._detections(batch, self.predict_nms)
        return [
            {"image_id": int(image_id), "path": path,
             "detections": Detections.from_rows(r, tuple(shape.tolist()), self.class_names)}
            for image_id, path, r, shape in zip(batch["image_ids"], batch["paths"], rows, batch["orig_shapes"])
        ]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A checkpoint of another architecture or class count is an error naming both, not a key mismatch."""
        self.last_step_iteration = checkpoint.get(LAST_STEP_KEY)
        self.trained_through = (int(checkpoint.get("epoch", 0)), int(checkpoint.get("global_step", 0)))
        record = checkpoint.get(CHECKPOINT_RECORD)
        if record is None:
            return
        saved = DetectorSpec.from_dict(record["spec"])
        differences = saved.architecture_difference(self.spec)
        if differences:
            raise CheckpointError(
                errno.EINVAL,
                f"the checkpoint holds another detector than this run builds ({'; '.join(differences)}, checkpoint "
                "vs run); the data's class list or the model options differ from the checkpoint's"
            )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Every checkpoint records the detector spec and class table, so loaders need nothing else."""
        checkpoint[CHECKPOINT_RECORD] = checkpoint_record(self.spec, STATE_PREFIX, self.class_names,
                                                          self.category_ids)
        if self.last_step_iteration is not None:
            checkpoint[LAST_STEP_KEY] = self.last_step_iteration
        hparams = checkpoint.get("hyper_parameters")
        if isinstance(hparams, dict) and hparams.get("weights"):
            # The state dict replaces the initial weights: `load_from_checkpoint` must not re-read that file.
            checkpoint["hyper_parameters"] = {**hparams, "weights": None}
