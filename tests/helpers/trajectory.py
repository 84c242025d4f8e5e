"""The refactoring guard: a short deterministic training run through the CLI with the shipped gelan-t/yolov9-t COCO
configs on the shared coco128 images (160 px, the full recipe: mosaic, mixup, copy-paste, warmup and its end, EMA,
gradient accumulation, clipping, an epoch boundary), reduced to its per-batch loss items and checksums of the final
raw and EMA weights.

`tests/test_training_trajectory.py` reproduces the recorded numbers to 1e-5 relative. Re-record only for a deliberate
change of the training numbers, and say why in the commit message:

    OMP_NUM_THREADS=1 .venv/bin/python tests/helpers/trajectory.py --write
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import lightning.pytorch as pl
import torch

REPO = Path(__file__).resolve().parents[2]
RECORD = REPO / "tests" / "data" / "trajectory.json"
MODELS = ("gelan-t", "yolov9-t")
OPTIMIZER_STEPS = 24
BATCH_SIZE = 4
# Accumulate 2, ramped from 1 over the 16 warmup batches (the official rule): steps after batches 0-7, then after
# every second batch; 24 steps take 40 batches, across the 32-batch epoch boundary.
NOMINAL_BATCH = 8
CHECKSUM_SEED = 1234
# What the recorded numbers depend on besides our code (pinned in constraints.txt); a mismatch names them.
NUMERIC_PACKAGES = ("torch", "opencv-python-headless", "numpy", "albumentations", "lightning")


def package_versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in NUMERIC_PACKAGES}


def cli_arguments(model: str, coco128: Path, output: Path) -> list[str]:
    """The user's command line: the shipped experiment config, pointed at coco128 and shrunk to a CPU run."""
    annotations = coco128 / "annotations" / "instances_train2017.json"
    images = coco128 / "images" / "train2017"
    return [
        "--config", str(REPO / "experiments" / f"{model}-coco.yaml"),
        f"--data.train={annotations}", f"--data.train_images={images}",
        f"--data.val={annotations}", f"--data.val_images={images}",
        "--data.img_size=160", f"--data.batch_size={BATCH_SIZE}", "--data.num_workers=0",
        f"--model.optim.nominal_batch_size={NOMINAL_BATCH}", "--model.optim.warmup_epochs=0.5",
        "--model.optim.min_warmup_iters=10",
        f"--trainer.max_steps={OPTIMIZER_STEPS}", "--trainer.limit_val_batches=0",
        "--trainer.accelerator=cpu", "--trainer.precision=32-true", "--trainer.deterministic=true",
        f"--trainer.default_root_dir={output}",
        "--trainer.logger=" + json.dumps({"class_path": "lightning.pytorch.loggers.CSVLogger",
                                          "init_args": {"save_dir": str(output)}}),
    ]


def weight_checksums(state: dict[str, torch.Tensor]) -> dict[str, float]:
    """Sum, sum of squares and a fixed random projection of every floating tensor, in float64."""
    flat = torch.cat([v.detach().double().flatten() for k, v in sorted(state.items()) if v.is_floating_point()])
    projection = torch.rand(flat.numel(), generator=torch.Generator().manual_seed(CHECKSUM_SEED), dtype=torch.float64)
    return {"sum": float(flat.sum()), "sum_sq": float(flat.square().sum()), "projection": float(flat @ projection)}


class TrajectoryRecorder(pl.Callback):
    """Loss items of every training batch and the raw weights after the last optimizer step."""

    def __init__(self) -> None:
        self.items: list[list[float]] = []
        self.pipelines: dict[str, int] = {}
        self.raw: dict[str, float] | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        metrics = trainer.callback_metrics
        self.items.append([float(metrics[f"train/{name}_loss_step"]) for name in ("box", "cls", "dfl")])
        for pipeline in batch["pipelines"]:
            self.pipelines[pipeline] = self.pipelines.get(pipeline, 0) + 1
        if trainer.global_step == OPTIMIZER_STEPS:
            self.raw = weight_checksums(pl_module.detector.state_dict())


def run_trajectory(model: str, coco128: Path, output: Path) -> dict:
    """Train `model` for OPTIMIZER_STEPS steps through the CLI; returns the trajectory record."""
    from pgi_detect.main import build_cli

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cli = build_cli(cli_arguments(model, coco128, output), run=False)
        recorder = TrajectoryRecorder()
        cli.trainer.callbacks.append(recorder)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    finally:
        torch.set_num_threads(threads)
    assert cli.trainer.global_step == OPTIMIZER_STEPS and recorder.raw is not None
    # The EMA callback copies the average into the detector when training ends.
    return {"accumulate": cli.model.accumulation.final, "pipelines": recorder.pipelines, "items": recorder.items,
            "raw": recorder.raw, "ema": weight_checksums(cli.model.detector.state_dict())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    parser.add_argument("--write", action="store_true", help=f"write {RECORD.relative_to(REPO)}")
    args = parser.parse_args(argv)
    records: dict = {"versions": package_versions()}
    for model in MODELS:
        with tempfile.TemporaryDirectory() as output:
            records[model] = run_trajectory(model, args.shared / "data" / "coco128", Path(output))
        print(model, "first items", records[model]["items"][0], "ema", records[model]["ema"])
    if args.write:
        RECORD.parent.mkdir(parents=True, exist_ok=True)
        RECORD.write_text(json.dumps(records, indent=1) + "\n")
        print(f"wrote {RECORD}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "tests"))
    sys.exit(main())
