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


def ultralytics_layout(root, splits=(("train", 6), ("val", 3)), names=("red", "green", "blue"), polygons=False):
    """A dataset in the ultralytics layout: images/<split>/*.jpg, labels/<split>/*.txt and data.yaml (`path`,
    `train`, `val`, `names` as a dict). Each image has one or two saturated rectangles (class = colour); with
    `polygons` the label rows are 4-corner polygons instead of `cx cy w h`. Returns the YAML path."""
    rng = np.random.default_rng(1)
    for split, count in splits:
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(count):
            h, w = 48, 64
            image = np.full((h, w, 3), 114, np.uint8)
            lines = []
            for _ in range(1 + i % 2):
                bw, bh = int(rng.integers(10, 24)), int(rng.integers(10, 20))
                x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
                cls = int(rng.integers(len(names)))
                image[y:y + bh, x:x + bw] = COLOURS[cls]
                if polygons:
                    corners = [x, y, x + bw, y, x + bw, y + bh, x, y + bh]
                    lines.append(f"{cls} " + " ".join(f"{v / (w if k % 2 == 0 else h):.6f}"
                                                      for k, v in enumerate(corners)))
                else:
                    lines.append(f"{cls} {(x + bw / 2) / w:.6f} {(y + bh / 2) / h:.6f} {bw / w:.6f} {bh / h:.6f}")
            Image.fromarray(image).save(root / "images" / split / f"{split}_{i}.jpg", quality=95)
            (root / "labels" / split / f"{split}_{i}.txt").write_text("\n".join(lines) + "\n")
    yaml_lines = [f"path: {root.name}"] + [f"{split}: images/{split}" for split, _ in splits]
    yaml_lines += ["names:"] + [f"  {i}: {name}" for i, name in enumerate(names)]
    path = root.parent / f"{root.name}.yaml"
    path.write_text("\n".join(yaml_lines) + "\n")
    return path
