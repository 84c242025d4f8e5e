"""Batch assembly (the `Batch` contract) and per-worker seeding."""
from __future__ import annotations

import random
from typing import Any, NotRequired, TypedDict

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import default_collate


class Batch(TypedDict):
    """One batch, as the data loaders produce it and DetectionTask consumes it.

    images: uint8 (B, 3, H, W) RGB (the task divides by 255 on the device).
    targets: float32 (n, 6) rows `[image_index, class, cx, cy, w, h]` normalised to the batch image size.
    image_ids: int64 (B,) dataset image ids (COCO `id`; the running index for YOLO txt).
    orig_shapes: int64 (B, 2) original (h, w); scales: float32 (B, 2) letterbox gain (x, y); pads: float32 (B, 2)
        letterbox offset (x, y); original = (letterboxed - pad) / gain (see `geometry.Letterbox`).
    paths: the image files; pipelines: the augmentation path each sample took ('mosaic', 'eval', ...).
    """

    images: Tensor
    targets: Tensor
    image_ids: Tensor
    orig_shapes: Tensor
    scales: Tensor
    pads: Tensor
    paths: list[str]
    pipelines: NotRequired[list[str]]


def collate_detections(samples: list[dict[str, Any]]) -> Batch:
    """Stack `DetectionDataset` samples into a `Batch`."""
    shapes = {tuple(s["image"].shape) for s in samples}
    if len(shapes) != 1:
        raise ValueError(f"images in one batch differ in shape {sorted(shapes)}; rect batches need RectShardSampler")
    # default_collate stacks straight into shared memory inside a DataLoader worker, so the batch is not stacked
    # in the worker's heap and then copied again into shared memory to reach the main process.
    images = default_collate([s["image"] for s in samples])
    height, width = images.shape[-2:]
    return {
        "images": images,
        "targets": targets_of(samples, width, height),
        "image_ids": torch.tensor([s["image_id"] for s in samples], dtype=torch.int64),
        "orig_shapes": torch.tensor([s["orig_shape"] for s in samples], dtype=torch.int64),
        "scales": torch.tensor([s["scale"] for s in samples], dtype=torch.float32),
        "pads": torch.tensor([s["pad"] for s in samples], dtype=torch.float32),
        "paths": [s["path"] for s in samples],
        "pipelines": [s["pipeline"] for s in samples],
    }


def targets_of(samples: list[dict[str, Any]], width: int, height: int) -> Tensor:
    """(n, 6) float32 `[image_index, class, cx, cy, w, h]` rows, normalised: one numpy pass over the whole batch
    (float32 throughout, the same numbers as per-sample torch arithmetic)."""
    boxes = [np.asarray(s["boxes"], np.float32).reshape(-1, 4) for s in samples]
    counts = [len(b) for b in boxes]
    if not sum(counts):
        return torch.zeros((0, 6))
    xyxy = np.concatenate(boxes)
    norm = np.asarray([width, height, width, height], np.float32)
    rows = np.empty((len(xyxy), 6), np.float32)
    rows[:, 0] = np.repeat(np.arange(len(samples), dtype=np.float32), counts)
    rows[:, 1] = np.concatenate([np.asarray(s["classes"]).reshape(-1) for s in samples]).astype(np.float32)
    rows[:, 2:4] = (xyxy[:, :2] + xyxy[:, 2:]) / np.float32(2)
    rows[:, 4:6] = xyxy[:, 2:] - xyxy[:, :2]
    rows[:, 2:] /= norm
    return torch.from_numpy(rows)


def seed_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: seed `random` and numpy's global generator from torch's per-worker seed, for any
    code that uses them (our augmentation draws from a per-sample generator, `DetectionDataset.sample_rng`)."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
