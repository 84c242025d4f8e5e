"""Full vs reduced-scale JPEG decoding (data.decode_reduced) of large photos, resized to the training size: time per
image and the pixel difference of the result.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_decode.py --size 4000 3000 --img-size 640 --repeat 10
    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_decode.py --images my_photos/ --img-size 640

Without --images it writes one synthetic photo (gradients, shapes and sensor-like noise) of --size at JPEG quality 90.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from pgi_detect.data.images.decode import (decode_for_target, decode_image, reduction_factor, resize_from,
                                    resize_long_side)


def synthetic_photo(path: Path, width: int, height: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([x / width * 200, y / height * 200, 128 + 90 * np.sin(x / 97) * np.cos(y / 71)], -1)
    for _ in range(40):
        center = (int(rng.integers(width)), int(rng.integers(height)))
        cv2.circle(image, center, int(rng.integers(20, height // 6)), rng.uniform(0, 255, 3).tolist(), -1)
    image += rng.normal(0, 6, image.shape)  # sensor noise: JPEG has real high-frequency content to decode
    cv2.imwrite(str(path), np.clip(image, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 90])
    return path


def median_ms(function, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, help="a folder of JPEGs (default: one synthetic photo)")
    parser.add_argument("--size", type=int, nargs=2, default=(4000, 3000), metavar=("W", "H"))
    parser.add_argument("--img-size", type=int, default=640)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory() as scratch:
        paths = (sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg")) if args.images
                 else [synthetic_photo(Path(scratch) / "photo.jpg", *args.size)])
        full_ms, reduced_ms, mean_diff, max_diff = [], [], [], []
        for path in paths:
            def full():
                return resize_long_side(decode_image(path), args.img_size, augment=True)

            def reduced():
                image, size = decode_for_target(path, None, None, args.img_size)
                return resize_from(image, size, args.img_size, augment=True)

            a, b = full().astype(np.int16), reduced().astype(np.int16)
            mean_diff.append(float(np.abs(a - b).mean()))
            max_diff.append(int(np.abs(a - b).max()))
            full_ms.append(median_ms(full, args.repeat))
            reduced_ms.append(median_ms(reduced, args.repeat))
        height, width = decode_image(paths[0]).shape[:2]
        print(f"{len(paths)} JPEG(s), first {width}x{height}, target {args.img_size}, "
              f"scale 1/{reduction_factor(height, width, args.img_size)}")
        print(f"full decode + resize     {statistics.median(full_ms):8.1f} ms/image")
        print(f"reduced decode + resize  {statistics.median(reduced_ms):8.1f} ms/image  "
              f"(x{statistics.median(full_ms) / statistics.median(reduced_ms):.2f})")
        print(f"pixel difference (0-255): mean {statistics.mean(mean_diff):.2f}, max {max(max_diff)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
