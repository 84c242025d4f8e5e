"""Benchmark DetectionLoss (vectorised) against the naive per-image, per-gt oracle of the tests
(tests/helpers/reference_loss.py), after asserting that both give the same numbers.

    .venv/bin/python scripts/bench_loss.py [--batch 16] [--size 640] [--boxes 20] [--classes 80] [--repeats 7]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import Tensor

from pgi_detect.loss import DetectionLoss

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the oracle is a test helper
from helpers.reference_loss import naive_detection_loss, random_batch  # noqa: E402


def time_ms(fn, maps: list[list[Tensor]], repeats: int) -> float:
    """Median wall time of forward + backward, after one warm-up."""
    samples = []
    for i in range(repeats + 1):
        for level in (m for branch in maps for m in branch):
            level.grad = None
        start = time.perf_counter()
        loss, _ = fn()
        loss.backward()
        if i:
            samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--boxes", type=int, default=20)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, {args.size}x{args.size}, "
          f"{args.boxes} boxes/image, nc={args.classes}, median of {args.repeats} (forward+backward)")
    for name, num_branches in (("single (gelan)", 1), ("dual (yolov9)", 2)):
        maps, targets = random_batch(args.batch, args.size, args.boxes, args.classes, num_branches)
        loss_fn = DetectionLoss(args.classes)
        fast_loss, fast_items = loss_fn(maps, targets)
        naive_loss, naive_items = naive_detection_loss(maps, targets, args.classes)
        torch.testing.assert_close(fast_items, naive_items, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(fast_loss.detach(), naive_loss.detach(), rtol=1e-4, atol=1e-6)

        fast = time_ms(lambda: loss_fn(maps, targets), maps, args.repeats)
        naive = time_ms(lambda: naive_detection_loss(maps, targets, args.classes), maps, args.repeats)
        print(f"{name:15s} vectorised {fast:8.1f} ms   naive per-image {naive:8.1f} ms   speed-up x{naive / fast:.1f}"
              f"   (loss {fast_loss.item():.3f}, items {[round(v, 4) for v in fast_items.tolist()]})")


if __name__ == "__main__":
    main()
