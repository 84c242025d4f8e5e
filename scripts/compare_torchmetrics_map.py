"""Can torchmetrics' own `MeanAveragePrecision` (faster-coco-eval backend) replace `CocoDetectionMetric`?

Scores the same detections three ways, on coco128 (real COCO ground truth: dataset category ids 1..90 with gaps,
10 crowd regions, segmentation areas) and on the same set as a 5-rank DistributedSampler visits it (2 images repeated
to pad the ranks):

- pycocotools on the COCO result list (the reference, like the official val.py),
- `CocoDetectionMetric` (ours), fed per-image rows in visit order,
- torchmetrics `MeanAveragePrecision(backend="faster_coco_eval")`, fed one preds/target dict per visit, with the
  dataset category ids as labels and the COCO `iscrowd` and `area` of each ground-truth box.

Usage: python scripts/compare_torchmetrics_map.py [--annotations PATH] [--world-size 5]
Prints one line per case and backend (AP, AP50, APs, AR100, the largest difference to pycocotools, time).
"""
from __future__ import annotations

import argparse
import json
import random
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DistributedSampler

from pgi_detect.evaluation import STAT_NAMES, CocoDetectionMetric, evaluate_detections

DEFAULT_ANN = Path(__file__).resolve().parents[2] / "shared/data/coco128/annotations/instances_train2017.json"
# MeanAveragePrecision's keys in the order of COCOeval.stats (= STAT_NAMES).
MAP_KEYS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_1", "mar_10", "mar_100",
            "mar_small", "mar_medium", "mar_large")


def perturbed_detections(gt: dict, seed: int = 0) -> list[dict]:
    """Ground truth jittered, some boxes dropped, some classes wrong, random false positives, and boxes inside the
    crowd regions (which COCO ignores). bbox rounded to 3 decimals and scores to 5, like the official val.py."""
    rng = random.Random(seed)
    category_ids = [c["id"] for c in gt["categories"]]
    images = [img["id"] for img in gt["images"]]
    dets = []
    for ann in gt["annotations"]:
        if rng.random() < 0.15:
            continue
        x, y, w, h = ann["bbox"]
        if ann.get("iscrowd", 0):  # a few detections inside the crowd region
            for _ in range(3):
                dets.append({"image_id": ann["image_id"], "category_id": ann["category_id"],
                             "bbox": [x + rng.uniform(0, w / 2), y + rng.uniform(0, h / 2), w / 3, h / 3],
                             "score": rng.random()})
            continue
        jitter = [rng.gauss(0, 0.08) for _ in range(4)]
        category = ann["category_id"] if rng.random() > 0.1 else rng.choice(category_ids)
        dets.append({"image_id": ann["image_id"], "category_id": category,
                     "bbox": [x + jitter[0] * w, y + jitter[1] * h, w * (1 + jitter[2]), h * (1 + jitter[3])],
                     "score": rng.random()})
    for _ in range(300):
        dets.append({"image_id": rng.choice(images), "category_id": rng.choice(category_ids),
                     "bbox": [rng.uniform(0, 400), rng.uniform(0, 300), rng.uniform(5, 200), rng.uniform(5, 200)],
                     "score": rng.random() * 0.5})
    for det in dets:
        det["bbox"] = [round(v, 3) for v in det["bbox"]]
        det["score"] = round(det["score"], 5)
    return dets


def sampler_visits(image_ids: list[int], world_size: int) -> list[int]:
    """The images every rank of a DistributedSampler (no shuffle) visits, rank after rank: padding repeats some."""
    visits = []
    for rank in range(world_size):
        sampler = DistributedSampler(range(len(image_ids)), num_replicas=world_size, rank=rank, shuffle=False)
        visits += [image_ids[index] for index in sampler]
    return visits


def per_image(gt: dict, dets: list[dict]) -> tuple[dict[int, list[dict]], dict[int, list[dict]]]:
    truths: dict[int, list[dict]] = {img["id"]: [] for img in gt["images"]}
    found: dict[int, list[dict]] = {img["id"]: [] for img in gt["images"]}
    for ann in gt["annotations"]:
        truths[ann["image_id"]].append(ann)
    for det in dets:
        found[det["image_id"]].append(det)
    return truths, found


def xyxy(boxes: list[list[float]]) -> torch.Tensor:
    tensor = torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4)
    return torch.cat([tensor[:, :2], tensor[:, :2] + tensor[:, 2:]], 1)


def torchmetrics_map(gt: dict, dets: list[dict], visits: list[int], coco_thresholds: bool) -> dict[str, float]:
    """MeanAveragePrecision's 12 statistics. Its default IoU and recall thresholds are float32 values
    (`torch.linspace(...).tolist()`, e.g. 0.6000000238); `coco_thresholds` passes COCOeval's float64 ones instead."""
    from torchmetrics.detection import MeanAveragePrecision  # the subject of this comparison, not used elsewhere

    thresholds = {}
    if coco_thresholds:
        thresholds = {"iou_thresholds": np.linspace(0.5, 0.95, 10).tolist(),
                      "rec_thresholds": np.linspace(0.0, 1.0, 101).tolist()}
    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="faster_coco_eval", **thresholds)
    truths, found = per_image(gt, dets)
    for image_id in visits:
        pred = {"boxes": xyxy([d["bbox"] for d in found[image_id]]),
                "scores": torch.tensor([d["score"] for d in found[image_id]], dtype=torch.float64),
                "labels": torch.tensor([d["category_id"] for d in found[image_id]], dtype=torch.long)}
        target = {"boxes": xyxy([a["bbox"] for a in truths[image_id]]),
                  "labels": torch.tensor([a["category_id"] for a in truths[image_id]], dtype=torch.long),
                  "iscrowd": torch.tensor([a.get("iscrowd", 0) for a in truths[image_id]], dtype=torch.long),
                  "area": torch.tensor([float(a["area"]) for a in truths[image_id]], dtype=torch.float64)}
        metric.update([pred], [target])
    result = metric.compute()
    return {name: max(float(result[key]), 0.0) for name, key in zip(STAT_NAMES, MAP_KEYS)}


def our_metric(gt: dict, dets: list[dict], visits: list[int]) -> dict[str, float]:
    category_ids = sorted(c["id"] for c in gt["categories"])
    index_of = {c: i for i, c in enumerate(category_ids)}
    _, found = per_image(gt, dets)
    metric = CocoDetectionMetric("faster")
    for image_id in visits:
        rows = [[*d["bbox"][:2], d["bbox"][0] + d["bbox"][2], d["bbox"][1] + d["bbox"][3], d["score"],
                 index_of[d["category_id"]]] for d in found[image_id]]
        metric.update([torch.tensor(rows, dtype=torch.float64).reshape(-1, 6)], torch.tensor([image_id]))
    metric.ground_truth, metric.category_ids = gt, category_ids
    return metric.compute().stats


def compare(gt: dict, world_size: int) -> list[dict]:
    """One record per (case, scorer): the 12 statistics and the largest difference to pycocotools."""
    dets = perturbed_detections(gt)
    image_ids = [img["id"] for img in gt["images"]]
    reference = evaluate_detections(gt, dets, "pycocotools")
    cases = {"each image once": image_ids, f"DistributedSampler x{world_size}": sampler_visits(image_ids, world_size)}
    records = []
    for case, visits in cases.items():
        scorers = (("CocoDetectionMetric", our_metric),
                   ("MAP, default thresholds", partial(torchmetrics_map, coco_thresholds=False)),
                   ("MAP, COCO thresholds", partial(torchmetrics_map, coco_thresholds=True)))
        for name, scorer in scorers:
            start = time.perf_counter()
            stats = scorer(gt, dets, visits)
            seconds = time.perf_counter() - start
            difference = max(abs(stats[key] - reference[key]) for key in STAT_NAMES)
            records.append({"case": case, "scorer": name, "visits": len(visits), "stats": stats,
                            "max_difference": difference, "seconds": seconds})
    records.insert(0, {"case": "reference", "scorer": "pycocotools", "visits": len(image_ids), "stats": reference,
                       "max_difference": 0.0, "seconds": float("nan")})
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotations", type=Path, default=DEFAULT_ANN)
    parser.add_argument("--world-size", type=int, default=5)
    args = parser.parse_args()
    gt = json.loads(args.annotations.read_text())
    crowd = sum(a.get("iscrowd", 0) for a in gt["annotations"])
    print(f"{len(gt['images'])} images, {len(gt['annotations'])} boxes ({crowd} crowd), "
          f"{len(gt['categories'])} categories, ids {min(c['id'] for c in gt['categories'])}.."
          f"{max(c['id'] for c in gt['categories'])}")
    for record in compare(gt, args.world_size):
        stats = record["stats"]
        print(f"{record['case']:26s} {record['scorer']:23s} visits {record['visits']:4d}  AP {stats['AP']:.6f}  "
              f"AP50 {stats['AP50']:.6f}  APs {stats['APs']:.6f}  AR100 {stats['AR100']:.6f}  "
              f"max |diff| {record['max_difference']:.2e}  {record['seconds'] * 1000:7.1f} ms")


if __name__ == "__main__":
    main()
