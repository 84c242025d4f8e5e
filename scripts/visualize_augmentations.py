"""Write a PNG grid of augmented training samples with their boxes drawn, to eyeball that boxes follow pixels.

    python scripts/visualize_augmentations.py --train data/coco128/annotations/instances_train2017.json \
        --out aug_grid.png --num 8 --img-size 640 [--no-mosaic]
"""
from __future__ import annotations

import argparse
import math

import cv2
import numpy as np

from pgi_detect.data.pipeline.dataset import DetectionDataset
from pgi_detect.data.formats.sources import load_source

COLOURS = [(255, 56, 56), (56, 255, 56), (56, 56, 255), (255, 157, 151), (255, 178, 29), (72, 249, 10),
           (0, 194, 255), (132, 56, 255), (255, 55, 199), (26, 147, 52)]


def draw_sample(sample: dict, class_names: list[str]) -> np.ndarray:
    image = np.ascontiguousarray(sample["image"].numpy().transpose(1, 2, 0))
    for box, cls in zip(sample["boxes"], sample["classes"]):
        colour = COLOURS[int(cls) % len(COLOURS)]
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(image, (x1, y1), (x2, y2), colour, 2)
        cv2.putText(image, class_names[int(cls)], (x1, max(y1 - 3, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1)
    cv2.putText(image, sample["pipeline"], (5, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2)
    return image


def make_grid(tiles: list[np.ndarray], columns: int) -> np.ndarray:
    h, w = tiles[0].shape[:2]
    rows = math.ceil(len(tiles) / columns)
    grid = np.full((rows * h, columns * w, 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        grid[r * h:(r + 1) * h, c * w:(c + 1) * w] = tile
    return grid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", required=True, help="COCO json or YOLO folder")
    parser.add_argument("--images", default=None)
    parser.add_argument("--out", default="augmentations.png")
    parser.add_argument("--num", type=int, default=8)
    parser.add_argument("--columns", type=int, default=4)
    parser.add_argument("--img-size", type=int, default=640)
    parser.add_argument("--tile", type=int, default=320, help="tile size in the PNG")
    parser.add_argument("--no-mosaic", action="store_true", help="show the close-mosaic (letterbox) pipeline")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    source = load_source(args.train, args.images)
    dataset = DetectionDataset(source, args.img_size, train=True, seed=args.seed)
    dataset.set_mosaic(not args.no_mosaic)
    rng = np.random.default_rng(args.seed)
    tiles = []
    for index in rng.choice(len(dataset), size=min(args.num, len(dataset)), replace=False):
        tile = draw_sample(dataset[int(index)], source.class_names)
        tiles.append(cv2.resize(tile, (args.tile, args.tile), interpolation=cv2.INTER_AREA))
    grid = make_grid(tiles, args.columns)
    cv2.imwrite(args.out, cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    print(f"wrote {args.out} ({len(tiles)} samples)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
