"""Predictor.from_checkpoint on a real DetectionTask checkpoint: same weights, class names, stripped and fused."""
from __future__ import annotations

from dataclasses import replace

import json
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from pgi_detect.geometry import NMS_DETECT
from pgi_detect.inference import Predictor
from pgi_detect.weights import read_weights
from pgi_detect.training import DetectionTask


pytestmark = pytest.mark.usefixtures("single_torch_thread")


def save_task_checkpoint(task: DetectionTask, path: Path) -> Path:
    trainer = pl.Trainer(
        logger=False, enable_checkpointing=False, accelerator="cpu", enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.strategy.connect(task)
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def yolov9_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[DetectionTask, Path]:
    torch.manual_seed(0)
    task = DetectionTask("yolov9-t", num_classes=2, class_names=["ball", "cup"])
    with torch.no_grad():  # move away from the initial weights so a failed load would show
        for parameter in task.detector.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.01)
    path = save_task_checkpoint(task, tmp_path_factory.mktemp("ckpt") / "task.ckpt")
    return task, path


def test_checkpoint_loads_weights_and_names(yolov9_checkpoint: tuple[DetectionTask, Path]) -> None:
    task, path = yolov9_checkpoint
    loaded = read_weights(path)
    assert loaded.class_names == ["ball", "cup"] and loaded.spec.model == "yolov9-t"
    for (name, expected), actual in zip(task.detector.state_dict().items(), loaded.detector.state_dict().values()):
        assert torch.equal(expected, actual), name


def test_predictor_runs_stripped_fused_main_branch(yolov9_checkpoint: tuple[DetectionTask, Path]) -> None:
    task, path = yolov9_checkpoint
    predictor = Predictor.from_checkpoint(path, nms=replace(NMS_DETECT, conf_thres=0.3, iou_thres=0.5), img_size=64)
    assert predictor.class_names == ["ball", "cup"]
    assert predictor.nms.conf_thres == 0.3 and predictor.nms.iou_thres == 0.5
    assert predictor.model.num_branches == 1 and predictor.model.fused and not predictor.model.training
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = task.detector.eval().predict_raw(images)  # the unfused dual model's main output
    assert torch.allclose(predictor.raw_predictions(images), expected, atol=1e-4, rtol=1e-4)


def test_detect_command_writes_outputs(yolov9_checkpoint: tuple[DetectionTask, Path], tmp_path: Path) -> None:
    from PIL import Image

    from pgi_detect.cli.detect import detect

    _, path = yolov9_checkpoint
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(tmp_path / name)
    run = detect(["--checkpoint", str(path), "--source", str(tmp_path / "a.png"), str(tmp_path / "b.png"),
                       "--output", str(tmp_path / "out"), "--img-size", "64", "--conf", "1e-6", "--max-det", "5"])
    records = json.loads(run.json_path.read_text())
    assert run.frames == 2 and len(records) == run.detections == 10
    assert {r["file_name"] for r in records} == {"a.png", "b.png"}
    assert {r["category_name"] for r in records} <= {"ball", "cup"}
    assert sorted(p.name for p in run.images) == ["a.png", "b.png"]  # named and written like the inputs


def test_write_task_predictions_matches_predict_step_format(tmp_path: Path) -> None:
    from PIL import Image

    from pgi_detect.inference import Detections, write_task_predictions

    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "000000000009.jpg")
    detections = Detections.from_rows(torch.tensor([[1.0, 2.0, 11.0, 22.0, 0.5, 1.0]]), (30, 40), ["ball", "cup"])
    item = {"image_id": 9, "path": str(tmp_path / "000000000009.jpg"), "detections": detections}
    run = write_task_predictions([item], tmp_path / "out", category_ids=[3, 7])
    (record,) = json.loads(run.json_path.read_text())
    assert record == {"image_id": 9, "category_id": 7, "class_index": 1, "category_name": "cup",
                      "bbox": [1.0, 2.0, 10.0, 20.0], "score": 0.5, "file_name": "000000000009.jpg"}
    assert run.images[0].is_file()


def test_converted_official_file_loads(tmp_path: Path) -> None:
    from pgi_detect.models import build_model
    from pgi_detect.weights import save_detector

    torch.manual_seed(1)
    detector = build_model("gelan-t", num_classes=4).eval()
    save_detector(detector, tmp_path / "converted.pt")
    predictor = Predictor.from_checkpoint(tmp_path / "converted.pt", img_size=64)
    assert predictor.class_names is None and predictor.model.fused
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = detector.predict_raw(images)
    assert torch.allclose(predictor.raw_predictions(images), expected, atol=1e-4, rtol=1e-4)


def test_cls_width_is_rebuilt_from_checkpoint_hparams(tmp_path: Path) -> None:
    torch.manual_seed(0)
    task = DetectionTask("gelan-t", num_classes=2, cls_width=80, class_names=["ball", "cup"])
    assert task.detector.cls_width == 80 and task.detector.main_head.cls[0][0].conv.out_channels == 80
    path = save_task_checkpoint(task, tmp_path / "task.ckpt")
    assert torch.load(path, map_location="cpu", weights_only=False)["hyper_parameters"]["cls_width"] == 80
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = task.detector.eval().predict_raw(images)
    loaded = read_weights(path).detector.eval()
    restored = DetectionTask.load_from_checkpoint(path, map_location="cpu").detector.eval()
    for detector in (loaded, restored):
        assert detector.cls_width == 80
        with torch.no_grad():
            assert torch.equal(detector.predict_raw(images), expected)
