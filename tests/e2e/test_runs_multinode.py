"""Multi-node DDP on CPU: two `pgi-detect` processes acting as two nodes of one process each (gloo over loopback),
launched once with Lightning's own variables (MASTER_ADDR, MASTER_PORT, NODE_RANK) and once with SLURM's, run the
shipped gelan-t COCO config plus experiments/base/ddp.yaml (SyncBatchNorm dropped on CPU, with one line saying so)
on coco128 through fit, validate and predict, starting from the gelan-t weights made by the official code
(shared/golden). The two-node validation must score exactly the single process's detections of the same checkpoint
(128 images split over two ranks, each scored once), and the two ranks' predictions together must be the single
process's."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from helpers.runs import REPO, cli_command, cli_env, free_port, run_cli

pytestmark = pytest.mark.slow
CONFIG = REPO / "experiments" / "gelan-t-coco.yaml"
DDP_CONFIG = REPO / "experiments" / "base" / "ddp.yaml"


def coco128_overrides(coco128: Path, golden: Path, run_dir: Path) -> list[str]:
    annotations = coco128 / "annotations" / "instances_train2017.json"
    images = coco128 / "images" / "train2017"
    return [
        f"--data.train={annotations}", f"--data.train_images={images}", f"--data.val={annotations}",
        f"--data.val_images={images}", "--data.img_size=320", "--data.batch_size=4", "--data.val_batch_size=8",
        "--data.num_workers=0", f"--model.weights={golden / 'model_gelan-t.pt'}", "--model.optim.lr0=0.0001",
        "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.num_sanity_val_steps=0",
        "--trainer.precision=32-true", f"--trainer.default_root_dir={run_dir}",
        '--trainer.logger={"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "'
        + str(run_dir) + '"}}',
    ]


def node_env(launcher: str, node_rank: int, port: int) -> dict[str, str]:
    if launcher == "lightning":
        return cli_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), NODE_RANK=str(node_rank))
    return cli_env(SLURM_JOB_ID="77", SLURM_JOB_NAME="pgi-detect", SLURM_NTASKS="2", SLURM_NTASKS_PER_NODE="1",
                   SLURM_NNODES="2", SLURM_PROCID=str(node_rank), SLURM_LOCALID="0", SLURM_NODEID=str(node_rank),
                   SLURM_NODELIST="localhost", MASTER_PORT=str(port))


def two_nodes(launcher: str, *args: str) -> list[str]:
    """Run `pgi-detect ARGS` as node 0 and node 1 at once; returns both outputs."""
    import subprocess

    port = free_port()
    command = cli_command(*args, "--config", str(DDP_CONFIG), "--trainer.accelerator=cpu", "--trainer.devices=1",
                          "--trainer.num_nodes=2")
    processes = [subprocess.Popen(command, cwd=REPO, env=node_env(launcher, rank, port), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    outputs = [process.communicate(timeout=900)[0] for process in processes]
    for rank, (process, output) in enumerate(zip(processes, outputs)):
        assert process.returncode == 0, f"node {rank} exit {process.returncode}:\n{output[-6000:]}"
    return outputs


def logged_map(run_dir: Path) -> float:
    """The last val/mAP the CSV logger wrote under `run_dir`."""
    values = []
    for path in sorted(run_dir.rglob("metrics.csv")):
        with path.open() as file:
            values += [float(row["val/mAP"]) for row in csv.DictReader(file) if row.get("val/mAP")]
    assert values, f"no val/mAP logged under {run_dir}"
    return values[-1]


@pytest.mark.parametrize("launcher", ["lightning", "slurm"])
def test_two_nodes_fit_and_validate_like_one_process(coco128_dir, golden_dir, tmp_path, launcher):
    fit_dir, validate_dir, single_dir = tmp_path / "fit", tmp_path / "validate", tmp_path / "single"
    outputs = two_nodes(launcher, "fit", "--config", str(CONFIG), *coco128_overrides(coco128_dir, golden_dir, fit_dir))
    assert "SyncBatchNorm needs CUDA" in outputs[0]
    checkpoint = fit_dir / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file()

    # Validation scores the detections gathered from both ranks, each image once: with the scored detections saved
    # (the untrained head scores ~1e-5, so a tiny confidence threshold keeps up to 300 per image), the two-node file
    # equals the single process's record for record, and so does the mAP.
    scored = ["--model.save_json=true", "--model.eval_nms.conf_thres=0.000001", f"--ckpt_path={checkpoint}"]
    two_nodes(launcher, "validate", "--config", str(CONFIG),
              *coco128_overrides(coco128_dir, golden_dir, validate_dir), *scored)
    run_cli("validate", "--config", str(CONFIG), *coco128_overrides(coco128_dir, golden_dir, single_dir), *scored)
    nodes, single = (json.loads((d / "reports" / "validate" / "detections.json").read_text())
                     for d in (validate_dir, single_dir))
    assert len({r["image_id"] for r in single}) == 128 and len(single) > 10000
    assert sorted(nodes, key=record_key) == sorted(single, key=record_key)
    assert logged_map(validate_dir) == pytest.approx(logged_map(single_dir), abs=1e-9)
    if launcher == "slurm":
        return
    # The detections themselves (mAP of an untrained model is 0): `predict` on both nodes writes one file per rank;
    # together they hold every image once, with exactly the single process's detections.
    low_threshold = "--model.predict_nms.conf_thres=0.000001"  # the untrained head scores ~1e-5
    two_nodes(launcher, "predict", "--config", str(CONFIG), *coco128_overrides(coco128_dir, golden_dir, validate_dir),
              f"--ckpt_path={checkpoint}", low_threshold)
    run_cli("predict", "--config", str(CONFIG), *coco128_overrides(coco128_dir, golden_dir, single_dir),
            f"--ckpt_path={checkpoint}", low_threshold)
    ranks = [json.loads((validate_dir / "predictions" / f"rank{r}" / "predictions.json").read_text()) for r in (0, 1)]
    single = json.loads((single_dir / "predictions" / "predictions.json").read_text())
    images_per_rank = [{record["image_id"] for record in records} for records in ranks]
    assert not images_per_rank[0] & images_per_rank[1] and len(single) > 1000
    assert sorted(ranks[0] + ranks[1], key=record_key) == sorted(single, key=record_key)


def record_key(record: dict) -> tuple:
    return record["image_id"], record["category_id"], -record["score"], tuple(record["bbox"])
