"""`DetectionTask` as a base class: a custom loss, a custom metric and a custom model are each one override
(`configure_losses`, `configure_metrics`, `configure_models`), trained and validated through a Lightning Trainer,
as docs/models.md shows them."""
from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from helpers.backbones import TinyBackbone
from helpers.squares import SquaresDataModule, make_task, make_trainer
from pgi_detect.evaluation import CocoDetectionMetric
from pgi_detect.loss import DetectionLoss, LossResult
from pgi_detect.models import Detector, DetectorSpec, NeckSpec
from pgi_detect.training import DetectionTask

pytestmark = pytest.mark.usefixtures("single_torch_thread")


class RecipeLossPlusWeightNorm:
    """The recipe loss plus a small L2 penalty on the class-branch weights, as its own logged item."""

    def __init__(self, recipe: DetectionLoss, detector: torch.nn.Module, weight: float = 1e-4) -> None:
        self.recipe, self.detector, self.weight = recipe, detector, weight

    def __call__(self, branches, targets) -> LossResult:
        total, items = self.recipe(branches, targets)
        batch_size = branches[-1][0].shape[0]
        penalty = self.weight * sum(p.square().sum() for n, p in self.detector.named_parameters() if "cls" in n)
        named = dict(zip(DetectionLoss.item_names, items))
        return LossResult(total + penalty * batch_size, {**named, "l2": penalty.detach()}, batch_size)


class PenalisedTask(DetectionTask):
    def configure_losses(self) -> None:
        super().configure_losses()
        self.criterion = RecipeLossPlusWeightNorm(self.criterion, self.detector)


class LogMetrics(pl.Callback):
    def __init__(self) -> None:
        self.keys: set[str] = set()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.keys |= set(trainer.callback_metrics)
        loss, items = trainer.callback_metrics["train/loss"], [
            trainer.callback_metrics[f"train/{n}_loss"] for n in ("box", "cls", "dfl", "l2")]
        assert float(loss) == pytest.approx(float(sum(items)), rel=1e-6)


def test_a_custom_loss_is_one_override(tmp_path):
    pl.seed_everything(0)
    task = make_task(task_class=PenalisedTask, optim={"auto_accumulate": False})
    log = LogMetrics()
    make_trainer(tmp_path, [log], max_steps=2, limit_val_batches=0, enable_checkpointing=False).fit(
        task, datamodule=SquaresDataModule(train=8))
    assert {"train/l2_loss", "train/box_loss", "train/loss"} <= log.keys
    assert task.global_step == 2


class PycocotoolsRecordingMetric(CocoDetectionMetric):
    """COCO mAP scored by pycocotools, remembering which images each evaluation saw."""

    def __init__(self) -> None:
        super().__init__(backend="pycocotools")
        self.evaluated: list[list[int]] = []

    def compute(self):
        evaluation = super().compute()
        self.evaluated.append(evaluation.image_ids)
        return evaluation


class RecordingMetricTask(DetectionTask):
    def configure_metrics(self) -> None:
        self.metric = PycocotoolsRecordingMetric()


def test_a_custom_metric_is_one_override(tmp_path):
    pl.seed_everything(0)
    task = make_task(task_class=RecordingMetricTask, optim={"auto_accumulate": False})
    trainer = make_trainer(tmp_path, max_epochs=1, limit_train_batches=2, enable_checkpointing=False)
    trainer.fit(task, datamodule=SquaresDataModule(train=8, val=5, batch_size=2))
    assert task.metric.evaluated == [[1000, 1001, 1002, 1003, 1004]]
    assert "val/mAP" in trainer.callback_metrics


class TinyBackboneTask(DetectionTask):
    """The model built in code instead of from a zoo name: a tiny backbone under a one-block GELAN neck."""

    def configure_models(self) -> None:
        self.detector = Detector.from_backbone(TinyBackbone(), num_classes=self.hparams.num_classes,
                                               neck=NeckSpec((32, 48, 64), depth=1))
        self.spec = self.detector.spec


def test_a_custom_model_is_one_override(tmp_path):
    pl.seed_everything(0)
    task = make_task(task_class=TinyBackboneTask, model="tiny", optim={"auto_accumulate": False})
    assert isinstance(task.spec, DetectorSpec)
    assert any(isinstance(module, TinyBackbone) for module in task.detector.modules())
    before = [p.detach().clone() for p in task.detector.parameters()]
    trainer = make_trainer(tmp_path, max_epochs=1, limit_train_batches=2, enable_checkpointing=False)
    trainer.fit(task, datamodule=SquaresDataModule(train=8, val=5, batch_size=2))
    assert any(not torch.equal(a, b) for a, b in zip(before, task.detector.parameters()))
    assert "val/mAP" in trainer.callback_metrics
