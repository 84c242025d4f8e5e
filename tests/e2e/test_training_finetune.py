"""Fine-tuning through the CLI as a user runs it: `--model.weights NAME` (served from a local HTTP server) on a dataset
with another class count logs the one-line class-branch report, and `--model.freeze` keeps the named layers fixed."""
from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from helpers.official import official_release_file
from helpers.weights_server import serve_weights
from pgi_detect.cli.commands import run
from pgi_detect.cli.main import build_cli
from pgi_detect.weights.hub import HOME_ENV, URL_ENV
from conftest import REPO_ROOT

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
REPO = REPO_ROOT
NAME = "yolov9-t-converted"  # its file holds gelan-t, the demo config's model


@pytest.fixture(scope="module")
def synthetic_data(tmp_path_factory) -> Path:
    from pgi_detect.data import make_synthetic_coco

    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic_coco(root, num_train=4, num_val=2, img_size=64, seed=0)
    return root


@pytest.fixture
def pretrained(tmp_path, monkeypatch) -> torch.nn.Module:
    """gelan-t COCO-like weights (80 classes) served as the release asset of NAME; returns the model they hold."""
    detector = official_release_file(tmp_path / "asset.pt", "gelan-t", num_classes=80)
    with serve_weights() as server:
        server.files[f"{NAME}.pt"] = (tmp_path / "asset.pt").read_bytes()
        monkeypatch.setenv(URL_ENV, server.url_template)
        monkeypatch.setenv(HOME_ENV, str(tmp_path / "cache"))
        yield detector


def demo_args(data: Path, root: Path, *extra: str) -> list[str]:
    return [
        "--config", str(REPO / "experiments/demo-synthetic.yaml"),
        f"--data.train={data / 'annotations/instances_train.json'}", f"--data.train_images={data / 'images/train'}",
        f"--data.val={data / 'annotations/instances_val.json'}", f"--data.val_images={data / 'images/val'}",
        "--data.img_size=64", "--data.batch_size=4", "--data.num_workers=0", "--data.persistent_workers=false",
        f"--trainer.default_root_dir={root}", f"--trainer.logger.init_args.save_dir={root}",
        *extra,
    ]


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@contextmanager
def task_log() -> Iterator[Lines]:
    """What DetectionTask reports through rank_zero_info, heard on the emitting logger itself: Lightning stops its
    logger from propagating when the root logger had no handler at import (so caplog may miss it), and import-linter's
    CLI, run in-process by test_layering.py, disables every existing logger through logging.config.dictConfig."""
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    handler, level, disabled = Lines(), logger.level, logger.disabled
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.disabled = False
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.disabled = disabled


def test_fit_from_a_pretrained_name_with_frozen_backbone(synthetic_data, tmp_path, pretrained):
    with task_log() as handler:
        cli = run(["fit", *demo_args(synthetic_data, tmp_path, f"--model.weights={NAME}", "--model.freeze=backbone",
                                     "--trainer.max_steps=2", "--trainer.check_val_every_n_epoch=100")])
    log = "\n".join(handler.lines)
    reports = [line for line in log.splitlines() if "class branch re-initialised" in line]
    assert len(reports) == 1, log
    assert f"from {NAME} (" in reports[0] and "class branch re-initialised for 3 classes" in reports[0]
    assert "froze layers 0-8 (backbone)" in log
    assert cli.trainer.global_step == 2
    # The task ends holding the EMA weights; an EMA of a constant equals it up to float rounding (~1e-8 here), while
    # the trained layers move by ~lr (1e-4 in the second warmup step).
    trained = cli.model.detector.state_dict()
    source = pretrained.state_dict()
    change = {k: float((v - source[k]).abs().max()) for k, v in trained.items()
              if v.is_floating_point() and v.shape == source[k].shape and "running_" not in k}
    frozen = {k: c for k, c in change.items() if int(k.split(".")[1]) <= 8}
    assert frozen and max(frozen.values()) < 1e-6, max(frozen.items(), key=lambda kv: kv[1])
    assert max(c for k, c in change.items() if k not in frozen) > 1e-5, "nothing outside the backbone trained"


@pytest.mark.parametrize(("value", "expected"), [("10", 10), ("backbone", "backbone"), ("[0,1,2]", [0, 1, 2]),
                                                 ("[backbone,22]", ["backbone", 22])])
def test_freeze_option_parses_counts_names_and_lists(synthetic_data, tmp_path, value, expected):
    cli = build_cli(demo_args(synthetic_data, tmp_path, f"--model.freeze={value}"), run=False)
    assert cli.model.hparams.freeze == expected
    frozen = [n for n, p in cli.model.detector.named_parameters() if not p.requires_grad and ".dfl." not in n]
    assert frozen and all(n.startswith("layers.") for n in frozen)
