"""The decoded-image cache under multi-process training: R processes (as DDP ranks on one node, LOCAL_RANK 0..R-1)
with W DataLoader workers each read the same training set through DetectionDataModule (mosaic on), with
`data.cache_images` false, ram or disk.

For each set-up it prints `ranks=R workers=W cache=C copies=X img/s=Y img/cpu-s=Z`: copies = how much the summed
PSS (proportional set size, /proc/<pid>/smaps_rollup) of every rank and worker grew over the same set-up without a
cache, divided by the bytes of one decoded set; img/s and img/cpu-s = training samples of the second epoch per
wall-clock second (all ranks) and per CPU-second (ranks and workers together).

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_image_cache.py --ranks 2 --workers 2 --cache disk ram
    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_image_cache.py --annotations a.json --images imgs/ --img-size 640

Without --annotations it generates a synthetic set (--num-images at --source-size px) in a temporary folder.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def pss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def family(pid: int) -> list[int]:
    """`pid` and all its descendants (a rank and its DataLoader workers)."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                queue += [int(child) for child in (task / "children").read_text().split()]
            except OSError:
                continue
    return found


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError):
            continue
    return total / CLOCK_TICKS


def rank_main(args: argparse.Namespace) -> int:
    """One 'rank': two epochs through the training loader, the second timed; then it reports and waits."""
    from pgi_detect.data import DetectionDataModule

    module = DetectionDataModule(train=args.annotations, train_images=args.images, img_size=args.img_size,
                                 batch_size=args.batch_size, num_workers=args.workers, persistent_workers=True,
                                 cache_images=None if args.cache == "false" else args.cache, seed=0)
    module.setup("fit")
    loader = module.train_dataloader()
    for _ in loader:  # epoch 0: workers start, caches are warm
        pass
    me = family(os.getpid())
    cpu_before, start, samples = cpu_seconds(me), time.perf_counter(), 0
    for batch in loader:
        samples += len(batch["images"])
    wall = time.perf_counter() - start
    cpu = cpu_seconds(family(os.getpid())) - cpu_before
    cache = module.dataset("train").images.cache
    Path(args.report).write_text(json.dumps({"samples": samples, "wall": wall, "cpu": cpu,
                                             "cache_bytes": cache.nbytes if cache is not None else 0}))
    while not Path(args.release).exists():  # the parent measures memory while the workers are alive
        time.sleep(0.2)
    return 0


def run_setup(args: argparse.Namespace, cache: str, scratch: Path) -> dict:
    processes, reports = [], []
    release = scratch / f"release-{cache}"
    for rank in range(args.ranks):
        report = scratch / f"report-{cache}-{rank}.json"
        report.unlink(missing_ok=True)
        reports.append(report)
        command = [sys.executable, __file__, "--rank-worker", "--annotations", str(args.annotations), "--images",
                   str(args.images), "--img-size", str(args.img_size), "--batch-size", str(args.batch_size),
                   "--workers", str(args.workers), "--cache", cache, "--report", str(report),
                   "--release", str(release)]
        env = dict(os.environ, LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
        processes.append(subprocess.Popen(command, env=env))
    try:
        while not all(r.exists() for r in reports):
            if any(p.poll() not in (None, 0) for p in processes):
                raise SystemExit(f"a rank failed (cache {cache})")
            time.sleep(0.2)
        time.sleep(0.5)
        pss = sum(pss_bytes(pid) for p in processes for pid in family(p.pid))
    finally:
        release.touch()
        for p in processes:
            p.wait()
        release.unlink(missing_ok=True)
    results = [json.loads(r.read_text()) for r in reports]
    return {"pss": pss, "samples": sum(r["samples"] for r in results), "wall": max(r["wall"] for r in results),
            "cpu": sum(r["cpu"] for r in results), "cache_bytes": max(r["cache_bytes"] for r in results)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--annotations", type=Path, help="COCO JSON (default: a generated set)")
    parser.add_argument("--images", type=Path)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cache", nargs="+", default=["disk", "ram"], choices=["ram", "disk", "false"])
    parser.add_argument("--img-size", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-images", type=int, default=96)
    parser.add_argument("--source-size", type=int, default=1024)
    parser.add_argument("--rank-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--report", help=argparse.SUPPRESS)
    parser.add_argument("--release", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank_worker:
        args.cache = args.cache[0]
        return rank_main(args)
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        os.environ.setdefault("PGI_DETECT_CACHE_DIR", str(scratch / "cache"))
        if args.annotations is None:
            from pgi_detect.data import make_synthetic_coco

            splits = make_synthetic_coco(scratch / "data", num_train=args.num_images, num_val=1,
                                         img_size=args.source_size, seed=0)
            args.annotations, args.images = splits["train"].annotation_file, splits["train"].images_dir
        baseline = run_setup(args, "false", scratch)
        print(f"ranks={args.ranks} workers={args.workers} cache=false copies=0 "
              f"img/s={baseline['samples'] / baseline['wall']:.1f} "
              f"img/cpu-s={baseline['samples'] / max(baseline['cpu'], 1e-9):.1f}", flush=True)
        for cache in [c for c in args.cache if c != "false"]:
            result = run_setup(args, cache, scratch)
            copies = (result["pss"] - baseline["pss"]) / max(result["cache_bytes"], 1)
            print(f"ranks={args.ranks} workers={args.workers} cache={cache} copies={copies:.2f} "
                  f"img/s={result['samples'] / result['wall']:.1f} "
                  f"img/cpu-s={result['samples'] / max(result['cpu'], 1e-9):.1f} "
                  f"(one decoded set {result['cache_bytes'] / 2**20:.1f} MiB)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
