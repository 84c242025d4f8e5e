"""The seams a user hits around a run, through the CLI with the shipped demo config (its worker, its checkpoint
callbacks, its logger):

- checkpoints are written atomically: a write that fails (a full disk) leaves the previous file intact and is one
  line naming the folder;
- a truncated checkpoint given to fit/validate is one line naming the file and the run's other checkpoints;
- `--ckpt_path best`, `best.ckpt` and `last` name files of the run folder;
- the run folder (`trainer.default_root_dir`) holds the logger's files and config.yaml too;
- a second fit into the folder of a live fit is refused; user errors are one line, no traceback.
"""
from __future__ import annotations

import errno
import subprocess
import sys
import time

import pytest
import torch

from helpers.runs import DEMO_CONFIG, REPO, cli_command, cli_env, demo_overrides, tiny_data
from pgi_detect.cli.commands import main

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_data(tmp_path_factory.mktemp("data"), num_train=8, num_val=4)


def cli_args(data, run_dir, *extra: str, epochs: int = 2) -> list[str]:
    return ["--config", str(DEMO_CONFIG), *demo_overrides(data, run_dir, epochs=epochs, batch_size=4),
            "--model.optim.nominal_batch_size=4", *extra]


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    assert main(["fit", *cli_args(data, run_dir)]) == 0
    return run_dir


def one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("pgi-detect ")]
    assert len(err) == 1, err
    return err[0]


def test_a_failed_checkpoint_write_keeps_the_previous_checkpoint(data, tmp_path, monkeypatch, capsys):
    """The second epoch's last.ckpt hits a full disk halfway: the run stops with one line naming the folder, and
    epoch 0's last.ckpt is still there, whole, with no partial file left behind."""
    real_save = torch.save
    writes = {"last": 0}

    def filling_disk(obj, stream, *args, **kwargs):
        name = getattr(stream, "name", "")
        if "last.ckpt" in str(name):
            writes["last"] += 1
            if writes["last"] == 2:
                stream.write(b"\0" * 4096)  # part of the file made it to disk
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, stream, *args, **kwargs)

    monkeypatch.setattr(torch, "save", filling_disk)
    run_dir = tmp_path / "run"
    assert main(["fit", *cli_args(data, run_dir)]) == 1
    line = one_error_line(capsys)
    assert "No space left on device" in line and str(run_dir / "checkpoints") in line and "intact" in line
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["epoch"] == 0 and saved["state_dict"]
    assert not [p.name for p in (run_dir / "checkpoints").iterdir() if p.suffix == ".partial"]


def test_a_file_too_large_for_the_file_system_is_refused_by_the_os(tmp_path):
    """A real failing write (a file-size limit makes the kernel refuse it, as a full disk would): the old file
    stays byte for byte."""
    script = f"""
import resource, signal, torch
from pathlib import Path
from pgi_detect.training.checkpoint_io import AtomicCheckpointIO, CheckpointError
target = Path({str(tmp_path)!r}) / "last.ckpt"
io = AtomicCheckpointIO()
io.save_checkpoint({{"epoch": 0, "w": torch.zeros(1000)}}, target)
before = target.read_bytes()
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
try:
    io.save_checkpoint({{"epoch": 1, "w": torch.zeros(1 << 20)}}, target)
except CheckpointError as error:
    print("ERROR", error)
assert target.read_bytes() == before, "previous checkpoint changed"
print("partials", sorted(p.name for p in target.parent.iterdir() if p.name.endswith(".partial")))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=cli_env())
    assert result.returncode == 0, result.stderr
    assert "ERROR" in result.stdout and "File too large" in result.stdout and str(tmp_path) in result.stdout
    assert "partials []" in result.stdout


def test_a_truncated_checkpoint_is_one_line_naming_it_and_the_good_ones(data, trained, tmp_path, capsys):
    damaged = trained / "checkpoints" / "damaged.ckpt"
    damaged.write_bytes((trained / "checkpoints" / "last.ckpt").read_bytes()[:50_000])
    try:
        for command in ("validate", "fit"):
            assert main([command, *cli_args(data, trained), f"--ckpt_path={damaged}"]) == 1
            line = one_error_line(capsys)
            assert str(damaged) in line and "truncated" in line and "last.ckpt (epoch 1)" in line
    finally:
        damaged.unlink()


@pytest.mark.parametrize("name", ["best", "best.ckpt", "last", "last.ckpt"])
def test_checkpoint_names_resolve_in_the_run_folder(data, trained, name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not next to the run: the name means the run folder's file
    assert main(["validate", *cli_args(data, trained), f"--ckpt_path={name}"]) == 0


def test_a_missing_best_names_the_checkpoints_there(data, trained, tmp_path, capsys):
    run_dir = tmp_path / "other"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes((trained / "checkpoints" / "last.ckpt").read_bytes())
    assert main(["validate", *cli_args(data, run_dir), "--ckpt_path=best"]) == 1
    line = one_error_line(capsys)
    assert "no best.ckpt in" in line and "last.ckpt (epoch 1)" in line


def test_the_run_folder_holds_the_logger_files_and_the_config(data, tmp_path, monkeypatch):
    """Only `--trainer.default_root_dir` is moved (the config's logger still says demo_runs): everything follows."""
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "moved"
    args = [a for a in cli_args(data, run_dir, epochs=1) if not a.startswith("--trainer.logger.init_args.save_dir")]
    assert main(["fit", *args]) == 0
    assert sorted(p.name for p in run_dir.iterdir()) == [".pgi-detect-fit.lock", "checkpoints", "demo-synthetic", "reports"]
    assert list(run_dir.glob("demo-synthetic/version_*/config.yaml"))
    assert not (tmp_path / "demo_runs").exists()
    # A logger folder given on the command line is kept: the logs go there, the checkpoints stay in the run folder.
    logs = tmp_path / "elsewhere"
    assert main(["fit", *args, "--trainer.default_root_dir", str(tmp_path / "second"),
                 f"--trainer.logger.init_args.save_dir={logs}"]) == 0
    assert list(logs.glob("demo-synthetic/version_*/config.yaml"))
    assert (tmp_path / "second" / "checkpoints" / "last.ckpt").is_file()


def test_a_second_fit_into_a_live_runs_folder_is_refused(data, tmp_path):
    run_dir = tmp_path / "run"
    first = subprocess.Popen(cli_command("fit", *cli_args(data, run_dir, epochs=50)), cwd=REPO, env=cli_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        lock = run_dir / ".pgi-detect-fit.lock"
        deadline = time.time() + 120
        while not (lock.is_file() and lock.stat().st_size) and time.time() < deadline:
            time.sleep(0.5)
        second = subprocess.run(cli_command("fit", *cli_args(data, run_dir, epochs=1)), cwd=REPO, env=cli_env(),
                                capture_output=True, text=True, timeout=300)
        assert second.returncode == 1
        assert f"pid {first.pid}" in second.stderr and "--trainer.default_root_dir" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        first.kill()
        first.wait()
    # The holder died without cleaning up (kill -9): its lock went with it, the folder is free again (for a new run
    # that replaces what the killed one saved; without --overwrite it would be refused for those checkpoints).
    assert main(["fit", *cli_args(data, run_dir, epochs=1), "--overwrite=true"]) == 0


@pytest.mark.parametrize("extra, expected", [
    (["--data.dataset=/nowhere/data.yaml"], "data.dataset (/nowhere/data.yaml) gives every split"),
    (["--data.val_images=/nowhere/val"], "/nowhere/val: images folder not found"),
])
def test_user_errors_are_one_line_without_a_traceback(data, tmp_path, extra, expected):
    result = subprocess.run(cli_command("fit", *cli_args(data, tmp_path / "run", *extra, epochs=1)), cwd=REPO,
                            env=cli_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and f"pgi-detect fit: {expected}" in result.stderr
    debug = subprocess.run(cli_command("fit", *cli_args(data, tmp_path / "run", *extra, epochs=1)), cwd=REPO,
                           env=cli_env(PGI_DETECT_DEBUG="1"), capture_output=True, text=True, timeout=300)
    assert "Traceback" in debug.stderr


def test_bad_samples_hint_names_the_cli_flag(data, tmp_path):
    """The error for a bad sample suggests the flag a CLI user types."""
    import json

    annotations = json.loads((data / "annotations" / "instances_train.json").read_text())
    annotations["annotations"][0]["category_id"] = 999  # a category the file does not declare
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(annotations))
    result = subprocess.run(cli_command("fit", *cli_args(data, tmp_path / "run", f"--data.train={broken}",
                                                         epochs=1)),
                            cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "--data.on_bad_sample skip" in result.stderr and str(broken) in result.stderr


def test_the_shipped_coco_config_runs_quietly_on_cpu(coco128_dir, tmp_path):
    """What used to be noise on a CPU machine: Lightning's fp16 swap warning, torch's worker-count and pin_memory
    warnings, Lightning's own deprecation, `epoch 0/500` under max_steps. Each is one line of ours or nothing."""
    annotations = coco128_dir / "annotations" / "instances_train2017.json"
    images = coco128_dir / "images" / "train2017"
    args = ["fit", "--config", str(REPO / "experiments" / "gelan-t-coco.yaml"), f"--data.train={annotations}",
            f"--data.train_images={images}", f"--data.val={annotations}", f"--data.val_images={images}",
            "--data.img_size=96", "--data.batch_size=4", "--data.num_workers=64", "--trainer.max_steps=2", "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=1", "--trainer.log_every_n_steps=1", f"--trainer.default_root_dir={tmp_path}"]
    result = subprocess.run(cli_command(*args), cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    for noise in ("AMP with fp16 is not supported", "worker processes in total", "'pin_memory' argument",
                  "LeafSpec", "epoch 0/500", "not supported by the model summary"):
        assert noise not in output, noise
    assert output.count("fp16 autocast needs CUDA; bf16-mixed on this accelerator") == 1
    assert output.count("data.num_workers 64 -> ") == 1
    assert "(max_steps)" in output
