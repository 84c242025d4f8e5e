"""End to end on real data through the CLI: the gelan-t COCO experiment, shrunk to a few CPU steps on coco128,
reduces the training loss, logs to (offline) wandb, checkpoints, writes the evaluation reports (files, wandb), and
`validate` scores the stripped+fused model. (After 12 steps the EMA weights detect nothing yet;
tests/e2e/test_training_demo.py checks `save_json` and `predict` with the evaluation NMS on a trained model.)"""
from __future__ import annotations

import csv
from pathlib import Path

import lightning.pytorch as pl
import pytest

from pgi_detect.cli.commands import run
from pgi_detect.cli.main import build_cli
from conftest import REPO_ROOT

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
REPO = REPO_ROOT


def _overrides(coco128_dir: Path, tmp_path: Path) -> list[str]:
    annotations = coco128_dir / "annotations" / "instances_train2017.json"
    images = coco128_dir / "images" / "train2017"
    return [
        "--config", str(REPO / "experiments/gelan-t-coco.yaml"),
        f"--data.train={annotations}", f"--data.train_images={images}",
        f"--data.val={annotations}", f"--data.val_images={images}",
        "--data.img_size=128", "--data.batch_size=8", "--data.val_batch_size=8", "--data.num_workers=0",
        "--data.rect_val=false",
        f"--trainer.default_root_dir={tmp_path}", f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--trainer.accelerator=cpu", "--trainer.precision=32-true", "--trainer.max_epochs=12",
        "--trainer.overfit_batches=1", "--trainer.num_sanity_val_steps=0",
        # 12 steps on one fixed, un-augmented batch must lower its loss. The SGD recipe (warmup from lr 0, tuned for
        # 100k+ steps) barely moves in 12 steps, so this uses AdamW, no accumulation and a short warmup.
        "--model.optim.optimizer=adamw", "--model.optim.lr0=0.002", "--model.optim.nominal_batch_size=8",
        "--model.optim.min_warmup_iters=2", "--model.optim.warmup_epochs=1",
        '--data.augmentation={"mosaic": 0, "mixup": 0, "translate": 0, "scale": 0, "hsv_h": 0, "hsv_s": 0, '
        '"hsv_v": 0, "fliplr": 0, "blur": 0, "median_blur": 0, "to_gray": 0, "clahe": 0}',
    ]


REPORT_FILES = {"per_class.csv", "pr_curve.png", "f1_curve.png", "p_curve.png", "r_curve.png",
                "confusion_matrix.png", "confusion_matrix.csv"}


class EpochLosses(pl.Callback):
    """Training loss and validation mAP of every epoch."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.maps: list[float] = []

    def on_train_epoch_end(self, trainer, pl_module):
        self.losses.append(float(trainer.callback_metrics["train/loss_epoch"]))

    def on_validation_end(self, trainer, pl_module):  # after the task's own epoch-end evaluation
        self.maps.append(pl_module.last_eval["metrics"]["AP"])


@pytest.mark.slow
def test_coco128_fit_reduces_loss_then_validate_cli(coco128_dir, tmp_path):
    pl.seed_everything(0)
    cli = build_cli(_overrides(coco128_dir, tmp_path), run=False)
    task, datamodule = cli.model, cli.datamodule
    losses = EpochLosses()
    cli.trainer.callbacks.append(losses)
    cli.trainer.fit(task, datamodule=datamodule)
    assert len(losses.losses) == 12 and losses.losses[-1] < 0.85 * losses.losses[0], losses.losses  # measured 0.73
    assert cli.trainer.global_step == 12
    assert datamodule._mosaic is False  # CloseMosaic (last 15 epochs of 12) reached the datamodule
    checkpoints = tmp_path / "checkpoints"  # pinned to default_root_dir by the CLI
    assert (checkpoints / "last.ckpt").exists() and (checkpoints / "best.ckpt").exists()
    assert list(tmp_path.rglob("wandb/offline-run-*")), "offline wandb run not written"
    assert len(losses.maps) == 12

    reports = tmp_path / "reports"
    assert REPORT_FILES | {"results.png", "results.csv"} <= {p.name for p in (reports / "fit").iterdir()}
    with (reports / "fit" / "results.csv").open() as handle:
        history = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in history] == list(range(12))
    assert [float(r["val/mAP"]) for r in history] == pytest.approx(losses.maps, abs=1e-6)
    assert [float(r["train/loss"]) for r in history] == pytest.approx(losses.losses, rel=1e-6)
    media = {f"{p.parent.name}/{p.name.split('_')[0]}" for p in tmp_path.rglob("wandb/offline-run-*/files/media/*/*/*")}
    assert {"val/per", "val/pr", "val/confusion", "fit/results"} <= media, media  # wandb table and plots

    # best.ckpt holds the EMA weights of the best epoch: validating it reproduces that epoch's mAP.
    validate = run(["validate", *_overrides(coco128_dir, tmp_path), "--trainer.logger=false",
                    f"--ckpt_path={checkpoints / 'best.ckpt'}"])
    assert validate.model.derived.eval_model.fused and validate.model.derived.eval_model.num_branches == 1
    image_ids = validate.model.last_eval["image_ids"]
    assert len(image_ids) == 8  # overfit_batches=1: one batch of 8
    logged = validate.trainer.callback_metrics
    assert float(logged["val/mAP"]) == pytest.approx(max(losses.maps), abs=1e-6)
    assert REPORT_FILES <= {p.name for p in (reports / "validate").iterdir()}
    with (reports / "validate" / "per_class.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert table[0]["class"] == "all" and int(table[0]["images"]) == 8
    assert float(table[0]["AP50-95"]) == pytest.approx(float(logged["val/mAP"]), abs=1e-6)

    predict = run(["predict", *_overrides(coco128_dir, tmp_path), "--trainer.logger=false",
                    "--trainer.limit_predict_batches=1", f"--ckpt_path={checkpoints / 'last.ckpt'}"])
    assert predict.model.derived.eval_model.fused
    written = tmp_path / "predictions"
    assert (written / "predictions.json").exists()
