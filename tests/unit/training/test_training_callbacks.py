"""EMA (formula, buffers, validation swap, checkpoint layout), close-mosaic, non-finite guard, wandb images."""
from __future__ import annotations

import math
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from helpers.squares import SquaresDataModule
from pgi_detect.training import DetectionDataSource, NonFiniteLossGuard
from pgi_detect.training.callbacks import (
    CloseMosaic,
    ModelEMA,
    PredictionWriter,
    ValidationImageLogger,
    ema_decay,
    wandb_box_data,
)


def test_ema_decay_formula():
    assert ema_decay(1) == pytest.approx(0.9999 * (1 - math.exp(-1 / 2000)))
    assert ema_decay(2000) == pytest.approx(0.9999 * (1 - math.exp(-1)))
    assert ema_decay(10**6) == pytest.approx(0.9999)
    assert ema_decay(100, decay=0.99, tau=10) == pytest.approx(0.99 * (1 - math.exp(-10)))


class ToyModule(pl.LightningModule):
    """Linear + BatchNorm so that both parameters and BN buffers go through the EMA (which averages `detector`)."""

    def __init__(self) -> None:
        super().__init__()
        self.detector = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 1))
        self.seen_in_validation: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.detector(x), y)

    def validation_step(self, batch, batch_idx):
        self.seen_in_validation.append(self.detector[0].weight.detach().clone())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class RecordWeights(pl.Callback):
    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []

    def on_train_start(self, trainer, pl_module):
        self.states.append({k: v.detach().clone() for k, v in pl_module.state_dict().items()})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.states.append({k: v.detach().clone() for k, v in pl_module.state_dict().items()})


def _loader(n: int = 24) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=generator)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4)


def _trainer(tmp_path, callbacks, **kwargs) -> pl.Trainer:
    return pl.Trainer(
        default_root_dir=tmp_path, accelerator="cpu", logger=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=callbacks, **kwargs,
    )


def test_ema_matches_reference_update_rule_including_bn_buffers(tmp_path):
    pl.seed_everything(0)
    module = ToyModule()
    recorder = RecordWeights()
    ema = ModelEMA(decay=0.9, tau=3.0)  # fast decay so every update matters
    trainer = _trainer(tmp_path, [recorder, ema], max_steps=5, enable_checkpointing=False, limit_val_batches=0)
    trainer.fit(module, _loader())
    # Reference: ema starts as the initial weights; the k-th update uses d = decay·(1 − exp(−k/tau)).
    expected = dict(recorder.states[0])
    for k, state in enumerate(recorder.states[1:], start=1):
        d = 0.9 * (1 - math.exp(-k / 3.0))
        expected = {
            key: (expected[key] * d + value * (1 - d)) if value.is_floating_point() else value
            for key, value in state.items()
        }
    assert ema.updates == 5
    # After fit the module holds the EMA weights (WeightAveraging copies them at train end).
    final = module.state_dict()
    for key in ("detector.0.weight", "detector.1.running_mean", "detector.1.running_var", "detector.1.weight"):
        torch.testing.assert_close(final[key], expected[key], rtol=1e-5, atol=1e-6)
    assert final["detector.1.num_batches_tracked"] == recorder.states[-1]["detector.1.num_batches_tracked"]
    assert not torch.allclose(final["detector.0.weight"], recorder.states[-1]["detector.0.weight"])


def test_validation_uses_ema_and_checkpoint_holds_both(tmp_path):
    pl.seed_everything(0)
    module = ToyModule()
    ema = ModelEMA(decay=0.9, tau=3.0)
    recorder = RecordWeights()
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = _trainer(tmp_path, [recorder, ema, checkpoint], max_epochs=1, num_sanity_val_steps=0)
    trainer.fit(module, _loader(), _loader(8))
    raw = recorder.states[-1]["detector.0.weight"]
    averaged = ema.averaged_module[0].weight.detach()
    # Validation ran at the end of the epoch with the averaged weights swapped in.
    assert module.seen_in_validation, "validation did not run"
    torch.testing.assert_close(module.seen_in_validation[-1], averaged)
    assert not torch.allclose(module.seen_in_validation[-1], raw)
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    torch.testing.assert_close(saved["state_dict"]["detector.0.weight"], averaged)  # EMA = the model weights
    torch.testing.assert_close(saved["current_model_state"]["detector.0.weight"], raw)  # raw weights for resume
    assert int(saved["averaging_state"]["n_averaged"]) == ema.updates + 1


class FakeDataModule(SquaresDataModule):
    """The DetectionDataSource contract; records the close-mosaic calls."""

    def __init__(self) -> None:
        super().__init__(train=1, val=1)
        self.calls = self.mosaic_calls


def test_close_mosaic_switches_at_the_right_epoch():
    datamodule = FakeDataModule()
    assert isinstance(datamodule, DetectionDataSource)
    trainer = SimpleNamespace(max_epochs=20, current_epoch=0, datamodule=datamodule)
    callback = CloseMosaic(close_mosaic=5)
    for epoch in range(15):
        trainer.current_epoch = epoch
        callback.on_train_epoch_start(trainer, None)
    assert datamodule.calls == []
    trainer.current_epoch = 15  # 20 - 5
    callback.on_train_epoch_start(trainer, None)
    assert datamodule.calls == [False]
    callback.on_train_epoch_start(trainer, None)
    assert datamodule.calls == [False]  # only once


def test_close_mosaic_after_resume():
    # A checkpoint written at the end of epoch 14 resumes in epoch 15: close before the loaders start.
    datamodule = FakeDataModule()
    trainer = SimpleNamespace(max_epochs=20, current_epoch=0, datamodule=datamodule, state=SimpleNamespace(fn="fit"))
    CloseMosaic(close_mosaic=5).on_load_checkpoint(trainer, None, {"epoch": 14})
    assert datamodule.calls == [False]
    # A mid-epoch checkpoint of epoch 14 (Ctrl-C, preemption) resumes inside epoch 14: mosaic stays on.
    mid_epoch = {"epoch": 14, "loops": {"fit_loop": {"epoch_progress": {"current": {"processed": 14}}}}}
    datamodule = trainer.datamodule = FakeDataModule()
    CloseMosaic(close_mosaic=5).on_load_checkpoint(trainer, None, mid_epoch)
    assert datamodule.calls == []
    end_of_epoch = {"epoch": 14, "loops": {"fit_loop": {"epoch_progress": {"current": {"processed": 15}}}}}
    CloseMosaic(close_mosaic=5).on_load_checkpoint(trainer, None, end_of_epoch)
    assert datamodule.calls == [False]
    # validate/test/predict of that checkpoint never switch (nor report) anything.
    datamodule = trainer.datamodule = FakeDataModule()
    trainer.state.fn = "validate"
    CloseMosaic(close_mosaic=5).on_load_checkpoint(trainer, None, end_of_epoch)
    assert datamodule.calls == []
    trainer.state.fn = "fit"
    # ... but not one written at the end of epoch 13.
    datamodule = FakeDataModule()
    trainer.datamodule = datamodule
    callback = CloseMosaic(close_mosaic=5)
    callback.on_load_checkpoint(trainer, None, {"epoch": 13})
    assert datamodule.calls == []
    trainer.current_epoch = 14
    callback.on_train_start(trainer, None)
    assert datamodule.calls == []
    # close_mosaic = 0 never closes.
    datamodule = FakeDataModule()
    trainer.datamodule, trainer.current_epoch = datamodule, 19
    CloseMosaic(close_mosaic=0).on_train_epoch_start(trainer, None)
    assert datamodule.calls == []


def test_nonfinite_guard_skips_then_raises():
    guard = NonFiniteLossGuard(max_consecutive=3)
    assert guard.should_skip(finite=False) is True
    assert guard.should_skip(finite=False) is True
    assert guard.should_skip(finite=True) is False  # the streak resets
    assert guard.should_skip(finite=False) is True
    assert guard.should_skip(finite=False) is True
    with pytest.raises(FloatingPointError):
        guard.should_skip(finite=False)
    assert guard.total_skipped == 5


def test_validation_image_logger_offline_wandb(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    from lightning.pytorch.loggers import WandbLogger

    logger = WandbLogger(project="pgi-test", save_dir=str(tmp_path), offline=True)
    trainer = SimpleNamespace(
        loggers=[logger], sanity_checking=False, is_global_zero=True, current_epoch=0, global_step=3,
    )
    module = SimpleNamespace(class_names=["circle", "square"])
    images = torch.randint(0, 255, (3, 3, 64, 64), dtype=torch.uint8)
    # originals are 128 x 128, letterboxed at gain 0.5
    batch = {"images": images, "orig_shapes": torch.full((3, 2), 128), "scales": torch.full((3, 2), 0.5),
             "pads": torch.zeros(3, 2)}
    detections = [torch.tensor([[8.0, 10.0, 60.0, 80.0, 0.9, 1.0], [2.0, 2.0, 4.0, 4.0, 0.1, 0.0]])] * 3
    callback = ValidationImageLogger(num_images=2)
    drawn = []
    monkeypatch.setattr("pgi_detect.training.callbacks.wandb_box_data", lambda rows, names: drawn.append(rows) or {})
    callback.on_validation_batch_end(trainer, module, {"detections": detections}, batch, 0)
    assert callback.logged_count == 2
    torch.testing.assert_close(drawn[0], torch.tensor([[4.0, 5.0, 30.0, 40.0, 0.9, 1.0]]))  # input pixels, score >= .25
    callback.on_validation_batch_end(trainer, module, {"detections": detections}, batch, 1)
    assert callback.logged_count == 2  # only the first batch
    logger.experiment.finish()
    assert len(list(tmp_path.rglob("*.png"))) >= 2, list(tmp_path.rglob("*"))


def test_validation_image_logger_ignores_other_loggers():
    trainer = SimpleNamespace(loggers=[], sanity_checking=False, is_global_zero=True, current_epoch=0, global_step=0)
    callback = ValidationImageLogger()
    images = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    callback.on_validation_batch_end(trainer, None, {"detections": [torch.zeros(0, 6)]}, {"images": images}, 0)
    assert callback.logged_count == 0


def test_wandb_box_data_payload():
    rows = torch.tensor([[4.0, 5.0, 30.0, 40.0, 0.875, 1.0]])
    payload = wandb_box_data(rows, ["circle", "square"])["predictions"]
    assert payload["class_labels"] == {0: "circle", 1: "square"}
    (box,) = payload["box_data"]
    assert box["position"] == {"minX": 4.0, "minY": 5.0, "maxX": 30.0, "maxY": 40.0}
    assert (box["class_id"], box["box_caption"], box["domain"]) == (1, "square 0.88", "pixel")
    assert "class_labels" not in wandb_box_data(rows, None)["predictions"]


def test_prediction_writer_uses_the_task_category_ids(tmp_path):
    import json

    trainer = SimpleNamespace(default_root_dir=str(tmp_path), world_size=1, global_rank=0)
    module = SimpleNamespace(category_ids=[3, 7])
    from pgi_detect.inference import Detections

    detections = Detections.from_rows(torch.tensor([[1.0, 2.0, 11.0, 22.0, 0.5, 1.0]]), (30, 40), ["ball", "cup"])
    item = {"image_id": 9, "path": str(tmp_path / "000000000009.jpg"), "detections": detections}
    PredictionWriter(save_images=False).write_on_epoch_end(trainer, module, [[item]], [[0]])
    (record,) = json.loads((tmp_path / "predictions" / "predictions.json").read_text())
    assert (record["image_id"], record["category_id"], record["category_name"]) == (9, 7, "cup")


def test_evaluation_reports_history_survives_resume_and_skips_sanity_check(tmp_path):
    """Metrics over epochs live in the callback's checkpoint state, so a resumed fit continues the curves; the
    sanity-check validation is never reported as the fit's last one."""
    import csv

    from helpers.squares import make_task, make_trainer
    from pgi_detect.training import EvaluationReports

    pl.seed_everything(0)
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = make_trainer(tmp_path, [EvaluationReports(every_n_epochs=5), checkpoint], max_epochs=2,
                         num_sanity_val_steps=1)
    first.fit(make_task(optim={"auto_accumulate": False}), datamodule=SquaresDataModule(train=4, val=6))
    reports = tmp_path / "reports" / "fit"
    with (reports / "per_class.csv").open() as handle:  # written at the end of fit (epoch 2 was not due), from
        assert next(csv.DictReader(handle))["images"] == "6"  # the 6-image validation, not the 4-image sanity check
    resumed = EvaluationReports(every_n_epochs=5)
    second = make_trainer(tmp_path, [resumed, pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt")],
                          max_epochs=3)
    second.fit(make_task(optim={"auto_accumulate": False}), datamodule=SquaresDataModule(train=4, val=6),
               ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    with (reports / "results.csv").open() as handle:
        history = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in history] == [0, 1, 2]
    assert all(r["val/mAP"] != "" and r["train/loss"] != "" for r in history)
    assert float(history[2]["val/mAP"]) == pytest.approx(float(second.callback_metrics["val/mAP"]))
    assert (reports / "results.png").exists()


def test_close_mosaic_decides_the_first_epoch_of_a_run_at_setup():
    """Workers prefetch the first batches when the loader iterator is created, before any epoch hook: a run whose
    every epoch is in the closed window must switch mosaic off at setup already."""
    datamodule = FakeDataModule()
    trainer = SimpleNamespace(max_epochs=2, current_epoch=0, datamodule=datamodule)
    CloseMosaic(close_mosaic=3).setup(trainer, None, "fit")
    assert datamodule.calls == [False]
    datamodule = FakeDataModule()
    trainer = SimpleNamespace(max_epochs=20, current_epoch=0, datamodule=datamodule)
    CloseMosaic(close_mosaic=3).setup(trainer, None, "fit")
    assert datamodule.calls == []
