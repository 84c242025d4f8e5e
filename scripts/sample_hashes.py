"""Refactoring check for the data pipeline: a hash of every third training sample of two epochs (mosaic on, mosaic
off) and of every third evaluation sample, for coco128 (COCO JSON with polygons: copy-paste and mixup raised so
they occur often) and coco128-val-yolo (YOLO txt). Write the hashes before a change, compare after: a change that
should not move any pixel, box or field must give 516 of 516 equal.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/sample_hashes.py --write /tmp/before.json
    OMP_NUM_THREADS=1 .venv/bin/python scripts/sample_hashes.py --compare /tmp/before.json
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch

from pgi_detect.data import DetectionDataset, load_source

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
RECIPE = {"mixup": 0.3, "copy_paste": 0.5}


def digest(sample: dict) -> str:
    h = hashlib.sha1()
    for key in sorted(sample):
        value = sample[key]
        h.update(key.encode())
        if isinstance(value, torch.Tensor):
            h.update(value.numpy().tobytes())
        elif isinstance(value, np.ndarray):
            h.update(value.tobytes())
        else:
            h.update(repr(value).encode())
    return h.hexdigest()


def hashes(shared: Path, img_size: int) -> dict[str, list[str]]:
    coco = shared / "coco128"
    sources = {"coco128": load_source(coco / "annotations" / "instances_train2017.json", coco / "images" / "train2017"),
               "coco128-val-yolo": load_source(shared / "coco128-val-yolo")}
    out = {}
    for name, source in sources.items():
        for mode in ("mosaic", "no-mosaic", "eval"):
            train = mode != "eval"
            dataset = DetectionDataset(source, img_size, train=train, augmentation=RECIPE if train else None, seed=7,
                                       on_bad_sample="skip")
            dataset.set_mosaic(mode == "mosaic")
            keys = [(epoch, index) for epoch in (0, 1) for index in range(0, len(dataset), 3)]
            out[f"{name}/{mode}"] = [digest(dataset[key] if train else dataset[key[1]]) for key in keys]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", type=Path)
    action.add_argument("--compare", type=Path)
    parser.add_argument("--shared", type=Path, default=SHARED)
    parser.add_argument("--img-size", type=int, default=160)
    args = parser.parse_args()
    current = hashes(args.shared, args.img_size)
    if args.write:
        args.write.write_text(json.dumps(current))
        print(f"wrote {sum(map(len, current.values()))} sample hashes to {args.write}")
        return 0
    before = json.loads(args.compare.read_text())
    total = equal = 0
    for key, values in before.items():
        same = sum(a == b for a, b in zip(values, current.get(key, [])))
        total, equal = total + len(values), equal + same
        print(f"{key:<28} {same} / {len(values)} equal")
    print(f"{equal} of {total} samples equal")
    return 0 if equal == total else 1


if __name__ == "__main__":
    sys.exit(main())
