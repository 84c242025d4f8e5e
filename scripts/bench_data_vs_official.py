"""Data pipeline, ours vs the official YOLOv9 `LoadImagesAndLabels`, back to back in one process on the same files.

The full training recipe at 640 (hyp.scratch-high: mosaic 1.0 + mixup 0.15 + copy-paste 0.3 + random perspective
+ albumentations + HSV + flips), one process, one thread, `--samples` samples per row and side, collated in
batches of 16; rows: mosaic on, mosaic off (close-mosaic: letterbox + perspective), evaluation letterbox. Rounds
are interleaved (official, ours, official, ours...) and pooled, so both see the same machine; throughput is per
CPU-second of the process (see `run`).

The official code is imported from a directory you give (the `yolov9/` folder of the `yolov9pip` 0.0.4 sdist, or
a WongKinYiu/yolov9 checkout), never copied; see scripts/bench_vs_official.py for setting it up:

    OMP_NUM_THREADS=1 PYTHONPATH=src /tmp/official-venv/bin/python scripts/bench_data_vs_official.py \
        --official-root /tmp/official/yolov9pip-0.0.4/yolov9 --data ../shared/data/coco128-val-yolo --rounds 2

The dataset is mirrored under --workdir with symlinks (the official loader writes a labels.cache next to the
labels folder; the shared data stays untouched). `--profile` adds a per-stage table (cProfile, inclusive times of
each stage's functions, ms per sample; profiling itself slows both sides down, so use it for shares only).
"""
from __future__ import annotations

import argparse
import cProfile
import importlib
import logging
import os
import pstats
import random
import shutil
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from pgi_detect.data import AugmentationConfig, DetectionDataset, collate_detections, load_source

REPO = Path(__file__).resolve().parents[1]
BATCH = 16
ROWS = ("mosaic on", "mosaic off", "eval letterbox")
# hyp.scratch-high's augmentation keys = our AugmentationConfig defaults
HYP_KEYS = ("mosaic", "mixup", "copy_paste", "degrees", "translate", "scale", "shear", "perspective", "hsv_h",
            "hsv_s", "hsv_v", "flipud", "fliplr")

# stage -> functions whose inclusive (cumulative) time it is: (file name ending, function name); '~' = builtin
STAGES = {
    # the official utils/general.py replaces cv2.imread by its own imread (np.fromfile + cv2.imdecode)
    "decode": {"ours": [("decode.py", "decode_image")], "official": [("general.py", "imread")]},
    "resize": {"ours": [("~", "resize")], "official": [("~", "resize")]},
    "mosaic (tiles on canvas)": {"ours": [("mosaic.py", "paint_mosaic4"), ("mosaic.py", "mosaic4_boxes"),
                                          ("mosaic.py", "mosaic4_segments")],
                                 "official": []},  # derived below
    "copy-paste": {"ours": [("transforms.py", "choose_copy_paste"), ("transforms.py", "paste_mirrored")],
                   "official": [("augmentations.py", "copy_paste")]},
    "perspective": {"ours": [("transforms.py", "random_perspective")],
                    "official": [("augmentations.py", "random_perspective")]},
    "mixup": {"ours": [("transforms.py", "mixup")], "official": [("augmentations.py", "mixup")]},
    "letterbox": {"ours": [("letterbox.py", "apply")], "official": [("augmentations.py", "letterbox")]},
    "albumentations": {"ours": [("transforms.py", "__call__")], "official": [("augmentations.py", "__call__")]},
    "HSV": {"ours": [("transforms.py", "augment_hsv")], "official": [("augmentations.py", "augment_hsv")]},
    "flip": {"ours": [("transforms.py", "flip_left_right"), ("transforms.py", "flip_up_down")],
             "official": [("_twodim_base_impl.py", "fliplr"), ("_twodim_base_impl.py", "flipud")]},
    "HWC -> CHW copy": {"ours": [("decode.py", "channels_first")], "official": [("~", "ascontiguousarray")]},
    "collate": {"ours": [("collate.py", "collate_detections")], "official": [("dataloaders.py", "collate_fn")]},
}


def mirror(data: Path, workdir: Path) -> Path:
    """workdir/images and workdir/labels with a symlink per file of `data` (images/, labels/, classes.yaml)."""
    shutil.rmtree(workdir, ignore_errors=True)
    for kind in ("images", "labels"):
        (workdir / kind).mkdir(parents=True)
        for file in sorted((data / kind).iterdir()):
            os.symlink(file.resolve(), workdir / kind / file.name)
    shutil.copy(data / "classes.yaml", workdir / "classes.yaml")
    return workdir


def official_datasets(root: Path, workdir: Path, img_size: int) -> dict[str, object]:
    sys.path.insert(0, str(root))
    dataloaders = importlib.import_module("utils.dataloaders")
    logging.getLogger("yolov5").setLevel(logging.WARNING)
    hyp = {key: getattr(AugmentationConfig(), key) for key in HYP_KEYS}
    build = dataloaders.LoadImagesAndLabels
    images = str(workdir / "images")
    return {
        "mosaic on": build(images, img_size, BATCH, augment=True, hyp=hyp),
        "mosaic off": build(images, img_size, BATCH, augment=True, hyp={**hyp, "mosaic": 0.0}),
        "eval letterbox": build(images, img_size, BATCH, augment=False, hyp=hyp),
    }


# The albumentations transforms of the recipe; the official code builds them with keyword arguments that
# albumentations 2 rejects, catches the error and runs without them.
ALBUMENTATIONS = ("blur", "median_blur", "to_gray", "clahe", "brightness_contrast", "gamma", "jpeg")


def our_datasets(workdir: Path, img_size: int, like_official: bool = False) -> dict[str, DetectionDataset]:
    source = load_source(workdir, on_bad_sample="skip")
    config = AugmentationConfig(**{name: 0.0 for name in ALBUMENTATIONS}) if like_official else AugmentationConfig()
    off = DetectionDataset(source, img_size, train=True, augmentation=config)
    off.set_mosaic(False)
    return {"mosaic on": DetectionDataset(source, img_size, train=True, augmentation=config), "mosaic off": off,
            "eval letterbox": DetectionDataset(source, img_size, train=False)}


def run(dataset, collate, indices: np.ndarray, seed: int) -> float:
    """CPU seconds of this process to draw and collate the samples at `indices` (batches of BATCH). CPU time, not
    wall time: on a machine shared with other jobs it leaves out the time the process waited for a core (both sides
    run single-threaded, so on an idle machine the two agree)."""
    random.seed(seed)
    np.random.seed(seed)
    start = time.process_time()
    for begin in range(0, len(indices), BATCH):
        collate([dataset[int(i)] for i in indices[begin:begin + BATCH]])
    return time.process_time() - start


def stage_times(stats: pstats.Stats, side: str, samples: int) -> dict[str, float]:
    """ms per sample of each stage, from a cProfile run of `samples` samples."""
    table = stats.stats  # type: ignore[attr-defined]

    def cumulative(file: str, name: str) -> float:
        total = 0.0
        for (filename, _, function), (_, _, _, cum, _) in table.items():
            builtin = filename == "~"
            if function == name and (file == "~" and builtin or not builtin and filename.endswith(file)):
                total += cum
            elif file == "~" and builtin and function.endswith((f".{name}>", f" {name}>")):  # '<built-in ...>'
                total += cum
        return total

    times = {stage: sum(cumulative(*f) for f in functions[side]) for stage, functions in STAGES.items()}
    if side == "official":  # load_mosaic minus what it calls that has its own row
        mosaic = cumulative("dataloaders.py", "load_mosaic")
        times["mosaic (tiles on canvas)"] = max(0.0, mosaic - cumulative("dataloaders.py", "load_image")
                                                - times["copy-paste"] - times["perspective"]) if mosaic else 0.0
    times["total"] = max(v[3] for v in table.values())
    return {stage: 1000 * t / samples for stage, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official-root", type=Path, required=True, help="directory holding utils/dataloaders.py")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "coco128-val-yolo")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench-data-vs-official"))
    parser.add_argument("--img-size", type=int, default=640)
    parser.add_argument("--samples", type=int, default=128, help="samples per row, side and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    parser.add_argument("--profile", action="store_true", help="also print the per-stage table")
    parser.add_argument("--like-official", action="store_true",
                        help="turn off our albumentations transforms, as the official code runs under albumentations 2 "
                             "(a same-work comparison; not the recipe)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cv2.setNumThreads(0)
    workdir = mirror(args.data, args.workdir)
    sides = {"official": official_datasets(args.official_root.resolve(), workdir, args.img_size),
             "ours": our_datasets(workdir, args.img_size, args.like_official)}
    collate = {"official": sides["official"]["mosaic on"].collate_fn, "ours": collate_detections}  # type: ignore
    n = len(sides["ours"]["mosaic on"])
    print(f"{n} images from {args.data}, {args.img_size}, {args.samples} samples x {args.rounds} rounds per row, "
          f"batches of {BATCH}, 1 process, torch {torch.get_num_threads()} thread, OpenCV threads "
          f"{cv2.getNumThreads()}, load average {os.getloadavg()[0]:.1f}", flush=True)
    seconds = {(row, side): 0.0 for row in args.rows for side in sides}
    for round_index in range(args.rounds):
        indices = np.random.default_rng(round_index).integers(0, n, args.samples)
        for row in args.rows:
            for side in sides:
                run(sides[side][row], collate[side], indices[:BATCH], seed=99)  # warm-up
                took = run(sides[side][row], collate[side], indices, seed=round_index)
                seconds[(row, side)] += took
                print(f"  round {round_index + 1} {row:<15} {side:<9} {args.samples / took:6.1f} img/CPU-s", flush=True)
    total = args.samples * args.rounds
    print(f"\n{'row':<15} {'official img/CPU-s':>18} {'ours img/CPU-s':>15} {'ours/official':>14}")
    for row in args.rows:
        theirs, ours = total / seconds[(row, "official")], total / seconds[(row, "ours")]
        print(f"{row:<15} {theirs:18.1f} {ours:15.1f} {ours / theirs:13.2f}x")
    if args.profile:
        profile(args, sides, collate, n)
    return 0


def profile(args: argparse.Namespace, sides: dict, collate: dict, n: int) -> None:
    indices = np.random.default_rng(123).integers(0, n, args.samples)
    for row in args.rows:
        found = {}
        for side in sides:
            profiler = cProfile.Profile()
            profiler.enable()
            run(sides[side][row], collate[side], indices, seed=7)
            profiler.disable()
            found[side] = stage_times(pstats.Stats(profiler), side, args.samples)
        print(f"\n{row}: ms per sample under cProfile (inclusive; a stage's functions may call others' rows)")
        print(f"  {'stage':<26} {'official':>9} {'ours':>9}")
        for stage in [*STAGES, "total"]:
            print(f"  {stage:<26} {found['official'][stage]:9.2f} {found['ours'][stage]:9.2f}")


if __name__ == "__main__":
    raise SystemExit(main())
