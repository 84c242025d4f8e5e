"""Time COCO box evaluation: pycocotools vs faster-coco-eval on coco128 with synthetic detections, and the
evaluation reports built on top (per-class table, curves, confusion matrix, plots).

Usage: python scripts/bench_eval.py [--annotations PATH] [--repeats 5] [--dets-per-image 100]
       python scripts/bench_eval.py --reports --replicate 40 --repeats 1 --backends faster   # COCO-val sized
"""
from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import tempfile
import time
from pathlib import Path

from pgi_detect.evaluation import CocoEvaluation, evaluate_detections, score_detections

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


def replicated(gt: dict, copies: int) -> dict:
    """The annotation file `copies` times over, with new image and annotation ids (a COCO-val-sized set from
    coco128 at 40 copies: 5120 images)."""
    if copies <= 1:
        return gt
    step_image = max(img["id"] for img in gt["images"]) + 1
    step_ann = max(ann["id"] for ann in gt["annotations"]) + 1
    images = [{**img, "id": img["id"] + k * step_image} for k in range(copies) for img in gt["images"]]
    annotations = [{**ann, "id": ann["id"] + k * step_ann, "image_id": ann["image_id"] + k * step_image}
                   for k in range(copies) for ann in gt["annotations"]]
    return {**gt, "images": images, "annotations": annotations}


def time_reports(gt: dict, dets: list[dict]) -> None:
    """One evaluation as the validation end runs it (arrays kept), then the reports and their files."""
    from pgi_detect.evaluation.plots import save_report_plots  # matplotlib: only for --reports
    from pgi_detect.evaluation.report import build_report

    categories = sorted(gt["categories"], key=lambda c: c["id"])
    image_ids = [img["id"] for img in gt["images"]]
    start = time.perf_counter()
    scores = score_detections(gt, dets, "faster", image_ids)
    scored = time.perf_counter() - start
    evaluation = CocoEvaluation(scores.stats, dets, image_ids, scores.arrays)
    start = time.perf_counter()
    report = build_report(evaluation, gt, "val", [c["name"] for c in categories], [c["id"] for c in categories])
    built = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        save_report_plots(report, folder)
        plotted = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"reports: evaluation {scored:.2f} s, report (2 matching passes, curves, confusion) {built:.2f} s, "
          f"5 plots {plotted:.2f} s; peak RSS {peak:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--annotations", type=Path, default=DEFAULT_ANN)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dets-per-image", type=int, default=100)
    parser.add_argument("--replicate", type=int, default=1, help="copies of the annotation file (40: COCO-val size)")
    parser.add_argument("--backends", nargs="+", default=["pycocotools", "faster"])
    parser.add_argument("--reports", action="store_true", help="also time the evaluation reports")
    args = parser.parse_args()
    gt = replicated(json.loads(args.annotations.read_text()), args.replicate)
    dets = synthetic_detections(gt, args.dets_per_image)
    print(f"{len(gt['images'])} images, {len(gt['annotations'])} gt boxes, {len(dets)} detections")
    for backend in args.backends:
        evaluate_detections(gt, dets, backend=backend)  # warm-up (imports, caches)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            metrics = evaluate_detections(gt, dets, backend=backend)
            times.append(time.perf_counter() - start)
        print(f"{backend:12s} median {statistics.median(times) * 1000:8.1f} ms  "
              f"(min {min(times) * 1000:.1f})  AP {metrics['AP']:.6f}  AP50 {metrics['AP50']:.6f}")
    if args.reports:
        time_reports(gt, dets)


if __name__ == "__main__":
    main()
