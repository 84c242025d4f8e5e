"""`EvaluationSteps`: what `DetectionTask` does in validate / test / predict: the model it evaluates, its
detections per batch, and the scores it logs, keeps (`task.last_eval`, for reports) and writes (`save_json`)."""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor

from pgi_detect.data import Batch
from pgi_detect.evaluation import fitness, write_detections_json
from pgi_detect.geometry import NMSSettings, postprocess
from pgi_detect.inference import Detections
from pgi_detect.text import counted
from pgi_detect.training.contracts import EvalStage
from pgi_detect.training.report_callback import report_dir

# Logged metric name -> key of the COCO statistics.
EVAL_METRICS = {
    "mAP": "AP",
    "mAP50": "AP50",
    "mAP75": "AP75",
    "mAP_small": "APs",
    "mAP_medium": "APm",
    "mAP_large": "APl",
}


def start_evaluation(task: Any) -> None:
    """Pick the model an evaluation runs: the stripped + fused copy (or the detector itself). Runs after the EMA
    callback has swapped its weights in (callback hooks run before module hooks)."""
    if task.trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
        # Without SyncBatchNorm each rank's BN statistics differ; evaluate rank 0's (what its checkpoint holds) on
        # every rank, so the gathered score is the checkpoint's score.
        for buffer in task.detector.buffers():
            dist.broadcast(buffer.data, src=0)
    task.derived.eval_model = task.inference_model() if task.hparams.fuse_for_eval else task.detector


def detections_of(task: Any, batch: Batch, nms: NMSSettings) -> list[Tensor]:
    """Per image `(n, 6)` rows `[x1, y1, x2, y2, score, class]` in original pixels."""
    model = task.derived.eval_model if task.derived.eval_model is not None else task.detector
    main_maps = model(task.network_input(batch["images"]))[-1]
    with torch.autocast(device_type=task.device.type, enabled=False):
        pred = model.decode([m.float() for m in main_maps])
    return postprocess(pred, nms, batch["scales"], batch["pads"], batch["orig_shapes"])


def finish_evaluation(task: Any, stage: EvalStage) -> None:
    """Score the gathered detections (on rank 0), share the scores with every rank, log them, keep them in
    `task.last_eval` and write the scored detections when `save_json` is set."""
    source = task.datasource
    if source is None:
        raise RuntimeError("COCO evaluation needs a datamodule implementing DetectionDataSource "
                           "(ground_truth, category_ids; see pgi_detect.training.contracts)")
    task.metric.ground_truth = source.ground_truth(stage)
    task.metric.category_ids = task.category_ids
    evaluation = task.metric.compute()  # gathered from every rank, scored on rank 0
    task.metric.reset()
    trainer = task.trainer
    metrics, undefined = trainer.strategy.broadcast((evaluation.stats, evaluation.undefined), src=0)
    # The whole evaluation (detections, arrays) is kept where reports and files are written: global rank 0.
    task.last_eval = {"stage": stage, "image_ids": evaluation.image_ids, "metrics": metrics,
                      "evaluation": evaluation if trainer.is_global_zero else None,
                      "undefined": [f"{stage}/{name}" for name, key in EVAL_METRICS.items() if key in undefined]}
    if "AP" in undefined and not trainer.sanity_checking:
        rank_zero_warn(f"{stage}: the {counted(len(evaluation.image_ids), 'image')} scored hold no ground-truth "
                       f"boxes, so mAP is undefined (COCO's -1; logged as 0): check the {stage} annotations")
    if task.hparams.save_json and trainer.is_global_zero:
        path = write_detections_json(evaluation.detections, report_dir(trainer) / "detections.json")
        rank_zero_info(f"DetectionTask: {counted(len(evaluation.detections), f'scored {stage} detection')} "
                       f"written to {path}")
    logged = {f"{stage}/{name}": metrics[key] for name, key in EVAL_METRICS.items() if name != "mAP"}
    logged[f"{stage}/fitness"] = fitness(metrics)
    # Identical on every rank (scored once, broadcast): the max over ranks is the value itself, exactly (a mean could
    # round), and an epoch-level value synced this way is what Lightning expects under DDP.
    task.log(f"{stage}/mAP", metrics["AP"], prog_bar=True, sync_dist=True, reduce_fx="max")
    task.log_dict(logged, sync_dist=True, reduce_fx="max")


class EvaluationSteps:
    """The LightningModule hooks of evaluation and prediction, for a task with `detector`, `metric`, `eval_nms`,
    `predict_nms`, `derived`, `class_names` and `network_input` (DetectionTask mixes this in)."""

    def on_validation_epoch_start(self) -> None:
        start_evaluation(self)
        self.metric.reset()

    def on_test_epoch_start(self) -> None:
        self.on_validation_epoch_start()

    def on_predict_epoch_start(self) -> None:
        start_evaluation(self)

    def validation_step(self, batch: Batch, batch_idx: int) -> dict[str, list[Tensor]]:
        detections = detections_of(self, batch, self.eval_nms)
        self.metric.update(detections, batch["image_ids"])
        return {"detections": detections}

    def test_step(self, batch: Batch, batch_idx: int) -> dict[str, list[Tensor]]:
        return self.validation_step(batch, batch_idx)

    def on_validation_epoch_end(self) -> None:
        finish_evaluation(self, "val")

    def on_test_epoch_end(self) -> None:
        finish_evaluation(self, "test")

    def predict_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> list[dict]:
        """Per image: `{"image_id", "path", "detections": inference.Detections}` in original pixels."""
        rows = detections_of(self, batch, self.predict_nms)
        return [
            {"image_id": int(image_id), "path": path,
             "detections": Detections.from_rows(r, tuple(shape.tolist()), self.class_names)}
            for image_id, path, r, shape in zip(batch["image_ids"], batch["paths"], rows, batch["orig_shapes"])
        ]
