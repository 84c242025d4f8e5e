"""Build the synthetic shapes dataset (COCO JSON) used by the demo and tests.

    python scripts/make_synthetic_dataset.py --out data/synthetic --train 200 --val 50 --size 256 --seed 0
"""
from __future__ import annotations

import argparse
import time

from pgi_detect.data.synthetic import make_synthetic_coco


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data/synthetic")
    parser.add_argument("--train", type=int, default=200)
    parser.add_argument("--val", type=int, default=50)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    splits = make_synthetic_coco(args.out, args.train, args.val, args.size, args.seed)
    for name, split in splits.items():
        print(f"{name}: {split.num_images} images, {split.num_objects} objects -> {split.annotation_file}")
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
