"""ONNX export checked with onnxruntime against PyTorch: raw output (dynamic batch, dynamic H/W), NMS inside, CLI."""
from __future__ import annotations

from dataclasses import replace

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from pgi_detect.cli.export import export_main
from pgi_detect.inference.export import NMSOutput, export_onnx, run_onnx
from pgi_detect.models import build_model
from pgi_detect.geometry import NMS_DETECT, NMSSettings, non_max_suppression
from conftest import REPO_ROOT

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def yolov9_t() -> nn.Module:
    torch.manual_seed(0)
    return build_model("yolov9-t", num_classes=3)  # dual branch: export must strip it


@pytest.fixture(scope="module")
def raw_dynamic_onnx(yolov9_t: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "raw.onnx"
    return export_onnx(yolov9_t, path, 64, dynamic_batch=True, dynamic_shape=True, class_names=["a", "b", "c"])


def reference(detector: nn.Module, images: Tensor) -> Tensor:
    with torch.no_grad():
        return detector.eval().predict_raw(images)


@pytest.mark.parametrize("batch, height, width", [(1, 64, 64), (2, 64, 64), (2, 96, 128)])
def test_raw_export_matches_pytorch(
    yolov9_t: nn.Module, raw_dynamic_onnx: Path, batch: int, height: int, width: int
) -> None:
    images = torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(batch))
    expected = reference(yolov9_t, images)  # unfused dual model, main branch
    actual = run_onnx(raw_dynamic_onnx, images)
    assert actual.shape == expected.shape == (batch, 4 + 3, (height * width) * (1 / 64 + 1 / 256 + 1 / 1024))
    assert torch.allclose(actual, expected, atol=1e-4, rtol=1e-4)


def test_export_stores_metadata_and_leaves_model_untouched(yolov9_t: nn.Module, raw_dynamic_onnx: Path) -> None:
    metadata = {p.key: p.value for p in onnx.load(str(raw_dynamic_onnx)).metadata_props}
    assert metadata["format"] == "raw" and json.loads(metadata["names"]) == ["a", "b", "c"]
    assert metadata["stride"] == "32" and json.loads(metadata["img_size"]) == [64, 64]
    assert yolov9_t.num_branches == 2 and not yolov9_t.fused
    graph = onnx.load(str(raw_dynamic_onnx)).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert not any(node.op_type == "BatchNormalization" for node in graph.node)  # fused


class PlantedPredictions(nn.Module):
    """A stand-in detector returning the golden NMS input, its class scores scaled per image by the first pixel,
    so every image of a batch gets a different detection set."""

    strides = (8, 16, 32)

    def __init__(self, pred: Tensor) -> None:
        super().__init__()
        self.register_buffer("pred", pred[:1].clone())

    def predict_raw(self, images: Tensor) -> Tensor:
        pred = self.pred.expand(images.shape[0], -1, -1)
        return torch.cat((pred[:, :4], pred[:, 4:] * images[:, :1, 0, 0, None]), 1)


@pytest.mark.parametrize("multi_label, conf, iou", [(False, 0.25, 0.45), (True, 0.05, 0.7)])
def test_nms_export_matches_non_max_suppression(
    golden_dir: Path, tmp_path: Path, multi_label: bool, conf: float, iou: float
) -> None:
    planted = PlantedPredictions(torch.load(golden_dir / "nms_golden.pt", weights_only=True)["pred"])
    path = export_onnx(planted, tmp_path / "nms.onnx", 64, nms=True, prepare=False,
                       nms_settings=NMSSettings(conf, iou, multi_label, 15))
    images = torch.rand(3, 3, 64, 64)
    images[:, 0, 0, 0] = torch.tensor([1.0, 0.9, 0.6])
    rows = run_onnx(path, images)
    expected = non_max_suppression(planted.predict_raw(images), conf, iou, multi_label, max_det=15)
    assert torch.equal(rows, NMSOutput(planted, NMSSettings(conf, iou, multi_label, 15))(images))  # eager == runtime
    for index, image_rows in enumerate(expected):
        assert len(image_rows) > 0
        assert torch.allclose(rows[rows[:, 0] == index, 1:], image_rows, atol=1e-5)


def test_nms_export_of_real_model_runs_with_dynamic_batch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    detector = build_model("gelan-t", num_classes=2)
    path = export_onnx(detector, tmp_path / "gelan_nms.onnx", 64, nms=True,
                       nms_settings=replace(NMS_DETECT, conf_thres=1e-6, max_det=7))
    images = torch.rand(2, 3, 64, 64)
    rows = run_onnx(path, images)
    expected = non_max_suppression(reference(detector, images), 1e-6, 0.45, False, max_det=7)
    for index, image_rows in enumerate(expected):
        assert 0 < len(image_rows) <= 7
        assert torch.allclose(rows[rows[:, 0] == index, 1:], image_rows, atol=1e-3)


def test_cli_export_static_batch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "cli.onnx"
    assert export_main(["--model", "gelan-t", "--num-classes", "2", "--img-size", "64", "96", "--static-batch",
                 "--batch-size", "2", "--output", str(output), "--verify"]) == 0
    assert "max abs difference" in capsys.readouterr().out
    dims = onnx.load(str(output)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [2, 3, 64, 96]
    anchors = 64 * 96 // 64 + 64 * 96 // 256 + 64 * 96 // 1024
    assert output_dims(output) == [2, 4 + 2, anchors]


def output_dims(path: Path) -> list[int | str]:
    """The declared output shape, as onnxruntime reports it (a name for a symbolic dimension)."""
    import onnxruntime

    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_outputs()[0].shape


@pytest.mark.parametrize(("dynamic_shape", "nms"), [(False, False), (True, False), (False, True)])
def test_output_declares_its_fixed_dimensions(yolov9_t: nn.Module, tmp_path: Path, dynamic_shape: bool,
                                              nms: bool) -> None:
    path = export_onnx(yolov9_t, tmp_path / "model.onnx", (64, 96), dynamic_shape=dynamic_shape, nms=nms,
                       nms_settings=replace(NMS_DETECT, conf_thres=0.01))
    declared = output_dims(path)
    if nms:
        assert declared[1] == 7 and isinstance(declared[0], str)
        return
    assert declared[1] == 4 + 3 and isinstance(declared[0], str)  # batch stays dynamic
    assert isinstance(declared[2], str) if dynamic_shape else declared[2] == 64 * 96 * (1 / 64 + 1 / 256 + 1 / 1024)
    output = run_onnx(path, torch.rand(2, 3, 64, 96))  # what the graph computes agrees with what it declares
    assert output.shape[1:] == (7, 126) and all(d == a for d, a in zip(declared[1:], output.shape[1:])
                                                 if isinstance(d, int))


def test_run_onnx_takes_numpy_arrays_and_returns_them(yolov9_t: nn.Module, raw_dynamic_onnx: Path) -> None:
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    from_numpy = run_onnx(raw_dynamic_onnx, images.numpy())
    assert isinstance(from_numpy, np.ndarray) and from_numpy.dtype == np.float32
    assert np.array_equal(from_numpy, run_onnx(raw_dynamic_onnx, images).numpy())
    as_float64 = run_onnx(raw_dynamic_onnx, images.numpy().astype(np.float64))
    assert np.allclose(as_float64, from_numpy, atol=1e-6)
    with pytest.raises(ValueError, match="float images in \\[0, 1\\], got uint8"):
        run_onnx(raw_dynamic_onnx, (images.numpy() * 255).astype(np.uint8))


def documented_export_commands() -> list[list[str]]:
    """The `pgi-detect export` lines of docs/inference.md, as words (comments dropped)."""
    text = (REPO_ROOT / "docs" / "inference.md").read_text()
    lines = [line.split("#")[0].split() for line in text.splitlines() if line.startswith(".venv/bin/pgi-detect export")]
    assert len(lines) >= 4, "docs/inference.md lost its export examples"
    return lines


@pytest.mark.slow
def test_every_documented_export_runs_in_a_fresh_process(tmp_path: Path) -> None:
    """Each documented variant as its own `pgi-detect` process: `--nms` once failed there ("unsupported output type:
    int, from operator: torchvision::_cuda_version") and only worked after an earlier import of torchvision."""
    from test_inference_checkpoint import save_task_checkpoint

    from pgi_detect.training import DetectionTask

    torch.manual_seed(0)
    checkpoint = save_task_checkpoint(DetectionTask(model="gelan-t", num_classes=2, class_names=["a", "b"]),
                                      tmp_path / "best.ckpt")
    ran = 0
    for index, words in enumerate(documented_export_commands()):
        args = words[2:]
        if "--checkpoint" in args and args[args.index("--checkpoint") + 1] != "best.ckpt":
            continue  # a pretrained name: downloads, which tests never do (tests/unit/weights/test_models_hub.py covers names)
        args = [str(checkpoint) if word == "best.ckpt" else word for word in args]
        if "--output" not in args:
            args += ["--output", str(tmp_path / f"variant{index}.onnx")]
        else:
            args[args.index("--output") + 1] = str(tmp_path / f"variant{index}.onnx")
        if "--img-size" in args:
            args[args.index("--img-size") + 1] = "64"  # the same graph, traced faster
        else:
            args += ["--img-size", "64"]
        result = subprocess.run([sys.executable, "-m", "pgi_detect.cli.commands", "export", *args], capture_output=True,
                                text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert result.returncode == 0, f"{' '.join(words)}\n{result.stderr[-3000:]}"
        assert (tmp_path / f"variant{index}.onnx").is_file(), words
        ran += 1
    assert ran >= 4
