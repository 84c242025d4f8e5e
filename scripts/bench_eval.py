"""Time COCO box evaluation: pycocotools vs faster-coco-eval on coco128 with synthetic detections.

Usage: python scripts/bench_eval.py [--annotations PATH] [--repeats 5] [--dets-per-image 100]
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

from pgi_detect.evaluation import evaluate_detections

DEFAULT_ANN = Path(__file__).resolve().parents[2] / "shared/data/coco128/annotations/instances_train2017.json"


def synthetic_detections(gt: dict, per_image: int, seed: int = 0) -> list[dict]:
    """Jittered ground truth plus random boxes, `per_image` detections per image (like an NMS max_det cap)."""
    rng = random.Random(seed)
    categories = [c["id"] for c in gt["categories"]]
    by_image: dict[int, list[dict]] = {img["id"]: [] for img in gt["images"]}
    for ann in gt["annotations"]:
        x, y, w, h = ann["bbox"]
        by_image[ann["image_id"]].append({"image_id": ann["image_id"], "category_id": ann["category_id"],
                                          "bbox": [x + rng.gauss(0, 2), y + rng.gauss(0, 2), w, h],
                                          "score": rng.random()})
    dets = []
    for image_id, items in by_image.items():
        while len(items) < per_image:
            items.append({"image_id": image_id, "category_id": rng.choice(categories),
                          "bbox": [rng.uniform(0, 500), rng.uniform(0, 400), rng.uniform(4, 200), rng.uniform(4, 200)],
                          "score": rng.random() * 0.3})
        dets.extend(items[:per_image])
    return dets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--annotations", type=Path, default=DEFAULT_ANN)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dets-per-image", type=int, default=100)
    args = parser.parse_args()
    gt = json.loads(args.annotations.read_text())
    dets = synthetic_detections(gt, args.dets_per_image)
    print(f"{len(gt['images'])} images, {len(gt['annotations'])} gt boxes, {len(dets)} detections")
    for backend in ("pycocotools", "faster"):
        evaluate_detections(gt, dets, backend=backend)  # warm-up (imports, caches)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            metrics = evaluate_detections(gt, dets, backend=backend)
            times.append(time.perf_counter() - start)
        print(f"{backend:12s} median {statistics.median(times) * 1000:8.1f} ms  "
              f"(min {min(times) * 1000:.1f})  AP {metrics['AP']:.6f}  AP50 {metrics['AP50']:.6f}")


if __name__ == "__main__":
    main()
