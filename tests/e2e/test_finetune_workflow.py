"""The fine-tuning workflow end to end, as docs/training.md tells a user to run it, on real images: the shared
coco128-val-yolo data arranged in the ultralytics layout (a data.yaml with train/val folders), `check-data`, `fit`
with the shipped experiments/finetune-custom.yaml starting from an official-format gelan-c file, `validate` of the
best checkpoint, `detect` on a folder and `export` to ONNX with the onnxruntime check."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from helpers.official import official_release_file
from helpers.runs import REPO, run_cli

pytestmark = pytest.mark.slow
CONFIG = REPO / "experiments" / "finetune-custom.yaml"


def ultralytics_dataset(source: Path, root: Path, num_val: int = 16) -> Path:
    """coco128-val-yolo split into images/{train,val} + labels/{train,val} (symlinks) and a data.yaml."""
    images = sorted(p for p in (source / "images").rglob("*.jpg"))
    for index, image in enumerate(images):
        split = "val" if index < num_val else "train"
        for kind, path in (("images", image), ("labels", source / "labels" / image.relative_to(source / "images"))):
            path = path.with_suffix(".txt") if kind == "labels" else path
            if path.exists():
                (root / kind / split).mkdir(parents=True, exist_ok=True)
                os.symlink(path, root / kind / split / path.name)
    names = yaml.safe_load((source / "classes.yaml").read_text())["names"]
    data_yaml = root.parent / "custom.yaml"
    data_yaml.write_text(yaml.safe_dump({"path": root.name, "train": "images/train", "val": "images/val",
                                         "names": names}))
    return data_yaml


def test_finetune_validate_detect_export(coco128_val_yolo_dir, tmp_path):
    data_yaml = ultralytics_dataset(coco128_val_yolo_dir, tmp_path / "custom")
    weights = tmp_path / "gelan-c.pt"
    official_release_file(weights, "gelan-c", num_classes=80)  # what the official release ships, in its layout
    run_dir = tmp_path / "run"

    report = run_cli("check-data", "--path", str(data_yaml))
    assert "images: 112" in report.stdout and "images: 16" in report.stdout, report.stdout

    small = [f"--data.dataset={data_yaml}", f"--model.weights={weights}", "--data.img_size=160",
             "--data.batch_size=4", "--data.num_workers=0", "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
             "--trainer.accelerator=cpu", "--trainer.precision=32-true", "--trainer.num_sanity_val_steps=0",
             f"--trainer.default_root_dir={run_dir}", f"--trainer.logger.init_args.save_dir={run_dir}"]
    fit = run_cli("fit", "--config", str(CONFIG), *small, env=None)
    assert "loaded " in fit.stdout + fit.stderr and "gelan-c.pt" in fit.stdout + fit.stderr
    best = run_dir / "checkpoints" / "best.ckpt"
    assert best.is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()

    validate = run_cli("validate", "--config", str(CONFIG), *small, f"--ckpt_path={best}")
    assert "val/mAP" in validate.stdout

    detections = tmp_path / "detect"
    run_cli("detect", "--checkpoint", str(best), "--source", str(data_yaml.parent / "custom" / "images" / "val"),
            "--output", str(detections), "--img-size", "160", "--conf", "0.0001")
    records = json.loads((detections / "predictions.json").read_text())
    assert {r["file_name"] for r in records} <= {p.name for p in (data_yaml.parent / "custom/images/val").iterdir()}
    assert len(list((detections / "images").iterdir())) == 16

    exported = run_cli("export", "--checkpoint", str(best), "--output", str(tmp_path / "model.onnx"),
                       "--img-size", "160", "--verify")
    assert (tmp_path / "model.onnx").is_file()
    assert "onnxruntime vs PyTorch (raw predictions, random images): max abs difference" in exported.stdout
