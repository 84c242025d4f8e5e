"""Batch assembly (the batch dict of docs/design.md) and per-worker seeding."""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch.utils.data import get_worker_info


def collate_detections(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack samples into the batch dict: uint8 images (B,3,H,W), targets (n,6) [img_idx, cls, cx, cy, w, h]
    normalised to the batch image size, plus image_ids, orig_shapes, scales, pads, paths (and `pipelines`, the
    augmentation path each sample took, for debugging and tests)."""
    shapes = {tuple(s["image"].shape) for s in samples}
    if len(shapes) != 1:
        raise ValueError(f"images in one batch differ in shape {sorted(shapes)}; rect batches need RectShardSampler")
    images = torch.stack([s["image"] for s in samples])
    height, width = images.shape[-2:]
    norm = torch.tensor([width, height, width, height], dtype=torch.float32)
    rows = []
    for i, sample in enumerate(samples):
        boxes = torch.as_tensor(sample["boxes"], dtype=torch.float32).reshape(-1, 4)
        cxcywh = torch.cat([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]], 1) / norm
        classes = torch.as_tensor(sample["classes"], dtype=torch.float32).reshape(-1, 1)
        rows.append(torch.cat([torch.full_like(classes, i), classes, cxcywh], 1))
    return {
        "images": images,
        "targets": torch.cat(rows) if rows else torch.zeros((0, 6)),
        "image_ids": torch.tensor([s["image_id"] for s in samples], dtype=torch.int64),
        "orig_shapes": torch.tensor([s["orig_shape"] for s in samples], dtype=torch.int64),
        "scales": torch.tensor([s["scale"] for s in samples], dtype=torch.float32),
        "pads": torch.tensor([s["pad"] for s in samples], dtype=torch.float32),
        "paths": [s["path"] for s in samples],
        "pipelines": [s["pipeline"] for s in samples],
    }


def seed_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: seed `random`, numpy and the dataset's generator from torch's per-worker seed
    (base seed from the loader's generator + worker id), so runs with the same seed give identical batches."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
    info = get_worker_info()
    reseed = getattr(info.dataset if info is not None else None, "reseed", None)
    if reseed is not None:
        reseed(seed)
