"""Pretrained names and official files wherever inference takes weights: `Predictor.from_pretrained` /
`from_checkpoint`, `pgi-detect detect --checkpoint` and `pgi-detect export --checkpoint` (names served from a local
HTTP server, never the internet)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.official import official_release_file
from helpers.weights_server import serve_weights
from pgi_detect.inference import Predictor
from pgi_detect.cli.commands import main
from pgi_detect.weights import WeightsError
from pgi_detect.weights.hub import HOME_ENV, URL_ENV

pytestmark = pytest.mark.usefixtures("single_torch_thread")
NAME = "yolov9-t-converted"
NAMES = ["ball", "cup", "hat"]


@pytest.fixture(scope="module")
def official_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    path = tmp_path_factory.mktemp("release") / "gelan-t-release.pt"
    return path, official_release_file(path, "gelan-t", num_classes=3, names=NAMES)


@pytest.fixture
def served(official_file, monkeypatch, tmp_path):
    with serve_weights() as server:
        server.files[f"{NAME}.pt"] = official_file[0].read_bytes()
        monkeypatch.setenv(URL_ENV, server.url_template)
        monkeypatch.setenv(HOME_ENV, str(tmp_path / "cache"))
        yield server


def expected_raw(detector: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return detector.eval().predict_raw(images)


def test_from_pretrained_runs_the_named_weights(served, official_file):
    predictor = Predictor.from_pretrained(NAME, img_size=64)
    assert predictor.class_names == NAMES and predictor.model.fused
    images = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(predictor.raw_predictions(images), expected_raw(official_file[1], images),
                               atol=1e-4, rtol=1e-4)
    with pytest.raises(WeightsError, match="'best.ckpt' is not a pretrained name; available: gelan-s"):
        Predictor.from_pretrained("best.ckpt")


def test_official_file_loads_directly(official_file):
    predictor = Predictor.from_checkpoint(official_file[0], img_size=64)
    assert predictor.class_names == NAMES
    images = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(predictor.raw_predictions(images), expected_raw(official_file[1], images),
                               atol=1e-4, rtol=1e-4)


def test_detect_command_takes_a_name(served, tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    assert main(["detect", "--checkpoint", NAME, "--source", str(tmp_path / "a.png"), "--output", str(tmp_path / "out"),
                 "--img-size", "64", "--conf", "0.001"]) == 0
    records = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert records and {r["category_name"] for r in records} <= set(NAMES)


@pytest.mark.parametrize("weights", ["name", "official file"])
def test_export_command_takes_a_name_or_an_official_file(served, official_file, tmp_path, monkeypatch, capsys,
                                                         weights):
    monkeypatch.chdir(tmp_path)
    checkpoint = NAME if weights == "name" else str(official_file[0])
    assert main(["export", "--checkpoint", checkpoint, "--img-size", "64", "--verify"]) == 0
    output = tmp_path / f"{NAME}.onnx" if weights == "name" else official_file[0].with_suffix(".onnx")
    assert output.is_file() and "max abs difference" in capsys.readouterr().out


def test_export_reports_unusable_weights_without_a_traceback(tmp_path, capsys):
    (tmp_path / "notes.pt").write_text("not weights")
    assert main(["export", "--checkpoint", str(tmp_path / "notes.pt")]) == 1
    assert "notes.pt: not a readable weights file" in capsys.readouterr().err
