"""Mistakes in what a user gives are one `pgi-detect <command>: ...` line naming the option (or the file), never a
traceback, and never a run that silently does something else. Checked systematically: every option with a range
(the RANGES tables of each settings group, the data module's and the task's) is set outside it through the CLI with
the shipped demo config, and the line must name each of them."""
from __future__ import annotations

import json
import math

import pytest

from helpers.runs import DEMO_CONFIG, demo_overrides, run_cli, tiny_data
from pgi_detect.cli.commands import main
from pgi_detect.data.augment.transforms import AugmentationConfig
from pgi_detect.data.pipeline.datamodule import DATA_RANGES
from pgi_detect.geometry import NMSSettings
from pgi_detect.settings import Range
from pgi_detect.training.task import TASK_RANGES
from pgi_detect.training.optim import GuardSettings, OptimizerSettings

pytestmark = pytest.mark.usefixtures("single_torch_thread")
LINKED = {"num_classes"}  # set from the data, not an option


def outside(valid: Range) -> float | int:
    """A value just outside `valid`."""
    if valid.step:
        return valid.step * 3 + valid.step // 2  # not a multiple (100 for 32)
    if valid.low is not None:
        low = valid.low
        return low - 1 if not valid.low_open else (low if float(low).is_integer() else low - 1)
    return valid.high + 1


GROUPS = {
    "model.optim": OptimizerSettings.RANGES,
    "model.eval_nms": NMSSettings.RANGES,
    "model.predict_nms": NMSSettings.RANGES,
    "model.guard": GuardSettings.RANGES,
    "data.augmentation": AugmentationConfig.RANGES,
    "data": DATA_RANGES,
    "model": {key: value for key, value in TASK_RANGES.items() if key not in LINKED},
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_data(tmp_path_factory.mktemp("data"), num_train=8, num_val=4)


def fit_args(data, run_dir, *extra):
    return ["fit", "--config", str(DEMO_CONFIG), *demo_overrides(data, run_dir, epochs=1),
            "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1", *extra]


def one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith(f"pgi-detect {command}:")]
    assert len(lines) == 1, err[-3000:]
    return lines[0]


@pytest.mark.parametrize("group", list(GROUPS))
def test_every_option_outside_its_range_is_named(group, data, tmp_path, capsys):
    ranges = GROUPS[group]
    values = {name: outside(valid) for name, valid in ranges.items()}
    assert all(valid.problem(value) for value, valid in zip(values.values(), ranges.values()))
    options = [f"--{group}.{name}={json.dumps(value)}" for name, value in values.items()]
    assert main(fit_args(data, tmp_path, *options)) == 1
    line = one_line_error(capsys, "fit")
    for name, value in values.items():
        assert f"{group}.{name} must be" in line, (name, line)
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("options, expected", [
    (["--trainer.max_epochs=0"], "trainer.max_epochs 0 trains nothing"),
    (["--trainer.devices=0"], "devices"),  # Lightning's own check of its options: its message, one line
    (["--model.model=nope"], "unknown model 'nope'"),
    (["--model.freeze=99"], "model.freeze 99"),
])
def test_other_option_mistakes_are_one_line(options, expected, data, tmp_path, capsys):
    assert main(fit_args(data, tmp_path, *options)) == 1
    assert expected in one_line_error(capsys, "fit")


def one_class_copy(data, folder):
    """The tiny data with only its first class kept."""
    folder.mkdir()
    for split in ("train", "val"):
        coco = json.loads((data / "annotations" / f"instances_{split}.json").read_text())
        keep = coco["categories"][0]["id"]
        coco["categories"] = coco["categories"][:1]
        coco["annotations"] = [a for a in coco["annotations"] if a["category_id"] == keep]
        (folder / f"instances_{split}.json").write_text(json.dumps(coco))
    return folder


def test_a_checkpoint_of_other_classes_names_the_file(data, tmp_path, capsys):
    trained = tmp_path / "three"
    run_cli(*fit_args(data, trained))
    checkpoint = trained / "checkpoints" / "last.ckpt"
    one = one_class_copy(data, tmp_path / "one")
    single = [f"--data.train={one / 'instances_train.json'}", f"--data.val={one / 'instances_val.json'}",
              f"--ckpt_path={checkpoint}"]
    for command in ("validate", "fit"):
        args = fit_args(data, tmp_path / command, *single)
        args[0] = command
        if command == "validate":
            args = [a for a in args if not a.startswith("--trainer.limit_train") and a != "--trainer.max_epochs=1"]
        assert main(args) == 1
        line = one_line_error(capsys, command)
        assert str(checkpoint) in line and "3 classes" in line and "has 1 (" in line, line
        assert f"--model.weights {checkpoint}" in line


def test_range_descriptions():
    assert Range(0, 1).problem(2) == "must be in [0, 1], got 2"
    assert Range(0, 1, high_open=True).problem(1) == "must be in [0, 1), got 1"
    assert Range(32, step=32).problem(100) == "must be a positive multiple of 32, got 100"
    assert Range(0, low_open=True).problem(0) == "must be > 0, got 0"
    assert Range(1).problem(None) == "must be set" and Range(1, optional=True).problem(None) is None
    assert Range(0).problem(math.nan).startswith("must be a number")
    assert Range(0, 1).problem(0.5) is None and Range(32, step=32).problem(640) is None


@pytest.fixture(scope="module")
def detector_file(tmp_path_factory):
    import numpy as np
    import torch
    from PIL import Image

    from pgi_detect.models import build_model
    from pgi_detect.weights import save_detector

    folder = tmp_path_factory.mktemp("detector")
    torch.manual_seed(0)
    save_detector(build_model("gelan-t", num_classes=2).eval(), folder / "gelan-t.pt", ["a", "b"], [1, 2])
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(folder / "x.jpg")
    return folder


@pytest.mark.parametrize("options, expected", [
    (["--batch-size", "0"], "argument --batch-size: must be >= 1, got 0"),
    (["--img-size", "100"], "argument --img-size: must be a positive multiple of 32, got 100"),
    (["--conf", "2"], "argument --conf: must be in [0, 1], got 2.0"),
    (["--iou", "-1"], "argument --iou: must be in [0, 1], got -1.0"),
    (["--max-det", "0"], "argument --max-det: must be >= 1"),
    (["--progress-every", "0"], "argument --progress-every: must be >= 1"),
    (["--classes", "7"], "--classes 7:"),
])
def test_detect_option_mistakes_are_one_line(options, expected, detector_file, tmp_path, capsys):
    args = ["detect", "--checkpoint", str(detector_file / "gelan-t.pt"), "--source", str(detector_file / "x.jpg"),
            "--output", str(tmp_path / "out"), *options]
    try:
        code = main(args)
    except SystemExit as stop:  # argparse's own errors: usage line + one error line, status 2
        code = stop.code
    assert code in (1, 2)
    assert expected in one_line_error(capsys, "detect")
    assert not (tmp_path / "out" / "predictions.json").exists()


def test_the_suggested_fine_tune_runs_and_counts_one_class(data, tmp_path, capsys, caplog):
    """What the class-count error suggests (`--model.weights <checkpoint>`) works, and says "1 class" (it once said
    "1 classes")."""
    import logging

    trained = tmp_path / "three"
    run_cli(*fit_args(data, trained))
    one = one_class_copy(data, tmp_path / "one")
    with caplog.at_level(logging.INFO):
        assert main(fit_args(data, tmp_path / "tuned", f"--data.train={one / 'instances_train.json'}",
                             f"--data.val={one / 'instances_val.json'}",
                             f"--model.weights={trained / 'checkpoints' / 'last.ckpt'}")) == 0
    text = caplog.text + capsys.readouterr().err
    assert "class branch re-initialised for 1 class (" in text, text[-3000:]
    assert "1 classes" not in text
