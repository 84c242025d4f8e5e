"""A tiny, deterministic shape-detection dataset (COCO JSON on disk) for the demo and fast tests.

Three classes with distinct colours and shapes (red circle, green square, blue triangle) on noisy, textured
backgrounds. Objects are large (20–45 % of the image side) and barely overlap, so a tiny detector learns them on a
CPU in minutes.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

SHAPE_CLASSES = ("circle", "square", "triangle")
SHAPE_COLOURS_RGB = ((220, 40, 40), (40, 190, 60), (50, 80, 230))


@dataclass(frozen=True)
class SyntheticSplit:
    annotation_file: Path
    images_dir: Path
    num_images: int
    num_objects: int


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Low-frequency colour blobs + fine noise, so the detector cannot rely on flat backgrounds."""
    coarse = rng.integers(60, 200, (4, 4, 3)).astype(np.uint8)
    image = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    image += rng.integers(-25, 26, (size, size, 3), dtype=np.int16)
    for _ in range(int(rng.integers(2, 6))):  # a few distractor lines
        p1, p2 = rng.integers(0, size, 2), rng.integers(0, size, 2)
        grey = int(rng.integers(40, 220))
        cv2.line(image, tuple(int(v) for v in p1), tuple(int(v) for v in p2), (grey, grey, grey), 2)
    return np.clip(image, 0, 255).astype(np.uint8)


def _shape_polygon(cls: int, cx: float, cy: float, half: float, angle: float) -> np.ndarray:
    if cls == 0:
        t = np.linspace(0, 2 * np.pi, 32, endpoint=False)
        return np.stack([cx + half * np.cos(t), cy + half * np.sin(t)], 1)
    if cls == 1:
        return np.asarray([[cx - half, cy - half], [cx + half, cy - half], [cx + half, cy + half], [cx - half, cy + half]])
    t = angle + np.asarray([0, 2 * np.pi / 3, 4 * np.pi / 3]) - np.pi / 2
    return np.stack([cx + half * np.cos(t), cy + half * np.sin(t)], 1)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def render_image(rng: np.random.Generator, size: int = 256, max_objects: int = 3
                 ) -> tuple[np.ndarray, list[tuple[int, np.ndarray, np.ndarray]]]:
    """One RGB image and its objects as (class, xyxy box, polygon)."""
    image = _background(rng, size)
    objects: list[tuple[int, np.ndarray, np.ndarray]] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _attempt in range(10):
            cls = int(rng.integers(len(SHAPE_CLASSES)))
            half = rng.uniform(0.10, 0.225) * size
            cx, cy = rng.uniform(half, size - half, 2)
            polygon = _shape_polygon(cls, cx, cy, half, rng.uniform(0, 2 * np.pi))
            box = np.concatenate([polygon.min(0), polygon.max(0)]).clip(0, size)
            if all(_iou(box, other) < 0.1 for _, other, _ in objects):
                break
        else:
            continue
        colour = np.clip(np.asarray(SHAPE_COLOURS_RGB[cls]) + rng.integers(-20, 21, 3), 0, 255)
        cv2.fillPoly(image, [np.round(polygon).astype(np.int32)], tuple(int(c) for c in colour), lineType=cv2.LINE_AA)
        objects.append((cls, box, polygon))
    return image, objects


def write_split(root: Path, split: str, num_images: int, size: int, rng: np.random.Generator,
                first_image_id: int = 1) -> SyntheticSplit:
    images_dir = root / "images" / split
    images_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for k in range(num_images):
        image_id = first_image_id + k
        image, objects = render_image(rng, size)
        file_name = f"{image_id:06d}.jpg"
        cv2.imwrite(str(images_dir / file_name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
        images.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
        for cls, box, polygon in objects:
            w, h = float(box[2] - box[0]), float(box[3] - box[1])
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": cls + 1,
                "bbox": [round(float(box[0]), 2), round(float(box[1]), 2), round(w, 2), round(h, 2)],
                "area": round(w * h, 2), "iscrowd": 0,
                "segmentation": [np.round(polygon, 2).reshape(-1).tolist()],
            })
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(SHAPE_CLASSES)]
    annotation_file = root / "annotations" / f"instances_{split}.json"
    annotation_file.parent.mkdir(parents=True, exist_ok=True)
    annotation_file.write_text(json.dumps({"info": {"description": "pgi_detect synthetic shapes"}, "licenses": [],
                                           "images": images, "annotations": annotations, "categories": categories}))
    return SyntheticSplit(annotation_file, images_dir, num_images, len(annotations))


def make_synthetic_coco(root: str | Path, num_train: int = 200, num_val: int = 50, img_size: int = 256,
                        seed: int = 0) -> dict[str, SyntheticSplit]:
    """Write `root/images/{train,val}/*.jpg` and `root/annotations/instances_{train,val}.json`; same seed, same files."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    train = write_split(root, "train", num_train, img_size, rng, first_image_id=1)
    val = write_split(root, "val", num_val, img_size, rng, first_image_id=num_train + 1)
    return {"train": train, "val": val}
