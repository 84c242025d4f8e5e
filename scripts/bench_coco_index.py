"""The cost of a COCO-sized annotation index: cold load, warm load (on-disk index cache), peak RSS, worker memory.

Generates (once, outside the repo) a synthetic annotation file the size of COCO train2017: 118,287 images and
887,153 annotations with 12-point polygons (about 313 MB), whose images cycle through a few real JPEGs so the
DataLoader can decode them. Then, each in a fresh process (peak RSS is per process):

* `json.load` of the file (the yardstick), and optionally pycocotools' `COCO()`;
* cold `load_source` (no index cache: parse + index + write the cache);
* warm `load_source` (the index read back from the cache);
* 4 DataLoader workers drawing `--samples` training samples (mosaic recipe): each worker's private memory
  (Private_Dirty of /proc/PID/smaps_rollup, see private_mb) after its first batch and at the end.

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python scripts/bench_coco_index.py --root /tmp/coco-index-bench
    ... --scale 0.05          # a 5 % file for a quick run

The index cache lives in a folder of its own under --root (PGI_DETECT_CACHE_DIR), cleared before the cold run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

FULL_IMAGES = 118_287
FULL_ANNOTATIONS = 887_153
POLYGON_POINTS = 12
IMAGE_SIZE = (480, 640)  # (h, w) of every image
DISTINCT_IMAGES = 16
CATEGORY_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]  # COCO's 80 ids


def generate(root: Path, scale: float, seed: int = 0) -> Path:
    """Write root/annotations/instances_train.json and root/images/*.jpg (skipped when already there)."""
    target = root / "annotations" / f"instances_train_{scale:g}.json"
    if target.is_file():
        return target
    import cv2

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    height, width = IMAGE_SIZE
    for k in range(DISTINCT_IMAGES):
        noise = cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), (0, 0), 3)
        cv2.imwrite(str(root / "images" / f"{k:02d}.jpg"), noise, [cv2.IMWRITE_JPEG_QUALITY, 90])
    num_images = max(1, round(FULL_IMAGES * scale))
    num_annotations = max(1, round(FULL_ANNOTATIONS * scale))
    owners = np.sort(rng.integers(0, num_images, num_annotations))
    tmp = target.with_suffix(".tmp")
    with open(tmp, "w") as out:
        out.write('{"info": {"description": "synthetic COCO-sized file"}, "licenses": [], "images": [')
        out.write(",".join(json.dumps({"id": i + 1, "file_name": f"{i % DISTINCT_IMAGES:02d}.jpg", "width": width,
                                       "height": height}) for i in range(num_images)))
        out.write('], "annotations": [')
        chunk = 20_000
        for start in range(0, num_annotations, chunk):
            n = min(chunk, num_annotations - start)
            centre = rng.uniform([40, 40], [width - 40, height - 40], (n, 2))
            radius = rng.uniform(5, 40, (n, 1))
            angles = np.sort(rng.uniform(0, 2 * np.pi, (n, POLYGON_POINTS)), axis=1)
            wobble = rng.uniform(0.6, 1.0, (n, POLYGON_POINTS))
            xs = np.round(centre[:, :1] + radius * wobble * np.cos(angles), 2)
            ys = np.round(centre[:, 1:] + radius * wobble * np.sin(angles), 2)
            categories = rng.choice(CATEGORY_IDS, n)
            parts = []
            for j in range(n):
                x, y = xs[j], ys[j]
                x1, y1, x2, y2 = x.min(), y.min(), x.max(), y.max()
                polygon = np.stack([x, y], 1).ravel().tolist()
                parts.append(json.dumps({
                    "id": start + j + 1, "image_id": int(owners[start + j]) + 1, "category_id": int(categories[j]),
                    "segmentation": [polygon], "area": round(float((x2 - x1) * (y2 - y1)) * 0.7, 2),
                    "bbox": [round(float(x1), 2), round(float(y1), 2), round(float(x2 - x1), 2),
                             round(float(y2 - y1), 2)], "iscrowd": 0}))
            out.write(("," if start else "") + ",".join(parts))
        out.write('], "categories": [')
        out.write(",".join(json.dumps({"id": c, "name": f"class{c}", "supercategory": "x"}) for c in CATEGORY_IDS))
        out.write("]}")
    tmp.replace(target)
    return target


# ------------------------------------------------------------------------------------------------ child processes


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def private_mb(pid: int) -> float:
    """Memory a process owns alone: its written private pages (Private_Dirty: heap, and pages copied on write from
    the parent). Private_Clean is left out: it counts pages of a memory-mapped file (the index cache) that only this
    process has touched so far, which stay in the page cache shared with every process mapping the file."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        fields[name] = int(value.split()[0])
    return fields.get("Private_Dirty", 0) / 1024


def child_json(path: str) -> dict:
    start = time.perf_counter()
    with open(path, "rb") as f:
        data = json.load(f)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_rss_mb": peak_rss_mb(), "annotations": len(data["annotations"])}


def child_pycocotools(path: str) -> dict:
    from pycocotools.coco import COCO

    start = time.perf_counter()
    COCO(path)
    return {"seconds": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb()}


def current_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child_load(path: str, images: str) -> dict:
    from pgi_detect.data import load_source

    imports_mb = current_rss_mb()  # torch, OpenCV, albumentations...: the same for every approach
    start = time.perf_counter()
    source = load_source(path, images, on_bad_sample="skip")
    seconds = time.perf_counter() - start
    objects = int(sum(r.num_objects for r in source.records)) if len(source.records) < 5000 else None
    return {"seconds": seconds, "peak_rss_mb": peak_rss_mb(), "rss_after_imports_mb": imports_mb,
            "rss_after_load_mb": current_rss_mb(), "images": len(source.records), "objects": objects}


def child_workers(path: str, images: str, samples: int, img_size: int, workers: int) -> dict:
    import torch
    from torch.utils.data import DataLoader

    from pgi_detect.data import DetectionDataset, collate_detections, load_source

    source = load_source(path, images, on_bad_sample="skip")
    dataset = DetectionDataset(source, img_size, train=True)
    del source
    batch_size = 8
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                        collate_fn=collate_detections, generator=torch.Generator().manual_seed(0))
    iterator = iter(loader)
    next(iterator)
    pids = [w.pid for w in iterator._workers]
    time.sleep(1.0)
    first = {pid: private_mb(pid) for pid in pids}
    drawn = batch_size
    start = time.perf_counter()
    while drawn < samples:
        next(iterator)
        drawn += batch_size
    seconds = time.perf_counter() - start
    last = {pid: private_mb(pid) for pid in pids}
    growth = [last[p] - first[p] for p in pids]
    result = {"samples": drawn, "images_per_s": (drawn - batch_size) / seconds, "parent_peak_rss_mb": peak_rss_mb(),
              "worker_private_first_mb": [round(first[p]) for p in pids],
              "worker_private_last_mb": [round(last[p]) for p in pids],
              "worker_private_growth_mb": [round(g) for g in growth]}
    del iterator
    return result


def run_child(args: list[str], env: dict[str, str]) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *args], env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"child {args[0]} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def describe_load(found: dict) -> str:
    return (f"{found['seconds']:6.1f} s, peak RSS {found['peak_rss_mb']:6.0f} MB (after the imports "
            f"{found['rss_after_imports_mb']:.0f} MB, after loading {found['rss_after_load_mb']:.0f} MB)")


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, *rest = sys.argv[2:]
        functions = {"json": child_json, "pycocotools": child_pycocotools, "load": child_load,
                     "workers": lambda p, i, s, z, w: child_workers(p, i, int(s), int(z), int(w))}
        print(json.dumps(functions[kind](*rest)))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("/tmp/coco-index-bench"), help="outside the repo")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the COCO train2017 size")
    parser.add_argument("--samples", type=int, default=2000, help="training samples drawn by the workers")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--img-size", type=int, default=640)
    parser.add_argument("--pycocotools", action="store_true", help="also time pycocotools COCO()")
    parser.add_argument("--skip", nargs="*", default=[], choices=["json", "cold", "warm", "workers"])
    args = parser.parse_args(argv)
    start = time.perf_counter()
    path = generate(args.root, args.scale)
    images = str(args.root / "images")
    print(f"{path} ({path.stat().st_size / 1e6:.0f} MB; generated/found in {time.perf_counter() - start:.0f} s); "
          f"{platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)
    cache = args.root / "index-cache"
    env = {**os.environ, "PGI_DETECT_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1"}
    results = {}
    if "json" not in args.skip:
        results["json.load"] = run_child(["json", str(path)], env)
        print(f"json.load:          {results['json.load']['seconds']:6.1f} s, peak RSS "
              f"{results['json.load']['peak_rss_mb']:6.0f} MB", flush=True)
    if args.pycocotools:
        results["pycocotools"] = run_child(["pycocotools", str(path)], env)
        print(f"pycocotools COCO(): {results['pycocotools']['seconds']:6.1f} s, peak RSS "
              f"{results['pycocotools']['peak_rss_mb']:6.0f} MB", flush=True)
    if "cold" not in args.skip:
        shutil.rmtree(cache, ignore_errors=True)
        results["cold"] = run_child(["load", str(path), images], env)
        ratio = (f" ({results['cold']['seconds'] / results['json.load']['seconds']:.2f}x json.load)"
                 if "json.load" in results else "")
        print(f"cold load_source:   {describe_load(results['cold'])}{ratio}", flush=True)
    if "warm" not in args.skip:
        results["warm"] = run_child(["load", str(path), images], env)
        print(f"warm load_source:   {describe_load(results['warm'])}", flush=True)
    if "workers" not in args.skip:
        found = run_child(["workers", str(path), images, str(args.samples), str(args.img_size), str(args.workers)],
                          env)
        results["workers"] = found
        print(f"{args.workers} workers, {found['samples']} samples at {args.img_size} "
              f"({found['images_per_s']:.1f} img/s): private MB after the first batch "
              f"{found['worker_private_first_mb']}, at the end {found['worker_private_last_mb']}, growth "
              f"{found['worker_private_growth_mb']} (parent peak RSS {found['parent_peak_rss_mb']:.0f} MB)",
              flush=True)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
