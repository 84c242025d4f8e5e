"""A timm backbone with PGI through every command, the way a user runs it: the shipped
experiments/timm-pgi-synthetic.yaml (its DataLoader worker, persistent workers, CSV logger and checkpoint callbacks) on
the demo's synthetic shapes; only the timm model is timm's tiny test network, to keep the run short on a CPU."""
from __future__ import annotations

import json

import onnx
import pytest
import torch

from helpers.runs import REPO, run_cli, tiny_data
from pgi_detect.models import count_parameters
from pgi_detect.weights import read_weights

pytestmark = pytest.mark.slow
CONFIG = REPO / "experiments" / "timm-pgi-synthetic.yaml"


def overrides(data, run_dir, epochs: int = 2) -> list[str]:
    return [
        "--config", str(CONFIG), "--model.backbone.init_args.model_name=test_efficientnet",
        f"--data.train={data / 'annotations/instances_train.json'}", f"--data.train_images={data / 'images/train'}",
        f"--data.val={data / 'annotations/instances_val.json'}", f"--data.val_images={data / 'images/val'}",
        "--data.img_size=64", "--data.batch_size=8", "--data.val_batch_size=6", f"--trainer.max_epochs={epochs}",
        "--trainer.check_val_every_n_epoch=1", f"--trainer.default_root_dir={run_dir}",
        f"--trainer.logger.init_args.save_dir={run_dir}",
    ]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    data = tiny_data(tmp_path_factory.mktemp("data"), num_train=16, num_val=6)
    run_dir = tmp_path_factory.mktemp("run")
    result = run_cli("fit", *overrides(data, run_dir))
    return data, run_dir, result.stdout + result.stderr


def test_fit_trains_both_branches_and_checkpoints_the_pgi_model(trained):
    _, run_dir, _ = trained
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    spec = last["pgi_detect"]["spec"]
    assert (spec["auxiliary"], spec["aux_weight"], spec["backbone"]["class_path"]) == (
        "fpn", 0.25, "pgi_detect.models.TimmBackbone")
    loaded = read_weights(run_dir / "checkpoints" / "last.ckpt")
    assert loaded.detector.num_branches == 2
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()


def test_validate_test_and_predict_with_the_same_config(trained):
    data, run_dir, _ = trained
    base = overrides(data, run_dir)
    for subcommand in ("validate", "test", "predict"):
        extra = {"test": [f"--data.test={data / 'annotations/instances_val.json'}",
                          f"--data.test_images={data / 'images/val'}"],
                 "predict": ["--model.predict_nms.conf_thres=0.001"]}.get(subcommand, [])  # a barely trained model
        result = run_cli(subcommand, *base, *extra, f"--ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}")
        if subcommand != "predict":
            assert f"{'val' if subcommand == 'validate' else 'test'}/mAP" in result.stdout
    predictions = json.loads((run_dir / "predictions" / "predictions.json").read_text())
    assert predictions and all("category_id" in row for row in predictions)


def test_resume_with_the_same_config_continues_the_run(trained, tmp_path):
    data, run_dir, _ = trained
    resumed = tmp_path / "resumed"
    import shutil

    shutil.copytree(run_dir / "checkpoints", resumed / "checkpoints")
    run_cli("fit", *overrides(data, resumed, epochs=3), "--ckpt_path=last")
    last = torch.load(resumed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    before = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["epoch"] == 2 and last["global_step"] > before["global_step"]


def test_detect_and_export_run_the_stripped_model(trained, tmp_path):
    data, run_dir, _ = trained
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    run_cli("detect", "--checkpoint", str(checkpoint), "--source", str(data / "images" / "val"), "--output",
            str(tmp_path / "detect"), "--img-size", "64")
    assert (tmp_path / "detect" / "predictions.json").is_file()
    run_cli("export", "--checkpoint", str(checkpoint), "--output", str(tmp_path / "model.onnx"), "--img-size", "64")
    graph = onnx.load(str(tmp_path / "model.onnx")).graph
    exported = sum(int(torch.tensor(list(t.dims)).prod()) if t.dims else 1 for t in graph.initializer)
    deployed = read_weights(checkpoint).detector.inference_copy()
    # Nothing of the auxiliary part is exported: the weights are those of the stripped, fused model.
    assert deployed.num_branches == 1
    assert exported <= count_parameters(deployed) + 1000  # + constants (anchor grid, DFL bins) folded into the graph


def test_freezing_the_backbone_of_the_pgi_model(trained, tmp_path):
    data, _, _ = trained
    result = run_cli("fit", *overrides(data, tmp_path / "frozen", epochs=1), "--model.freeze=backbone")
    assert "froze layers 0-3 (backbone)" in result.stdout + result.stderr
