"""The `pgi-detect` entry point: every experiment YAML parses (per-model files compose with their base through
jsonargparse's `config:` key), links from the datamodule, and the extra subcommands delegate."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import yaml

from pgi_detect.cli.commands import main
from pgi_detect.cli.main import build_cli
from conftest import REPO_ROOT

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
REPO = REPO_ROOT
EXPERIMENTS = sorted(p for p in (REPO / "experiments").glob("*.yaml"))
COCO_EXPERIMENTS = [p for p in EXPERIMENTS if p.name.endswith("-coco.yaml")]


def resolved_config(*args: str) -> dict:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as stop:
        main(["fit", *args, "--print_config"])
    assert stop.value.code in (0, None)
    return yaml.safe_load(out.getvalue())


def test_all_ten_coco_experiments_exist():
    names = {p.name for p in COCO_EXPERIMENTS}
    assert names == {f"{f}-{s}-coco.yaml" for f in ("gelan", "yolov9") for s in "tsmce"}


@pytest.mark.parametrize("path", COCO_EXPERIMENTS, ids=lambda p: p.stem)
def test_coco_experiment_resolves_to_the_recipe(path):
    config = resolved_config("--config", str(path))
    name = path.stem.removesuffix("-coco")
    assert config["model"]["model"] == name
    assert config["data"]["batch_size"] == (32 if name.startswith("gelan") else 16)  # README single-GPU batches
    assert config["data"]["train"] == "data/coco/annotations/instances_train2017.json"
    trainer = config["trainer"]
    assert trainer["max_epochs"] == 500 and trainer["precision"] == "16-mixed"
    assert trainer["default_root_dir"] == f"runs/{name}-coco"
    assert trainer["logger"]["class_path"].endswith("WandbLogger")
    assert trainer["logger"]["init_args"]["name"] == f"{name}-coco"
    callbacks = {c["class_path"].rsplit(".", 1)[-1]: c.get("init_args", {}) for c in trainer["callbacks"]}
    assert callbacks["CloseMosaic"]["close_mosaic"] == 15
    assert callbacks["ModelEMA"]["decay"] == 0.9999 and callbacks["ModelEMA"]["tau"] == 2000.0
    checkpoints = [c["init_args"] for c in trainer["callbacks"] if c["class_path"].endswith("ModelCheckpoint")]
    assert [(c["filename"], c["monitor"]) for c in checkpoints] == [("best", "val/mAP"), ("last", None)]
    assert {"LearningRateMonitor", "DetectionProgressBar", "ValidationImageLogger", "Preemption"} <= set(callbacks)
    optim, nms = config["model"]["optim"], config["model"]["eval_nms"]
    assert (optim["optimizer"], optim["lr0"], optim["momentum"], optim["weight_decay"]) == ("sgd", 0.01, 0.937, 5e-4)
    assert (nms["conf_thres"], nms["iou_thres"], nms["multi_label"], nms["max_det"]) == (0.001, 0.7, True, 300)


def test_ddp_config_stacks_on_an_experiment():
    config = resolved_config("--config", str(REPO / "experiments/yolov9-c-coco.yaml"),
                             "--config", str(REPO / "experiments/base/ddp.yaml"), "--trainer.devices=4")
    assert config["trainer"]["strategy"] == "ddp" and config["trainer"]["sync_batchnorm"] is True
    assert str(config["trainer"]["devices"]) == "4" and config["trainer"]["max_epochs"] == 500
    assert config["model"]["model"] == "yolov9-c" and config["data"]["rect_val"] is True


def test_cls_width_is_a_model_option():
    path = str(REPO / "experiments/gelan-t-coco.yaml")
    assert resolved_config("--config", path)["model"]["cls_width"] is None
    assert resolved_config("--config", path, "--model.cls_width", "80")["model"]["cls_width"] == 80


def test_short_and_long_config_flags_give_the_same_config(tmp_path):
    path = str(REPO / "experiments/gelan-t-coco.yaml")
    long_form = resolved_config("--config", path)
    assert resolved_config("-c", path) == long_form
    # The per-model file only overrides its base: callbacks, precision and data paths come from base/coco.yaml.
    assert long_form["trainer"]["precision"] == "16-mixed" and long_form["trainer"]["callbacks"]
    assert long_form["data"]["train"] == "data/coco/annotations/instances_train2017.json"


def test_print_config_output_reruns_to_the_same_config(tmp_path):
    printed = resolved_config("--config", str(REPO / "experiments/yolov9-t-coco.yaml"), "--model.optim.lr0", "0.02")
    saved = tmp_path / "printed.yaml"
    saved.write_text(yaml.safe_dump(printed))
    assert resolved_config("--config", str(saved)) == printed


def test_optimizer_and_scheduler_flags_are_not_offered(capsys):
    """The recipe's optimizer (three parameter groups, per-batch warmup) is configured by model.optim."""
    with pytest.raises(SystemExit) as stop:
        main(["fit", "--config", str(REPO / "experiments/gelan-t-coco.yaml"), "--optimizer", "torch.optim.Adam",
              "--print_config"])
    assert stop.value.code == 2 and "--optimizer" in capsys.readouterr().err


@pytest.fixture(scope="module")
def synthetic_data(tmp_path_factory) -> Path:
    from pgi_detect.data import make_synthetic_coco

    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic_coco(root, num_train=6, num_val=3, img_size=64, seed=0)
    return root


def demo_cli(synthetic_data, tmp_path, *extra: str):
    """The demo config instantiated (not run) on the synthetic data."""
    return build_cli([
        "--config", str(REPO / "experiments/demo-synthetic.yaml"),
        f"--data.train={synthetic_data / 'annotations/instances_train.json'}",
        f"--data.train_images={synthetic_data / 'images/train'}",
        f"--data.val={synthetic_data / 'annotations/instances_val.json'}",
        f"--data.val_images={synthetic_data / 'images/val'}",
        f"--trainer.default_root_dir={tmp_path}", *extra,
    ], run=False)


def test_demo_config_instantiates_with_linked_classes(synthetic_data, tmp_path):
    from pgi_detect.data import SHAPE_CLASSES

    cli = demo_cli(synthetic_data, tmp_path)
    hparams = cli.model.hparams
    assert hparams.num_classes == 3 and list(hparams.class_names) == list(SHAPE_CLASSES)
    assert list(hparams.category_ids) == [1, 2, 3]
    assert hparams.batch_size == cli.datamodule.batch_size == 16  # linked from data.batch_size
    assert cli.model.detector.num_classes == 3


def test_model_summary_counts_flops_at_the_data_image_size(synthetic_data, tmp_path):
    """`data.img_size` is linked to `model.img_size`, whose example input gives Lightning's summary the FLOPs of
    one image at the training size (torch's counter: convolutions, no BN, so ~2 % under our GFLOPs)."""
    from lightning.pytorch.utilities.model_summary import ModelSummary

    from pgi_detect.models import count_gflops

    cli = demo_cli(synthetic_data, tmp_path, "--data.img_size=192")
    assert cli.model.hparams.img_size == cli.datamodule.img_size == 192
    summary = ModelSummary(cli.model, max_depth=1)
    assert summary.total_flops / 1e9 == pytest.approx(count_gflops(cli.model.detector, 192), rel=0.03)
    assert "Total Flops" in str(summary) and summary.total_flops > 0


def test_coco128_config_instantiates_80_classes(coco128_dir, tmp_path):
    annotations = coco128_dir / "annotations" / "instances_train2017.json"
    images = coco128_dir / "images" / "train2017"
    cli = build_cli([
        "--config", str(REPO / "experiments/gelan-t-coco.yaml"),
        f"--data.train={annotations}", f"--data.train_images={images}",
        f"--data.val={annotations}", f"--data.val_images={images}",
        f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false", "--trainer.accelerator=cpu",
        "--trainer.precision=32-true",
    ], run=False)
    assert cli.model.hparams.num_classes == 80
    assert cli.model.hparams.category_ids[:12] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13]  # COCO 91-id gaps


def test_check_data_subcommand_delegates(synthetic_data, capsys):
    code = main(["check-data", "--path", str(synthetic_data / "annotations/instances_val.json"),
                 "--images", str(synthetic_data / "images/val")])
    assert code == 0
    assert capsys.readouterr().out.strip()


def test_export_subcommand_delegates():
    with pytest.raises(SystemExit) as stop:
        main(["export", "--help"])
    assert stop.value.code == 0


def test_console_entry_turns_results_into_exit_statuses(monkeypatch):
    """`pgi-detect` hands main()'s value to sys.exit: a finished LightningCLI command (an object) must give 0,
    a tool's own exit code must pass through."""
    from pgi_detect.cli import commands as main_module

    monkeypatch.setattr(main_module, "run", lambda argv: object())
    assert main_module.main(["fit"]) == 0
    monkeypatch.setattr(main_module, "run", lambda argv: 3)
    assert main_module.main(["check-data"]) == 3


def test_detect_subcommand_delegates():
    with pytest.raises(SystemExit) as stop:
        main(["detect", "--help"])
    assert stop.value.code == 0
