"""Where a run's checkpoints live, how they are written (atomically), how the CLI names them (`best`, `last`, a bare
file name) and what it reads from them before building anything."""
from __future__ import annotations

import errno
import os
import pickle
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from pgi_detect.weights.checkpoint_record import read_checkpoint_record

CHECKPOINT_DIR = "checkpoints"  # under trainer.default_root_dir, unless a ModelCheckpoint names its own dirpath
# DetectionTask arguments the CLI links from the datamodule; never taken from a checkpoint's hyperparameters.
LINKED_KEYS = ("num_classes", "class_names", "category_ids", "batch_size", "img_size")
# How the run's weights were initialised: the checkpoint's own weights replace them, so they are not re-applied
# (re-reading a fine-tuning file, or downloading a pretrained name, on every resume or validate).
INITIAL_KEYS = ("weights", "partial_weights")


class CheckpointError(OSError):
    """A checkpoint that cannot be written or read; the message names the file and what to do."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file in their own folder, flushed to disk and renamed into place, so a crash
    or a full disk leaves the previous checkpoint of that name intact (Lightning's default stages the file in the
    system temp folder and copies it over, which a full disk truncates)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike,
                        storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = path.with_name(f".{path.name}.{os.getpid()}.partial")
        try:
            with scratch.open("wb") as stream:
                torch.save(checkpoint, stream)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(scratch, path)
            _fsync_folder(path.parent)
        except (OSError, RuntimeError) as failure:
            scratch.unlink(missing_ok=True)
            # torch's zip writer reports a failed write (ENOSPC, EFBIG) as a RuntimeError raised while the OSError
            # is being handled; anything without an OSError behind it is not about the disk and is raised as it is.
            error = _os_error_in(failure)
            if error is None:
                raise
            kept = f"; the previous {path.name} is intact" if path.is_file() else ""
            raise CheckpointError(error.errno, f"could not write checkpoint {path.name} in {path.parent}: "
                                               f"{_describe_write_error(error, path.parent)}{kept}") from None
        except BaseException:  # a second Ctrl-C while saving: the previous file stays, no scratch file is left
            scratch.unlink(missing_ok=True)
            raise


def _os_error_in(error: BaseException | None) -> OSError | None:
    while error is not None and not isinstance(error, OSError):
        error = error.__cause__ or error.__context__
    return error


def _describe_write_error(error: OSError, folder: Path) -> str:
    if error.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        free = shutil.disk_usage(folder).free
        return f"{error.strerror} ({free / 2**20:.0f} MiB free there); free space or move the run (trainer.default_root_dir)"
    return error.strerror or str(error)


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def resolve_checkpoint_path(ckpt_path: str | None, default_root_dir: str | Path | None) -> str | None:
    """`best`, `last` and a bare file name mean files of the run's checkpoint folder
    (`<default_root_dir>/checkpoints`); other values are paths. `last` with no checkpoint yet stays "last" (a first
    start of a job that is always launched with `--ckpt_path last` trains from scratch, as Lightning does)."""
    if not ckpt_path:
        return ckpt_path
    folder = Path(default_root_dir or ".") / CHECKPOINT_DIR
    if ckpt_path == "last":
        newest = newest_last_checkpoint(Path(default_root_dir or "."))
        return str(newest) if newest is not None else "last"
    if ckpt_path == "best":
        best = folder / "best.ckpt"
        if not best.is_file():
            raise CheckpointError(errno.ENOENT, f"--ckpt_path best: no best.ckpt in {folder}{_others(folder)}")
        return str(best)
    path = Path(ckpt_path)
    if not path.exists() and path.parent == Path(".") and (folder / path.name).is_file():
        return str(folder / path.name)
    if not path.exists():
        raise CheckpointError(errno.ENOENT, f"--ckpt_path {ckpt_path}: no such file (nor in {folder})"
                                            f"{_others(folder)}")
    return ckpt_path


def _others(folder: Path, but: Path | None = None) -> str:
    """"; checkpoints there: best.ckpt (epoch 3), ..." for the readable checkpoints of `folder` other than `but`."""
    if not folder.is_dir():
        return ""
    found = []
    for path in sorted(folder.glob("*.ckpt")):
        if but is not None and path.resolve() == but.resolve():
            continue
        try:
            epoch = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("epoch")
        except Exception:  # another damaged one: not offered
            continue
        found.append(f"{path.name} (epoch {epoch})")
    return f"; checkpoints there: {', '.join(found)} (pass one with --ckpt_path)" if found else ""


def damaged_checkpoint_error(path: Path, error: Exception) -> CheckpointError:
    """One line naming the file, what is wrong with it and the run's other readable checkpoints."""
    size = path.stat().st_size if path.is_file() else 0
    detail = str(error).split(". ")[0].strip()[:100]  # torch's first sentence ("failed finding central directory")
    return CheckpointError(errno.EIO, f"{path}: not a readable checkpoint, truncated or damaged ({size:,} bytes; "
                                      f"{detail}){_others(path.parent, but=path)}")


def newest_last_checkpoint(default_root_dir: Path) -> Path | None:
    """The newest `last*.ckpt` of a run (what `--ckpt_path last` resumes from), or None."""
    folder = Path(default_root_dir) / CHECKPOINT_DIR
    candidates = [p for p in folder.glob("last*.ckpt") if p.is_file()] if folder.is_dir() else []
    return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None


def checkpoint_hyperparameters(path: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The DetectionTask hyperparameters a checkpoint was trained with, as the CLI can parse them (without the
    values the CLI links from the datamodule and without Lightning's private keys), and the detector spec its
    record holds (None for checkpoints without one)."""
    try:  # memory-mapped: only the small hyperparameter dict is read, not the weights and optimizer state
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as error:
        raise SystemExit(f"{path}: cannot read its hyperparameters without running code from the file (it pickles "
                         f"Python objects, e.g. a custom backbone built in Python): {error}") from None
    except (RuntimeError, EOFError, OSError) as error:  # torch reports truncated files with these
        raise damaged_checkpoint_error(path, error) from None
    saved = dict(payload.get("hyper_parameters") or {})
    record = read_checkpoint_record(payload)
    hparams = {k: v for k, v in saved.items() if not k.startswith("_") and k not in LINKED_KEYS + INITIAL_KEYS}
    return hparams, None if record is None else dict(record["spec"])


def flatten(values: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, leaf value) pairs of a nested mapping."""
    for key, value in values.items():
        if isinstance(value, Mapping) and value and "class_path" not in value:
            yield from flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def changed_values(saved: Mapping[str, Any], final: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, checkpoint value, value used) for every saved hyperparameter the run uses with another value."""
    used = dict(flatten(final))
    return [(key, old, used[key]) for key, old in flatten(saved) if key in used and used[key] != old]
