"""The paper's PGI ablation on your own model and data: one main network trained without an auxiliary branch and
with each auxiliary form (and the lead-guided assignment), same data, seed and recipe, in one table.

Every run is `pgi-detect fit` with the given config (a zoo config from experiments/, or your own) and
`--model.auxiliary <form>` / `--model.assignment lead`; its final EMA weights are scored by `pgi-detect validate` on
the validation split. Cost is measured apart, in a fresh process per form: the median time of a training step
(forward, loss, backward, on a random batch of the config's size) and the peak resident memory it adds, each
relative to the model without an auxiliary branch. Parameters: the training model's and what inference runs (the
stripped, fused model: the same for every form).

    OMP_NUM_THREADS=1 .venv/bin/python scripts/ablate_pgi.py --config experiments/gelan-t-coco.yaml \\
        --data ../shared/data/coco128 --epochs 20 --img-size 160 --seeds 0 1 --output /tmp/ablate-gelan-t

`--set KEY=VALUE` passes further options to every fit (e.g. `--set model.backbone.init_args.model_name=resnet18`).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "coco128"
VARIANTS = {  # label -> (auxiliary, assignment)
    "none": (None, "independent"),
    "deep_supervision": ("deep_supervision", "independent"),
    "fpn": ("fpn", "independent"),
    "reversible": ("reversible", "independent"),
    "reversible+lead": ("reversible", "lead"),
}


@dataclass(frozen=True)
class Variant:
    label: str
    auxiliary: str | None
    assignment: str

    def options(self) -> list[str]:
        return [f"--model.auxiliary={self.auxiliary if self.auxiliary else 'null'}",
                f"--model.assignment={self.assignment}"]


def data_options(data: Path, img_size: int) -> list[str]:
    """A COCO folder as train and val (`annotations/instances_*.json` and `images/<split>`)."""
    annotations = sorted((data / "annotations").glob("instances_*.json"))
    train = next((a for a in annotations if "train" in a.stem), annotations[0])
    val = next((a for a in annotations if "val" in a.stem), train)
    options = []
    for split, path in (("train", train), ("val", val)):
        options += [f"--data.{split}={path}", f"--data.{split}_images={data / 'images' / path.stem.split('_', 1)[1]}"]
    return [*options, f"--data.img_size={img_size}"]


def fit_command(args: argparse.Namespace, variant: Variant, seed: int, out: Path) -> list[str]:
    return [sys.executable, "-m", "pgi_detect.cli.commands", "fit", "--config", str(args.config),
            *data_options(args.data, args.img_size), f"--data.batch_size={args.batch_size}",
            f"--data.seed={seed}", f"--seed_everything={seed}", f"--trainer.max_epochs={args.epochs}",
            f"--trainer.check_val_every_n_epoch={args.epochs}", "--trainer.num_sanity_val_steps=0",
            "--trainer.accelerator=cpu", "--trainer.precision=32-true", f"--trainer.default_root_dir={out}",
            "--trainer.logger=" + json.dumps({"class_path": "lightning.pytorch.loggers.CSVLogger",
                                              "init_args": {"save_dir": str(out)}}),
            *variant.options(), *(f"--{item}" for item in args.set)]


def score(args: argparse.Namespace, checkpoint: Path) -> tuple[float, float]:
    """`validate` of a checkpoint with the run's config: (mAP, mAP50)."""
    import torch

    from pgi_detect.cli.main import build_cli

    torch.set_num_threads(1)
    cli = build_cli(["validate", "--config", str(args.config), *data_options(args.data, args.img_size),
                     "--data.num_workers=0", "--trainer.accelerator=cpu", "--trainer.precision=32-true",
                     "--trainer.logger=false", f"--trainer.default_root_dir={checkpoint.parent.parent / 'score'}",
                     *(f"--{item}" for item in args.set), f"--ckpt_path={checkpoint}"])
    metrics = cli.trainer.callback_metrics
    return float(metrics["val/mAP"]), float(metrics["val/mAP50"])


def measure_cost(args: argparse.Namespace, variant: Variant) -> dict[str, float]:
    """Step time, added peak memory and parameter counts, in a fresh process (its own memory high-water mark)."""
    command = [sys.executable, __file__, "--measure", json.dumps(vars(variant)), "--config", str(args.config),
               "--data", str(args.data), "--img-size", str(args.img_size), "--batch-size", str(args.batch_size),
               *(part for item in args.set for part in ("--set", item))]
    result = subprocess.run(command, capture_output=True, text=True, check=False,
                            env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    if result.returncode != 0:
        raise SystemExit(f"measuring {variant.label} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure_here(args: argparse.Namespace, variant: Variant, steps: int = 6) -> dict[str, float]:
    """The `--measure` child: build the task from the config, time forward + loss + backward on a random batch."""
    import torch

    from pgi_detect.cli.main import build_cli
    from pgi_detect.models import count_parameters

    torch.set_num_threads(1)
    cli = build_cli(["--config", str(args.config), *data_options(args.data, args.img_size),
                     "--data.num_workers=0", "--trainer.logger=false", *(f"--{item}" for item in args.set),
                     *variant.options()], run=False)
    task = cli.model.train()
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 255, (args.batch_size, 3, args.img_size, args.img_size), generator=generator,
                           dtype=torch.uint8)
    boxes = 3 * args.batch_size
    targets = torch.cat([torch.arange(args.batch_size).repeat_interleave(3)[:, None].float(),
                         torch.randint(0, task.detector.num_classes, (boxes, 1), generator=generator).float(),
                         torch.rand(boxes, 2, generator=generator) * 0.6 + 0.2,
                         torch.rand(boxes, 2, generator=generator) * 0.3 + 0.05], 1)
    batch = {"images": images, "targets": targets}
    baseline = resident_bytes()
    times = []
    for step in range(steps + 1):
        start = time.perf_counter()
        loss = task.compute_loss(batch).total
        loss.backward()
        task.detector.zero_grad(set_to_none=True)
        if step:  # the first step warms caches up
            times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"step_s": statistics.median(times), "added_peak_bytes": max(peak - baseline, 0),
            "train_params": count_parameters(task.detector),
            "inference_params": count_parameters(task.detector.inference_copy())}


def resident_bytes() -> int:
    """This process's resident memory now (Linux /proc; 0 where it is not available)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=REPO / "experiments" / "gelan-t-coco.yaml")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="COCO folder (annotations/, images/)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--img-size", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more fit options")
    parser.add_argument("--output", type=Path, default=Path("runs/ablate-pgi"))
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one variant's cost, in a child process
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure_here(args, Variant(**json.loads(args.measure)))))
        return 0
    variants = [Variant(label, *VARIANTS[label]) for label in args.variants]
    results_path = args.output / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    for variant in variants:
        if f"{variant.label}/cost" not in results:
            results[f"{variant.label}/cost"] = measure_cost(args, variant)
            args.output.mkdir(parents=True, exist_ok=True)
            results_path.write_text(json.dumps(results, indent=1))
        for seed in args.seeds:
            key = f"{variant.label}/{seed}"
            if key in results:
                continue  # a rerun continues where it stopped
            out = args.output / variant.label / f"seed{seed}"
            print(f"{key}: training", flush=True)
            log = out / "fit.log"
            out.mkdir(parents=True, exist_ok=True)
            with log.open("w") as stream:
                code = subprocess.run(fit_command(args, variant, seed, out), stdout=stream, stderr=subprocess.STDOUT,
                                      env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
                                           "WANDB_MODE": "offline"}).returncode
            if code != 0:
                raise SystemExit(f"{key}: fit failed ({code}); see {log}")
            results[key] = score(args, out / "checkpoints" / "last.ckpt")
            results_path.write_text(json.dumps(results, indent=1))
            print(f"{key}: mAP {results[key][0]:.4f} mAP50 {results[key][1]:.4f}", flush=True)
    print_table(variants, args.seeds, results)
    return 0


def print_table(variants: list[Variant], seeds: list[int], results: dict) -> None:
    base = results[f"{variants[0].label}/cost"] if variants[0].auxiliary is None else None
    print("\n| variant | params train | params inference | step time | peak memory added | mAP | mAP50 |")
    print("|---|---|---|---|---|---|---|")
    for variant in variants:
        cost = results[f"{variant.label}/cost"]
        runs = [results[f"{variant.label}/{seed}"] for seed in seeds if f"{variant.label}/{seed}" in results]
        relative = (f"{cost['step_s'] / base['step_s']:.2f}x", f"{cost['added_peak_bytes'] / base['added_peak_bytes']:.2f}x") \
            if base else (f"{cost['step_s'] * 1000:.0f} ms", f"{cost['added_peak_bytes'] / 2**20:.0f} MiB")
        scores = [" / ".join(f"{r[i]:.3f}" for r in runs) for i in (0, 1)]
        print(f"| {variant.label} | {cost['train_params']:,} | {cost['inference_params']:,} | {relative[0]} | "
              f"{relative[1]} | {scores[0]} | {scores[1]} |")
    print(f"(seeds {', '.join(map(str, seeds))}: one score per seed; step time and memory relative to 'none')")


if __name__ == "__main__":
    sys.exit(main())
