"""Run `pgi-detect` the way users do (a subprocess, or the SLURM sbatch script with fake `srun`/`scontrol`) on a
tiny synthetic dataset with the shipped demo config, and compare the training state checkpoints hold."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
DEMO_CONFIG = REPO / "experiments" / "demo-synthetic.yaml"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tiny_data(root: Path, num_train: int = 40, num_val: int = 6) -> Path:
    """The demo's synthetic shapes at 64 px (a few seconds of training per epoch on one CPU thread)."""
    from pgi_detect.data import make_synthetic_coco

    if not (root / "annotations").is_dir():
        make_synthetic_coco(root, num_train=num_train, num_val=num_val, img_size=64, seed=0)
    return root


def demo_overrides(data: Path, run_dir: Path, *, epochs: int = 2, batch_size: int = 4) -> list[str]:
    """The demo config pointed at `data`, writing into `run_dir`, shrunk to a deterministic CPU run. Its DataLoader
    settings stay the config's (one persistent worker): a resume once replayed epoch 0's order with workers only."""
    return [
        f"--data.train={data / 'annotations/instances_train.json'}", f"--data.train_images={data / 'images/train'}",
        f"--data.val={data / 'annotations/instances_val.json'}", f"--data.val_images={data / 'images/val'}",
        "--data.img_size=64", f"--data.batch_size={batch_size}", "--data.val_batch_size=6",
        f"--trainer.max_epochs={epochs}", "--trainer.check_val_every_n_epoch=1", "--trainer.accelerator=cpu",
        "--trainer.deterministic=true",
        f"--trainer.default_root_dir={run_dir}", f"--trainer.logger.init_args.save_dir={run_dir}",
    ]


def cli_env(**extra: str) -> dict[str, str]:
    """The test process's environment for a child `pgi-detect` (one thread each: two processes share 2 cores)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="offline", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "pgi_detect.cli.commands", *args]


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """`pgi-detect ARGS` in a subprocess; fails the test with its output when it does not exit 0."""
    result = subprocess.run(cli_command(*args), cwd=REPO, env=env or cli_env(), capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
    return result


def fake_slurm_bin(folder: Path) -> Path:
    """`srun` that runs its command in place (recording its pid, the job step's task), and `scontrol` that records
    its arguments: enough of SLURM for the sbatch scripts to run on this machine."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "srun").write_text('#!/bin/bash\necho $$ > "$FAKE_SLURM_DIR/task.pid"\nexec "$@"\n')
    (folder / "scontrol").write_text('#!/bin/bash\necho "$@" >> "$FAKE_SLURM_DIR/scontrol.log"\n')
    for name in ("srun", "scontrol"):
        (folder / name).chmod(0o755)
    return folder


def slurm_env(fake: Path, job_id: str = "4242", restart: int = 0, **extra: str) -> dict[str, str]:
    """A one-node, one-task SLURM job's variables, with the fake srun/scontrol first on PATH."""
    return cli_env(
        PATH=f"{fake}{os.pathsep}{os.environ['PATH']}", FAKE_SLURM_DIR=str(fake), SLURM_JOB_ID=job_id,
        SLURM_JOB_NAME="pgi-detect", SLURM_NTASKS="1", SLURM_NTASKS_PER_NODE="1", SLURM_NNODES="1",
        SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_NODEID="0", SLURM_NODELIST="localhost",
        SLURM_CPUS_PER_TASK="1", SLURM_SUBMIT_DIR=str(REPO), SLURM_RESTART_COUNT=str(restart),
        MASTER_PORT=str(free_port()), VENV=str(Path(sys.executable).parents[1]), **extra,
    )


def sbatch_command(script: str, config: Path, *overrides: str) -> list[str]:
    return ["bash", str(REPO / "scripts" / "slurm" / script), str(config), *overrides]


def start(command: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def read_until(process: subprocess.Popen, wanted: Callable[[str], bool], timeout: float = 300) -> list[str]:
    """Lines of `process` output up to the first one `wanted` accepts (fails on exit or timeout first)."""
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            raise AssertionError("the run ended before the expected output:\n" + "".join(lines[-80:]))
        lines.append(line)
        if wanted(line):
            return lines
    raise AssertionError("timed out waiting for output:\n" + "".join(lines[-80:]))


def wait_for_checkpoint(path: Path, accept: Callable[[dict], bool], timeout: float = 300) -> dict:
    """The checkpoint at `path` once it exists, loads completely and `accept`s it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=False)
            if accept(checkpoint):
                return checkpoint
        except (FileNotFoundError, EOFError, RuntimeError):
            pass  # not written yet, or being written
        time.sleep(0.05)
    raise AssertionError(f"no acceptable checkpoint at {path}")


def training_state(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """What a resume must restore exactly: raw weights, EMA weights and the optimizer's per-parameter state."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    optimizer = checkpoint["optimizer_states"][0]["state"]
    return {
        "raw": dict(checkpoint["current_model_state"]),
        "ema": dict(checkpoint["state_dict"]),
        "optimizer": {f"{index}.{name}": value for index, state in optimizer.items()
                      for name, value in state.items() if torch.is_tensor(value)},
    }


def assert_same_state(actual: Path, expected: Path, tolerance: float = 1e-6) -> None:
    got, want = training_state(actual), training_state(expected)
    for kind in want:
        assert got[kind].keys() == want[kind].keys(), kind
        for key, value in want[kind].items():
            if value.is_floating_point():
                difference = float((got[kind][key].float() - value.float()).abs().max()) if value.numel() else 0.0
                assert difference <= tolerance, f"{kind} {key}: max difference {difference}"
            else:
                assert torch.equal(got[kind][key], value), f"{kind} {key}"
