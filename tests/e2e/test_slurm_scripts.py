"""The sbatch scripts started by hand create the folder SLURM writes their output to, then submit themselves."""
from __future__ import annotations

import os
import subprocess

import pytest

from helpers.runs import REPO


@pytest.mark.parametrize("script", ["train_1node_8gpu.sbatch", "train_multinode.sbatch"])
def test_script_creates_its_log_folder_and_submits_itself(script, tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sbatch").write_text('#!/bin/bash\necho "$@" > "$FAKE_SLURM_DIR/sbatch.args"\n')
    (fake / "sbatch").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(PATH=f"{fake}{os.pathsep}{os.environ['PATH']}", FAKE_SLURM_DIR=str(fake), SBATCH_ARGS="--nodes=2")
    path = REPO / "scripts" / "slurm" / script
    assert "#SBATCH --output=logs/" in path.read_text()
    result = subprocess.run(["bash", str(path), "experiments/gelan-t-coco.yaml", "--trainer.max_epochs=3"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "logs").is_dir()
    assert (fake / "sbatch.args").read_text().split() == [
        "--nodes=2", str(path), "experiments/gelan-t-coco.yaml", "--trainer.max_epochs=3"]
