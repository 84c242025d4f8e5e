"""Throughput of the data pipelines in one process (= per DataLoader worker), images/s.

    python scripts/bench_data.py --train ../shared/data/coco128/annotations/instances_train2017.json \
        --img-size 640 --samples 256

Measures: training with mosaic (official recipe incl. mixup 0.15), training with mosaic off (close-mosaic),
evaluation letterbox; optionally with the RAM cache (--cache) to separate decoding from augmentation. Polygon labels
are loaded (copy-paste 0.3 + segment-aware warping in the mosaic pipeline) unless --no-segments.
"""
from __future__ import annotations

import argparse
import platform
import time

import numpy as np

from pgi_detect.data.pipeline.dataset import DetectionDataset
from pgi_detect.data.formats.sources import load_source


def images_per_second(dataset: DetectionDataset, samples: int, seed: int = 0) -> float:
    indices = np.random.default_rng(seed).integers(0, len(dataset), samples + 8)
    for i in indices[:8]:  # warm-up
        dataset[int(i)]
    start = time.perf_counter()
    for i in indices[8:]:
        dataset[int(i)]
    return samples / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", required=True)
    parser.add_argument("--images", default=None)
    parser.add_argument("--img-size", type=int, default=640)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--cache", action="store_true", help="also measure with decoded images cached in RAM")
    parser.add_argument("--no-segments", action="store_true",
                        help="do not load polygon labels (box-only mosaic: no copy-paste, corner-warped boxes)")
    args = parser.parse_args(argv)
    source = load_source(args.train, args.images, segments=not args.no_segments)
    print(f"{platform.processor() or platform.machine()}, {len(source.records)} images, size {args.img_size}, "
          f"{args.samples} samples per row, 1 process, segments {'off' if args.no_segments else 'on'}")
    for cache in ([False, True] if args.cache else [False]):
        train = DetectionDataset(source, args.img_size, train=True, cache_images=cache)
        train.cache_all()
        tag = " (cached)" if cache else ""
        print(f"train, mosaic on{tag}:  {images_per_second(train, args.samples):7.1f} img/s")
        train.set_mosaic(False)
        print(f"train, mosaic off{tag}: {images_per_second(train, args.samples):7.1f} img/s")
        evaluation = DetectionDataset(source, args.img_size, train=False, cache_images=cache)
        evaluation.cache_all()
        print(f"eval letterbox{tag}:    {images_per_second(evaluation, args.samples):7.1f} img/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
