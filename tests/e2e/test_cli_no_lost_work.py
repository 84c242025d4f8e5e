"""No run loses work, through `pgi-detect` in a subprocess with the shipped demo config (one persistent worker):

- re-running `fit` into a run folder that holds an earlier run's checkpoints is refused in one line naming the
  folder and the ways on, and leaves the files untouched; `--overwrite true` replaces them; `--ckpt_path last`
  resumes;
- Ctrl-C (SIGINT to the whole process group, as a terminal sends it, workers included) in the middle of epoch 0
  writes last.ckpt at the next optimizer step, prints one line saying how to resume, exits 130 within seconds, and
  `--ckpt_path last` then ends equal to an uninterrupted run.
"""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time

import pytest
import torch

from helpers.runs import (
    DEMO_CONFIG,
    REPO,
    assert_same_state,
    cli_command,
    cli_env,
    demo_overrides,
    read_until,
    run_cli,
    tiny_data,
)

pytestmark = pytest.mark.slow
BATCHES_PER_EPOCH = 10  # 40 training images, batch 4


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_data(tmp_path_factory.mktemp("data"))


def digest(folder):
    return {p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.ckpt"))}


def fit(data, run_dir, *extra, epochs=1):
    return subprocess.run(cli_command("fit", "--config", str(DEMO_CONFIG), *demo_overrides(data, run_dir, epochs=epochs),
                                      "--trainer.limit_train_batches=2", *extra),
                          cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=600)


def test_second_fit_into_a_finished_run_is_refused(data, tmp_path):
    first = fit(data, tmp_path)
    assert first.returncode == 0, first.stderr[-4000:]
    checkpoints = tmp_path / "checkpoints"
    before = digest(checkpoints)
    assert set(before) == {"best.ckpt", "last.ckpt"}

    again = fit(data, tmp_path)  # the same command again, as a user re-runs the README's fit
    assert again.returncode == 1
    message = [line for line in again.stderr.splitlines() if line.startswith("pgi-detect")]
    assert len(message) == 1 and "Traceback" not in again.stderr, again.stderr[-3000:]
    assert "Tip" not in again.stderr  # Lightning's cloud-logger advertisement is filtered
    assert str(checkpoints) in message[0] and "best.ckpt" in message[0]
    assert "--ckpt_path last" in message[0] and "--trainer.default_root_dir" in message[0]
    assert "--overwrite true" in message[0]
    assert digest(checkpoints) == before  # nothing of the earlier run was touched

    elsewhere = fit(data, tmp_path, f"--ckpt_path={tmp_path / 'elsewhere.ckpt'}")
    assert elsewhere.returncode == 1 and "elsewhere.ckpt" in elsewhere.stderr  # a missing file is named

    resumed = fit(data, tmp_path, "--ckpt_path=last", epochs=2)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert torch.load(checkpoints / "last.ckpt", weights_only=False)["epoch"] == 1

    (checkpoints / "epoch=0.ckpt").write_bytes((checkpoints / "last.ckpt").read_bytes())  # a stale extra file
    replaced = fit(data, tmp_path, "--overwrite=true")
    assert replaced.returncode == 0, replaced.stderr[-4000:]
    assert "removed 3 checkpoint(s) of the earlier run" in replaced.stderr
    assert sorted(digest(checkpoints)) == ["best.ckpt", "last.ckpt"]  # the new run's files only
    assert torch.load(checkpoints / "last.ckpt", weights_only=False)["epoch"] == 0


def test_overwrite_is_a_fit_option_only(data, tmp_path):
    result = subprocess.run(cli_command("validate", "--config", str(DEMO_CONFIG), "--overwrite=true"), cwd=REPO,
                            env=cli_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "overwrite" in result.stderr


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    run_cli("fit", "--config", str(DEMO_CONFIG), *demo_overrides(data, run_dir))
    return run_dir


def test_ctrl_c_saves_and_resumes_exactly(data, uninterrupted, tmp_path):
    command = cli_command("fit", "--config", str(DEMO_CONFIG), *demo_overrides(data, tmp_path))
    process = subprocess.Popen(command, cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    # The progress bar prints a line every 5 batches when stdout is not a terminal: Ctrl-C in epoch 0's middle,
    # before any checkpoint exists.
    read_until(process, lambda line: line.startswith("epoch 0/2") and f"batch 5/{BATCHES_PER_EPOCH}" in line)
    assert not (tmp_path / "checkpoints" / "last.ckpt").exists()
    pressed = time.monotonic()
    os.killpg(process.pid, signal.SIGINT)  # what a terminal does: the training process and its DataLoader worker
    output, _ = process.communicate(timeout=120)
    assert time.monotonic() - pressed < 30
    assert process.returncode == 130, output[-6000:]
    assert "Traceback" not in output, output[-6000:]
    stopped = [line for line in output.splitlines() if "stopped by Ctrl-C" in line]
    assert len(stopped) == 1 and "--ckpt_path last" in stopped[0], output[-3000:]
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    loader_state = saved["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    assert saved["epoch"] == 0 and 5 <= loader_state["batches"] < BATCHES_PER_EPOCH
    assert not list((tmp_path / "checkpoints").glob(".*partial"))

    run_cli("fit", "--config", str(DEMO_CONFIG), *demo_overrides(data, tmp_path), "--ckpt_path=last")
    assert_same_state(tmp_path / "checkpoints" / "last.ckpt", uninterrupted / "checkpoints" / "last.ckpt")
