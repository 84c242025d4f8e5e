"""DDP with two CPU processes (gloo): training runs, predictions are gathered from both ranks and every
validation image is scored exactly once although DistributedSampler pads the odd-sized set; rectangular
validation batches are sharded by rank and give the same evaluation as one process.

SyncBatchNorm needs CUDA in torch, so `sync_batchnorm` is exercised only by the multi-GPU configs.
"""
from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from pgi_detect.data import DetectionDataModule
from pgi_detect.training import EvaluationReports
from helpers.datasets import rectangles_coco
from helpers.squares import SquaresDataModule, make_task


class RecordEvaluation(pl.Callback):
    """Each rank writes what DetectionTask evaluated (after its on_validation_epoch_end ran), the image ids of each
    of its validation batches and their detections; rank 0 also saves the weights it evaluated."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.batches: list[list[int]] = []
        self.detections: dict[int, list] = {}

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.batches.append(batch["image_ids"].tolist())
        for image_id, rows in zip(self.batches[-1], outputs["detections"]):
            self.detections[image_id] = rows.tolist()

    def on_validation_end(self, trainer, pl_module):
        payload = {"image_ids": pl_module.last_eval["image_ids"], "metrics": pl_module.last_eval["metrics"],
                   "kept_evaluation": pl_module.last_eval["evaluation"] is not None,
                   "local_batches": trainer.num_val_batches, "world_size": trainer.world_size,
                   "global_step": trainer.global_step, "batches": self.batches,
                   "detections": self.detections}
        Path(self.directory, f"rank{trainer.global_rank}.json").write_text(json.dumps(payload))
        if trainer.global_rank == 0:
            torch.save(pl_module.state_dict(), Path(self.directory, "weights.pt"))


@pytest.mark.slow
def test_ddp_two_cpu_processes_score_each_image_once(tmp_path, capfd):
    pl.seed_everything(0)
    datamodule = SquaresDataModule(train=8, val=5, batch_size=1)
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=1, logger=False,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        num_sanity_val_steps=0, default_root_dir=tmp_path,
        callbacks=[RecordEvaluation(str(tmp_path)), EvaluationReports(every_n_epochs=1)],
    )
    trainer.fit(make_task(optim={"auto_accumulate": False}, save_json=True), datamodule=datamodule)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for record in ranks:
        assert record["world_size"] == 2
        assert record["local_batches"] == [3]  # 5 images padded to 6, 3 per rank
        assert record["image_ids"] == [1000, 1001, 1002, 1003, 1004]  # each image once, none lost
        assert record["global_step"] == 4  # 8 training images / (1 per rank x 2 ranks)
    assert ranks[0]["metrics"] == ranks[1]["metrics"]  # rank 0 computed, broadcast to rank 1
    # Rank 0 alone keeps the full evaluation and writes the reports and the scored detections from it
    assert [record["kept_evaluation"] for record in ranks] == [True, False]
    reports = tmp_path / "reports" / "fit"
    table = (reports / "per_class.csv").read_text().splitlines()
    assert table[1].startswith("all,5,")  # 5 images, each once
    assert sorted({d["image_id"] for d in json.loads((reports / "detections.json").read_text())}) == [
        1000, 1001, 1002, 1003, 1004]
    # Epoch-level logs are reduced over the ranks (or already global): no "use sync_dist=True" advice from Lightning
    assert "sync_dist=True" not in "".join(capfd.readouterr())


def rect_datamodule(root: Path) -> DetectionDataModule:
    files = dict(train=str(root / "ann.json"), train_images=str(root / "images"), val=str(root / "ann.json"),
                 val_images=str(root / "images"))
    return DetectionDataModule(**files, img_size=64, batch_size=1, val_batch_size=2, num_workers=0, rect_val=True)


@pytest.mark.slow
def test_ddp_rect_validation_matches_one_process(tmp_path):
    """rect_val under DDP (experiments/base/ddp.yaml): Lightning keeps the rank-sharded sampler, both ranks run the
    same number of fit-time validation steps, and the gathered evaluation equals a single process's."""
    data = tmp_path / "data"
    rectangles_coco(data, 5, sizes=((64, 96), (96, 40), (60, 90)))
    task_args = dict(num_classes=6, class_names=[f"c{c}" for c in range(6)], category_ids=list(range(1, 7)),
                     optim={"auto_accumulate": False})
    pl.seed_everything(0)
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=1, limit_train_batches=1, logger=False,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        num_sanity_val_steps=0, default_root_dir=tmp_path, callbacks=[RecordEvaluation(str(tmp_path))],
    )
    trainer.fit(make_task(**task_args), datamodule=rect_datamodule(data))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]

    single = make_task(**task_args)
    single.load_state_dict(torch.load(tmp_path / "weights.pt"))
    recorder = RecordEvaluation(str(tmp_path / "single"))
    Path(recorder.directory).mkdir()
    pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
               callbacks=[recorder]).validate(single, datamodule=rect_datamodule(data))
    batches = recorder.batches
    assert len(batches) == 3  # 5 images in aspect-ratio batches of 2, 2, 1
    # rank 0 takes batches 0 and 2, rank 1 batch 1 twice (equal step counts; the repeat is dropped at gather)
    assert ranks[0]["batches"] == [batches[0], batches[2]] and ranks[1]["batches"] == [batches[1]] * 2
    for record in ranks:
        assert record["local_batches"] == [2]
        assert record["image_ids"] == single.last_eval["image_ids"] == [1, 2, 3, 4, 5]
        assert record["metrics"] == pytest.approx(single.last_eval["metrics"], abs=1e-6)
        # mAP is ~0 after one step, so also compare each image's detections (JSON keys are strings)
        for image_id, rows in record["detections"].items():
            np.testing.assert_allclose(rows, recorder.detections[int(image_id)], rtol=1e-4, atol=1e-3)
