"""A tiny deterministic in-memory detection dataset (coloured squares) and a datamodule implementing the
`DetectionDataSource` contract, independent of pgi_detect.data, for the training tests."""
from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from pgi_detect.data import Batch
from pgi_detect.training import DetectionTask, GuardSettings, OptimizerSettings

COLORS = [(230, 40, 40), (40, 230, 40), (40, 40, 230)]
CATEGORY_IDS = [10, 20, 30]  # dataset ids differ from the contiguous indices on purpose


class SquaresDataset(Dataset):
    """Coloured squares on grey; the colour is the class. Originals are 2x the network input (scale 0.5)."""

    def __init__(self, count: int, size: int = 64, seed: int = 0, first_id: int = 100) -> None:
        rng = np.random.default_rng(seed)
        self.size = size
        self.items = []
        for index in range(count):
            boxes, classes = [], []
            for _ in range(int(rng.integers(1, 3))):
                w, h = rng.integers(size // 5, size // 2, 2)
                x, y = rng.integers(0, size - w), rng.integers(0, size - h)
                boxes.append([x, y, x + w, y + h])
                classes.append(int(rng.integers(0, 3)))
            self.items.append((first_id + index, np.array(boxes, np.float32), np.array(classes)))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        image_id, boxes, classes = self.items[index]
        image = np.full((self.size, self.size, 3), 114, np.uint8)
        for (x1, y1, x2, y2), cls in zip(boxes.astype(int), classes):
            image[y1:y2, x1:x2] = COLORS[cls]
        cxcywh = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2,
                           boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], 1) / self.size
        return {"image": torch.from_numpy(image).permute(2, 0, 1).contiguous(), "image_id": image_id,
                "labels": torch.from_numpy(np.concatenate([classes[:, None], cxcywh], 1)).float()}

    def coco(self) -> dict:
        """Ground truth in original pixels (2x the network input)."""
        images, annotations = [], []
        for image_id, boxes, classes in self.items:
            images.append({"id": image_id, "width": 2 * self.size, "height": 2 * self.size,
                           "file_name": f"{image_id}.png"})
            for box, cls in zip(boxes * 2, classes):
                x1, y1, x2, y2 = box.tolist()
                annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                    "category_id": CATEGORY_IDS[cls], "bbox": [x1, y1, x2 - x1, y2 - y1],
                                    "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
        categories = [{"id": c, "name": f"c{c}"} for c in CATEGORY_IDS]
        return {"images": images, "annotations": annotations, "categories": categories}


def collate(samples: list[dict]) -> Batch:
    targets = [torch.cat([torch.full((len(s["labels"]), 1), float(i)), s["labels"]], 1) for i, s in enumerate(samples)]
    size = samples[0]["image"].shape[-1]
    batch = len(samples)
    return {
        "images": torch.stack([s["image"] for s in samples]),
        "targets": torch.cat(targets),
        "image_ids": torch.tensor([s["image_id"] for s in samples], dtype=torch.int64),
        "orig_shapes": torch.tensor([[2 * size, 2 * size]] * batch, dtype=torch.int64),
        "scales": torch.full((batch, 2), 0.5),
        "pads": torch.zeros(batch, 2),
        "paths": [f"{s['image_id']}.png" for s in samples],
        "pipelines": ["eval"] * batch,
    }


class SquaresDataModule(pl.LightningDataModule):
    """Implements the `DetectionDataSource` contract (what DetectionTask and the callbacks use)."""

    num_classes = 3
    class_names = ["red", "green", "blue"]
    category_ids = CATEGORY_IDS

    def __init__(self, train: int = 16, val: int = 5, batch_size: int = 4, size: int = 64) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.train_set = SquaresDataset(train, size, seed=0)
        self.val_set = SquaresDataset(val, size, seed=1, first_id=1000)
        self.mosaic_calls: list[bool] = []

    def set_mosaic(self, enabled: bool) -> None:
        self.mosaic_calls.append(enabled)

    def ground_truth(self, stage: str) -> dict:
        return self.val_set.coco()

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=False, collate_fn=collate)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size, shuffle=False, collate_fn=collate)


def make_task(optim: dict | None = None, guard: dict | None = None, task_class: type = DetectionTask,
              **overrides) -> DetectionTask:
    """gelan-t for the squares data with a short warmup; `optim` / `guard` override `OptimizerSettings` /
    `GuardSettings` fields; `task_class` is a DetectionTask subclass to build instead."""
    settings = OptimizerSettings(**{"warmup_epochs": 1.0, "min_warmup_iters": 2, **(optim or {})})
    kwargs = dict(model="gelan-t", num_classes=3, class_names=SquaresDataModule.class_names,
                  category_ids=CATEGORY_IDS, optim=settings, guard=GuardSettings(**(guard or {})))
    kwargs.update(overrides)
    return task_class(**kwargs)


def make_trainer(tmp_path, callbacks=(), **overrides) -> pl.Trainer:
    kwargs = dict(default_root_dir=tmp_path, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                  enable_model_summary=False, num_sanity_val_steps=0, deterministic=True)
    kwargs.update(overrides)
    return pl.Trainer(callbacks=list(callbacks), **kwargs)
