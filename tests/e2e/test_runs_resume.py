"""Runs that never lose work, exercised as users run them: the shipped demo config through `pgi-detect` in a
subprocess and the SLURM sbatch script with a fake `srun`/`scontrol`.

- last.ckpt holds the latest state at every epoch end even when val/mAP never improves (best.ckpt keeps the best);
- a run killed with SIGKILL after an epoch checkpoint and resumed with `--ckpt_path last` ends with the same raw
  weights, EMA weights and optimizer state as an uninterrupted run;
- under SLURM, SIGUSR1 in the middle of an epoch writes last.ckpt, requeues the job and stops; running the sbatch
  script again resumes at the same batch of the same epoch order and ends equal too.
"""
from __future__ import annotations

import os
import signal

import pytest
import torch

from helpers.runs import (
    DEMO_CONFIG,
    assert_same_state,
    demo_overrides,
    fake_slurm_bin,
    read_until,
    run_cli,
    sbatch_command,
    slurm_env,
    start,
    tiny_data,
    wait_for_checkpoint,
)

pytestmark = pytest.mark.slow
BATCHES_PER_EPOCH = 10  # 40 training images, batch 4; demo accumulation: nominal 16 -> 4 batches per step


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    """The reference: the sbatch script's command, run to the end without interruption."""
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    fake = fake_slurm_bin(run_dir / "bin")
    process = start(sbatch_command("train_1node_8gpu.sbatch", DEMO_CONFIG, *demo_overrides(data, run_dir)),
                    slurm_env(fake))
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-6000:]
    return run_dir


def test_last_checkpoint_is_the_final_state_when_map_never_improves(data, tmp_path):
    """Shipped checkpoint settings (best on val/mAP, last every epoch): an untrained model's mAP stays 0, so only
    epoch 0 is ever "best", and last.ckpt must still be the final epoch and step (it used to stay at epoch 0)."""
    run_cli("fit", "--config", str(DEMO_CONFIG), *demo_overrides(data, tmp_path, epochs=3),
            "--model.optim.lr0=0", "--trainer.limit_train_batches=2")
    checkpoints = tmp_path / "checkpoints"
    best = torch.load(checkpoints / "best.ckpt", weights_only=False)
    last = torch.load(checkpoints / "last.ckpt", weights_only=False)
    best_score = [s for k, s in best["callbacks"].items() if "val/mAP" in k][0]["best_model_score"]
    assert float(best_score) == 0.0 and best["epoch"] == 0  # never improved after epoch 0
    # 3 epochs of 2 batches; the official accumulation, ramping from 1 to 4 over the 10 warmup batches, steps after
    # batches 0, 1, 3 and 5.
    assert (last["epoch"], last["global_step"]) == (2, 4)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best.ckpt", "last.ckpt"]


@pytest.mark.parametrize("persistent", [True, False], ids=["persistent-worker", "worker-per-epoch"])
def test_killed_run_resumes_exactly(data, uninterrupted, tmp_path, persistent):
    """With the demo config's persistent worker and with a worker started anew every epoch (both once replayed
    epoch 0's order after a resume); the reference ran with the persistent one, so persistence changes nothing."""
    fake = fake_slurm_bin(tmp_path / "bin")
    extra = [] if persistent else ["--data.persistent_workers=false"]
    command = sbatch_command("train_1node_8gpu.sbatch", DEMO_CONFIG, *demo_overrides(data, tmp_path), *extra)
    process = start(command, slurm_env(fake))
    # Kill the training process (SIGKILL: nothing can be saved) as soon as the epoch-0 checkpoint is complete, as
    # SLURM kills a job step; then the batch script.
    wait_for_checkpoint(tmp_path / "checkpoints" / "last.ckpt", lambda c: c["epoch"] == 0)
    os.kill(int((fake / "task.pid").read_text()), signal.SIGKILL)
    process.kill()
    process.wait(timeout=60)
    resumed = start(command, slurm_env(fake, restart=1))
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output[-6000:]
    assert_same_state(tmp_path / "checkpoints" / "last.ckpt", uninterrupted / "checkpoints" / "last.ckpt")


def test_slurm_preemption_saves_requeues_and_resumes_at_the_same_batch(data, uninterrupted, tmp_path):
    fake = fake_slurm_bin(tmp_path / "bin")
    command = sbatch_command("train_1node_8gpu.sbatch", DEMO_CONFIG, *demo_overrides(data, tmp_path))
    process = start(command, slurm_env(fake))
    # The progress bar prints a line every 5 batches when stdout is not a terminal: signal in epoch 1's middle.
    read_until(process, lambda line: line.startswith("epoch 1/2") and f"batch 5/{BATCHES_PER_EPOCH}" in line)
    task_pid = int((fake / "task.pid").read_text())  # the srun task, i.e. the training process
    os.kill(task_pid, signal.SIGUSR1)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-6000:]
    assert output.count("Preemption: SIGUSR1 received") == 1, output[-3000:]  # once printed twice
    assert (fake / "scontrol.log").read_text().split() == ["requeue", "4242"]
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    loader_state = saved["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    assert saved["epoch"] == 1 and loader_state["epoch"] == 1
    assert 5 <= loader_state["batches"] < BATCHES_PER_EPOCH
    # Saved at a step boundary: the last batch trained on ended with an optimizer step (no gradients held back).
    assert saved["pgi_detect_last_step"] == BATCHES_PER_EPOCH + loader_state["batches"] - 1

    requeued = start(command, slurm_env(fake, restart=1))
    output, _ = requeued.communicate(timeout=600)
    assert requeued.returncode == 0, output[-6000:]
    assert_same_state(tmp_path / "checkpoints" / "last.ckpt", uninterrupted / "checkpoints" / "last.ckpt")
