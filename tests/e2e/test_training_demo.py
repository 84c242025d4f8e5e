"""`make demo` in miniature: synthetic shapes -> CLI training on CPU -> validate -> predictions drawn.

Chance level for this task is essentially 0 mAP50: the untrained detector scores ~0.004 (three classes, 1-3 large
objects per image; boxes that do not follow the objects rarely reach IoU 0.5). The full demo config measured
mAP50 0.29 after 65 optimizer steps, 0.94 after 130 and 0.99 after 195; this test takes 100 steps (160 images,
batch 16, 10 epochs), so 0.25 is >60x chance with a wide margin for seed/platform variation, and still fails if
training, EMA, the stripped/fused evaluation model or the box mapping back to original pixels were broken.
"""
from __future__ import annotations

import csv

import pytest

from conftest import REPO_ROOT, load_script_module
from helpers.rescoring import EVAL_NMS_FLAGS, coco_records, pycocotools_stats
from pgi_detect.cli.commands import run

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
REPO = REPO_ROOT
MIN_MAP50 = 0.25


@pytest.mark.slow
def test_demo_learns_well_above_chance(tmp_path):
    demo = load_script_module("demo")
    metrics = demo.main([
        "--data-dir", str(tmp_path / "data"), "--runs-dir", str(tmp_path / "runs"),
        "--num-train", "160", "--num-val", "30", "--max-epochs", "10", "--num-predict", "2",
        "--trainer.check_val_every_n_epoch=10", "--trainer.enable_progress_bar=false",
    ])
    assert metrics["val/mAP50"] > MIN_MAP50, metrics
    assert 0.0 <= metrics["val/mAP"] <= metrics["val/mAP50"] <= 1.0
    drawn = sorted((tmp_path / "runs" / "predictions").glob("*_pred.jpg"))
    assert len(drawn) == 2

    # Through the CLI on the best checkpoint (options given next to --ckpt_path win over its hyperparameters):
    # `validate --model.save_json true` writes the detections it scored, which plain pycocotools re-scores to the
    # logged numbers; `predict` with the evaluation NMS writes the same detections, so its JSON reproduces
    # validation's mAP.
    data, runs = tmp_path / "data", tmp_path / "runs"
    cli_args = ["--config", str(REPO / "experiments" / "demo-synthetic.yaml"),
                f"--data.train={data / 'annotations' / 'instances_train.json'}",
                f"--data.train_images={data / 'images' / 'train'}",
                f"--data.val={data / 'annotations' / 'instances_val.json'}",
                f"--data.val_images={data / 'images' / 'val'}", f"--trainer.default_root_dir={runs}",
                "--trainer.logger=false", "--trainer.enable_progress_bar=false",
                f"--ckpt_path={runs / 'checkpoints' / 'best.ckpt'}"]
    validate = run(["validate", *cli_args, "--model.save_json=true"])
    logged = {k: float(v) for k, v in validate.trainer.callback_metrics.items()}
    assert logged["val/mAP50"] == pytest.approx(metrics["val/mAP50"], abs=1e-6) and logged["val/mAP50"] > MIN_MAP50
    image_ids = validate.model.last_eval["image_ids"]
    scored = runs / "reports" / "validate" / "detections.json"
    stats = pycocotools_stats(data / "annotations" / "instances_val.json", scored, image_ids)
    assert stats[:3] == pytest.approx([logged["val/mAP"], logged["val/mAP50"], logged["val/mAP75"]], abs=1e-6)
    run(["predict", *cli_args, *EVAL_NMS_FLAGS])
    predicted = runs / "predictions" / "predictions.json"
    assert coco_records(predicted) == coco_records(scored)
    assert pycocotools_stats(data / "annotations" / "instances_val.json", predicted, image_ids)[0] == pytest.approx(
        logged["val/mAP"], abs=1e-6)

    # `test` on the val images given as the test split prints and writes the same table under reports/test
    tested = run(["test", *cli_args, f"--data.test={data / 'annotations' / 'instances_val.json'}",
                  f"--data.test_images={data / 'images' / 'val'}"])
    with (runs / "reports" / "test" / "per_class.csv").open() as handle:
        overall = next(csv.DictReader(handle))
    assert float(overall["AP50-95"]) == pytest.approx(float(tested.trainer.callback_metrics["test/mAP"]), abs=1e-6)
    assert float(overall["AP50-95"]) == pytest.approx(logged["val/mAP"], abs=1e-6)
