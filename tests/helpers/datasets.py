"""Small on-disk datasets shared by the data, sampler and DDP tests."""
from __future__ import annotations

import json

import numpy as np
from PIL import Image

from pgi_detect.data import DetectionDataModule

COLOURS = [(230, 30, 30), (30, 220, 30), (30, 30, 230), (230, 230, 30), (230, 30, 230), (30, 230, 230)]


def rectangles_coco(root, num_images=8, sizes=((64, 96),)):
    """Images with saturated rectangles on grey 114, so object pixels are easy to find after augmentation."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    images, annotations = [], []
    for i in range(num_images):
        h, w = sizes[i % len(sizes)]
        image = np.full((h, w, 3), 114, np.uint8)
        for _ in range(2):
            bw, bh = int(rng.integers(w // 5, w // 2)), int(rng.integers(h // 5, h // 2))
            x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            cls = int(rng.integers(len(COLOURS)))
            image[y:y + bh, x:x + bw] = COLOURS[cls]
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": cls + 1,
                                "bbox": [x, y, bw, bh], "iscrowd": 0, "area": bw * bh})
        Image.fromarray(image).save(root / "images" / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": w, "height": h})
    categories = [{"id": c + 1, "name": f"c{c}"} for c in range(len(COLOURS))]
    path = root / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def datamodule(root, **kwargs):
    """A DetectionDataModule over `rectangles_coco(root)` (train = val), 64 px, batch 4, no workers."""
    args = dict(train=str(root / "ann.json"), train_images=str(root / "images"), val=str(root / "ann.json"),
                val_images=str(root / "images"), img_size=64, batch_size=4, num_workers=0, seed=3)
    args.update(kwargs)
    return DetectionDataModule(**args)
