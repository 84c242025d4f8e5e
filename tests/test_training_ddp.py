"""DDP with two CPU processes (gloo): training runs, predictions are gathered from both ranks and every
validation image is scored exactly once although DistributedSampler pads the odd-sized set.

SyncBatchNorm needs CUDA in torch, so `sync_batchnorm` is exercised only by the multi-GPU configs.
"""
from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest

from test_training_task import SquaresDataModule, make_task


class RecordEvaluation(pl.Callback):
    """Each rank writes what DetectionTask evaluated (after its on_validation_epoch_end ran)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def on_validation_end(self, trainer, pl_module):
        payload = {"image_ids": pl_module.last_eval["image_ids"], "metrics": pl_module.last_eval["metrics"],
                   "local_batches": trainer.num_val_batches, "world_size": trainer.world_size,
                   "global_step": trainer.global_step}
        Path(self.directory, f"rank{trainer.global_rank}.json").write_text(json.dumps(payload))


@pytest.mark.slow
def test_ddp_two_cpu_processes_score_each_image_once(tmp_path):
    pl.seed_everything(0)
    datamodule = SquaresDataModule(train=8, val=5, batch_size=1)
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=1, logger=False,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        num_sanity_val_steps=0, default_root_dir=tmp_path, callbacks=[RecordEvaluation(str(tmp_path))],
    )
    trainer.fit(make_task(auto_accumulate=False), datamodule=datamodule)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for record in ranks:
        assert record["world_size"] == 2
        assert record["local_batches"] == [3]  # 5 images padded to 6, 3 per rank
        assert record["image_ids"] == [1000, 1001, 1002, 1003, 1004]  # each image once, none lost
        assert record["global_step"] == 4  # 8 training images / (1 per rank x 2 ranks)
    assert ranks[0]["metrics"] == ranks[1]["metrics"]  # rank 0 computed, broadcast to rank 1
