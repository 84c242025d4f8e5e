"""Where a run's checkpoints live and what the CLI reads from them before building anything."""
from __future__ import annotations

import pickle
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from pgi_detect.weights.checkpoint import read_checkpoint_record

CHECKPOINT_DIR = "checkpoints"  # under trainer.default_root_dir, unless a ModelCheckpoint names its own dirpath
# DetectionTask arguments the CLI links from the datamodule; never taken from a checkpoint's hyperparameters.
LINKED_KEYS = ("num_classes", "class_names", "category_ids", "batch_size", "img_size")
# How the run's weights were initialised: the checkpoint's own weights replace them, so they are not re-applied
# (re-reading a fine-tuning file, or downloading a pretrained name, on every resume or validate).
INITIAL_KEYS = ("weights", "partial_weights")


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
