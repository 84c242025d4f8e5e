"""CLI semantics that used to lose or ignore things silently, run as a user runs `pgi-detect` (the shipped demo
config on a tiny synthetic dataset):

- options given with `--ckpt_path` win over the checkpoint's hyperparameters, and the run says which differ;
- a checkpoint of another architecture is an error before anything is built;
- `--model.weights` that do not fit are an error naming the keys; the class-count change is reported;
- `test` without a test split is an error; modules named in a class_path are found from the working directory;
- a diverging loss stops the run with a message naming the step and likely causes;
- without a terminal, training prints readable progress lines and a line per validation.
"""
from __future__ import annotations

import logging

import pytest
import torch

from helpers.runs import DEMO_CONFIG, demo_overrides, run_cli, tiny_data
from pgi_detect.cli.commands import main, run
from pgi_detect.cli.main import build_cli
from pgi_detect.models import build_model
from pgi_detect.weights import WeightsError, save_detector

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_data(tmp_path_factory.mktemp("data"), num_train=8, num_val=4)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """A short fit through the CLI (in a subprocess, as users run it); returns (run folder, its output)."""
    run_dir = tmp_path_factory.mktemp("run")
    result = run_cli("fit", *cli_args(data, run_dir))
    return run_dir, result.stdout


def cli_args(data, run_dir, *extra: str) -> list[str]:
    """The demo config on the tiny data: 2 batches per epoch, one optimizer step per batch."""
    return ["--config", str(DEMO_CONFIG), *demo_overrides(data, run_dir, epochs=2, batch_size=4),
            "--model.optim.nominal_batch_size=4", *extra]


def test_options_given_with_a_checkpoint_win_and_differences_are_reported(data, trained, tmp_path, caplog):
    run_dir, _ = trained
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    saved = torch.load(checkpoint, weights_only=True)["hyper_parameters"]
    assert saved["predict_nms"]["conf_thres"] == 0.25 and saved["eval_nms"]["multi_label"] is True
    with caplog.at_level(logging.INFO):
        cli = run(["predict", *cli_args(data, tmp_path), f"--ckpt_path={checkpoint}",
                   "--model.predict_nms.conf_thres=0.001", "--model.eval_nms.multi_label=false"])
    assert cli.model.predict_nms.conf_thres == 0.001 and cli.model.eval_nms.multi_label is False
    assert "model.predict_nms.conf_thres 0.25 -> 0.001" in caplog.text
    assert "model.eval_nms.multi_label True -> False" in caplog.text
    # Everything else comes from the checkpoint, not from the defaults.
    assert cli.model.optim.optimizer == saved["optim"]["optimizer"] == "adamw"


def test_a_resumed_fit_says_which_hyperparameters_changed(data, trained, caplog):
    run_dir, _ = trained
    with caplog.at_level(logging.INFO):
        code = main(["fit", *cli_args(data, run_dir, "--trainer.max_epochs=3", "--model.optim.lr0=0.004",
                                      "--ckpt_path=last")])
    assert code == 0
    changed = [r.getMessage() for r in caplog.records if "options that differ from" in r.getMessage()]
    assert len(changed) == 1 and changed[0].endswith("model.optim.lr0 0.002 -> 0.004")
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 2 and last["hyper_parameters"]["optim"]["lr0"] == 0.004


def test_a_checkpoint_of_another_architecture_is_an_error(data, trained, tmp_path):
    run_dir, _ = trained
    with pytest.raises(SystemExit, match=r"holds another architecture than the config/command line asks for "
                                         r"\(model 'gelan-t' vs 'gelan-s': checkpoint vs asked\)"):
        main(["validate", *cli_args(data, tmp_path), "--model.model=gelan-s",
              f"--ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"])


def test_weights_that_do_not_fit_are_an_error_and_a_class_change_is_reported(data, tmp_path, caplog):
    save_detector(build_model("gelan-s", num_classes=3), tmp_path / "gelan-s.pt")
    with pytest.raises(WeightsError, match=r"(?s)gelan-s\.pt: weights do not fit model 'gelan-t'.*shape mismatches"):
        build_cli(cli_args(data, tmp_path, f"--model.weights={tmp_path / 'gelan-s.pt'}"), run=False)
    save_detector(build_model("gelan-t", num_classes=80), tmp_path / "coco.pt")
    with caplog.at_level(logging.INFO):
        build_cli(cli_args(data, tmp_path, f"--model.weights={tmp_path / 'coco.pt'}"), run=False)
    assert "class branch re-initialised for 3 classes" in caplog.text


def test_test_without_a_test_split_is_an_error(data, trained, tmp_path, capsys):
    run_dir, _ = trained
    assert main(["test", *cli_args(data, tmp_path), f"--ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"]) == 1
    assert "pgi-detect test: `test` evaluates the test split, and none is configured: pass data.test" in (
        capsys.readouterr().err)


def test_class_path_modules_are_found_from_the_working_directory(data, tmp_path, monkeypatch, capsys):
    (tmp_path / "my_backbones.py").write_text(
        "import torch\nfrom pgi_detect.models import Backbone\n\n\n"
        "class Tiny(Backbone):\n"
        "    def __init__(self, width: int = 8) -> None:\n"
        "        super().__init__()\n"
        "        self.out_channels = (width, width, width)\n"
        "        self.stem = torch.nn.Conv2d(3, width, 3, stride=8, padding=1)\n\n"
        "    def forward(self, x):\n"
        "        p3 = self.stem(x)\n"
        "        return p3, p3[..., ::2, ::2], p3[..., ::4, ::4]\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        main(["fit", *cli_args(data, tmp_path), "--model.backbone=my_backbones.Tiny", "--model.neck=gelan-t",
              "--print_config"])
    assert stop.value.code in (0, None)
    assert "class_path: my_backbones.Tiny" in capsys.readouterr().out


def test_a_diverging_loss_stops_with_a_message(data, tmp_path):
    with pytest.raises(FloatingPointError, match=r"training diverged, stopping\. Likely causes: a learning rate"):
        # The recipe's SGD at lr 1000: three healthy warmup steps, then the loss jumps to ~1e2-1e9 and stays there.
        main(["fit", *cli_args(data, tmp_path, "--model.optim.optimizer=sgd", "--model.optim.lr0=1000",
                               "--model.guard.divergence_window=3",
                               "--model.guard.divergence_patience=2", "--trainer.max_epochs=20",
                               "--trainer.limit_val_batches=0")])


def test_progress_lines_without_a_terminal(trained):
    _, output = trained
    lines = output.splitlines()
    training = [line for line in lines if line.startswith("epoch 1/2")]
    assert training, output[-3000:]
    for word in ("step ", "batch 2/2", "loss ", "box ", "lr ", "img/s", "epoch ETA"):
        assert word in training[-1], training[-1]
    assert any(line.startswith("val after epoch 1 (step ") and "mAP " in line for line in lines), output[-3000:]


def test_loggers_receive_the_full_config(trained):
    """The logger gets everything that made the run (model, data with its augmentation, trainer), not only the
    model's hyperparameters."""
    import yaml

    run_dir, _ = trained
    (hparams,) = run_dir.rglob("version_0/hparams.yaml")  # the fixture's own fit (a later test resumes it)
    config = yaml.safe_load(hparams.read_text())["config"]
    assert config["data"]["augmentation"]["mosaic"] == 0.5 and config["data"]["img_size"] == 64
    assert config["trainer"]["max_epochs"] == 2 and config["model"]["optim"]["optimizer"] == "adamw"


def test_a_logger_switched_on_the_command_line_keeps_a_sensible_run_name(data, tmp_path):
    wandb = build_cli([*cli_args(data, tmp_path), "--trainer.logger=lightning.pytorch.loggers.WandbLogger"],
                      run=False)
    assert wandb.config["trainer"]["logger"]["init_args"]["name"] == "demo-synthetic"
    unnamed = build_cli([*cli_args(data, tmp_path / "my-run"), "--trainer.logger=lightning.pytorch.loggers.WandbLogger",
                         "--trainer.logger.init_args.name=null"], run=False)
    assert unnamed.config["trainer"]["logger"]["init_args"]["name"] == "my-run"  # the run folder's name


def test_a_pretrained_custom_backbone_keeps_its_weights_and_checkpoints_stay_portable(data, tmp_path):
    """The backbone module the CLI instantiates (with its pretrained weights) is the detector's backbone; the spec
    saved in checkpoints is the portable {class_path, init_args} form."""
    from helpers.backbones import PRETRAINED_VALUE

    cli = build_cli([*cli_args(data, tmp_path), "--model.backbone=helpers.backbones.MarkedBackbone",
                     "--model.backbone.init_args.pretrained=true", "--model.neck=gelan-t"], run=False)
    stem = cli.model.detector.layers[0].stem.weight
    assert torch.all(stem == PRETRAINED_VALUE)
    assert cli.model.spec.backbone == {"class_path": "helpers.backbones.MarkedBackbone",
                                       "init_args": {"width": 8, "pretrained": True}}


def test_initial_weights_are_not_reapplied_when_a_checkpoint_is_given(data, tmp_path, caplog):
    """`--model.weights` initialises a new run; with `--ckpt_path` the checkpoint's own weights are used, so the
    initial file is not read again (it may be gone, or a name that would need a download)."""
    weights = tmp_path / "init.pt"
    save_detector(build_model("gelan-t", num_classes=3), weights)
    run_dir = tmp_path / "run"
    assert main(["fit", *cli_args(data, run_dir, f"--model.weights={weights}", "--trainer.max_epochs=1")]) == 0
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["hyper_parameters"]["weights"] is None  # load_from_checkpoint does not re-read it either
    weights.unlink()
    with caplog.at_level(logging.INFO):
        assert main(["validate", *cli_args(data, run_dir, f"--model.weights={weights}"),
                     f"--ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"]) == 0
    assert f"model.weights='{weights}' not applied" in caplog.text


def test_validate_of_a_checkpoint_names_its_epoch_and_switches_nothing(data, trained):
    """`validate` of the epoch-1 checkpoint once said "val after epoch 0 (step 0)" and printed "CloseMosaic: mosaic
    off" (the demo config closes mosaic for its last 3 epochs, which a validate never trains)."""
    run_dir, _ = trained
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    args = [a for a in cli_args(data, run_dir) if not a.startswith("--trainer.max_epochs")]
    result = run_cli("validate", *args, "--ckpt_path=last")
    output = result.stdout + result.stderr
    lines = [line for line in output.splitlines() if line.startswith("val ")]
    assert len(lines) == 1, output[-3000:]
    assert lines[0].startswith(f"val of epoch {checkpoint['epoch']} (step {checkpoint['global_step']}):"), lines[0]
    assert "CloseMosaic" not in output and "weights_only" not in output and "Tip:" not in output


def test_validation_without_ground_truth_says_map_is_undefined(data, trained, tmp_path):
    """A val set without a single box once reported `mAP 0.0000` without a word."""
    import json

    run_dir, _ = trained
    coco = json.loads((data / "annotations" / "instances_val.json").read_text())
    empty = tmp_path / "empty_val.json"
    empty.write_text(json.dumps(dict(coco, annotations=[])))
    args = [a for a in cli_args(data, run_dir) if not a.startswith(("--trainer.max_epochs", "--data.val="))]
    result = run_cli("validate", *args, f"--data.val={empty}", "--ckpt_path=last")
    output = result.stdout + result.stderr
    assert "hold no ground-truth boxes, so mAP is undefined" in output, output[-3000:]
    line = [line for line in output.splitlines() if line.startswith("val of epoch")][0]
    assert "mAP undefined" in line and "0.0000" not in line
