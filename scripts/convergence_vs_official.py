"""Whole training runs, ours vs the official trainer, scored the same way: a small convergence comparison.

For every model and seed: the official `train_dual.py` (yolov9) or `train.py` (gelan) on the dataset converted to
its YOLO layout, and `pgi-detect fit` with the shipped `experiments/<model>-coco.yaml` on the COCO JSON, both with
the official SGD recipe at nominal batch = batch (no accumulation), no augmentation, the same epochs and image size;
then both final EMA weights scored by our `validate` on the COCO JSON (train = val). It prints one table and writes
it as JSON. Runs go one after another (one thread each), so the timing of either side does not matter. The side
`ours-rounding` is ours with `data.official_rounding` (the official loader's truncated resize and half-pixel label
placement); `--sides ours-rounding` on an existing `--output` adds it to the runs there.

The official code is run from its folder (the `yolo9` package or a yolov9 checkout), never copied into this
repository: its train script is read, `nbs = 64` set to the requested nominal batch in a scratch copy next to the
runs, and started with the official venv's Python (see scripts/trajectory_vs_official.py for that venv).

    OMP_NUM_THREADS=1 .venv/bin/python scripts/convergence_vs_official.py \\
        --official-root /tmp/y9/yolo9-1.0.18/src/yolo9 --official-python /tmp/official-venv/bin/python \\
        --models gelan-t yolov9-t --seeds 0 1 2 --epochs 40 --img-size 256 --output /tmp/convergence
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "coco128"
SIDES = ["official", "ours", "ours-rounding"]
NO_AUGMENTATION_HYP = {"hsv_h": 0.0, "hsv_s": 0.0, "hsv_v": 0.0, "degrees": 0.0, "translate": 0.0, "scale": 0.0,
                       "shear": 0.0, "perspective": 0.0, "flipud": 0.0, "fliplr": 0.0, "mosaic": 0.0, "mixup": 0.0,
                       "copy_paste": 0.0}
# Ours without augmentation: the official keys above, and the albumentations steps, which the official loader
# skips with albumentations >= 2 (its Albumentations() fails to build and is left out).
OUR_NO_AUGMENTATION = {"mosaic": 0.0, "copy_paste": 0.0, "mixup": 0.0, "degrees": 0.0, "translate": 0.0,
                       "scale": 0.0, "shear": 0.0, "perspective": 0.0, "hsv_h": 0.0, "hsv_s": 0.0, "hsv_v": 0.0,
                       "fliplr": 0.0, "flipud": 0.0, "blur": 0.0, "median_blur": 0.0, "to_gray": 0.0, "clahe": 0.0}


def coco_split(data: Path) -> tuple[Path, Path]:
    annotations = next((data / "annotations").glob("instances_*.json"))
    return annotations, data / "images" / annotations.stem.replace("instances_", "")


def yolo_layout(data: Path, out: Path) -> Path:
    """The COCO split as the official loader reads it: images/ (links), labels/*.txt from the JSON boxes (crowd
    boxes left out, as our COCO reader does), classes in sorted category-id order; returns its data.yaml."""
    annotations, images_dir = coco_split(data)
    coco = json.loads(annotations.read_text())
    categories = sorted(c["id"] for c in coco["categories"])
    column = {c: i for i, c in enumerate(categories)}
    names = {c["id"]: c["name"] for c in coco["categories"]}
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    images = {image["id"]: image for image in coco["images"]}
    rows: dict[int, list[str]] = {image_id: [] for image_id in images}
    for a in coco["annotations"]:
        image, (x, y, w, h) = images[a["image_id"]], a["bbox"]
        if a.get("iscrowd", 0) or w <= 0 or h <= 0:
            continue
        W, H = image["width"], image["height"]
        rows[a["image_id"]].append(f"{column[a['category_id']]} {(x + w / 2) / W:.6f} {(y + h / 2) / H:.6f} "
                                   f"{w / W:.6f} {h / H:.6f}")
    listing = []
    for image_id, image in sorted(images.items()):
        link = out / "images" / image["file_name"]
        if not link.exists():
            link.symlink_to((images_dir / image["file_name"]).resolve())
        (out / "labels" / f"{Path(image['file_name']).stem}.txt").write_text("".join(r + "\n" for r in rows[image_id]))
        listing.append(f"./images/{image['file_name']}\n")
    (out / "train.txt").write_text("".join(listing))
    yaml_path = out / "data.yaml"
    yaml_path.write_text(f"path: {out}\ntrain: train.txt\nval: train.txt\nnc: {len(categories)}\n"
                         f"names: {json.dumps([names[c] for c in categories])}\n")
    return yaml_path


def official_command(args: argparse.Namespace, model: str, seed: int, data_yaml: Path, out: Path) -> list[str]:
    script = "train_dual.py" if model.startswith("yolov9") else "train.py"
    source = (args.official_root / script).read_text()
    if "nbs = 64" not in source:
        raise SystemExit(f"{args.official_root / script}: no `nbs = 64` line to set the nominal batch in")
    patched = out / f"official_{script}"
    patched.write_text(source.replace("nbs = 64", f"nbs = {args.nominal_batch_size}"))
    import yaml

    hyp = yaml.safe_load((args.official_root / "data" / "hyps" / "hyp.scratch-high.yaml").read_text())
    hyp.update(NO_AUGMENTATION_HYP)
    hyp_path = out / "hyp.no-augmentation.yaml"
    hyp_path.write_text(yaml.safe_dump(hyp))
    return [args.official_python, str(patched), "--data", str(data_yaml), "--hyp", str(hyp_path),
            "--cfg", str(args.official_root / "models" / "detect" / f"{model}.yaml"), "--weights", "",
            "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--img", str(args.img_size),
            "--device", "cpu", "--workers", "1", "--seed", str(seed), "--noval", "--noplots", "--close-mosaic", "0",
            "--min-items", "0", "--project", str(out), "--name", "official", "--exist-ok"]


def data_overrides(args: argparse.Namespace) -> list[str]:
    annotations, images = coco_split(args.data)
    return [f"--data.train={annotations}", f"--data.train_images={images}", f"--data.val={annotations}",
            f"--data.val_images={images}", f"--data.img_size={args.img_size}", "--data.pin_memory=false"]


def our_command(args: argparse.Namespace, model: str, seed: int, out: Path, official_rounding: bool) -> list[str]:
    rounding = ["--data.official_rounding=true"] if official_rounding else []
    return [sys.executable, "-m", "pgi_detect.cli.commands", "fit", "--config", str(REPO / "experiments" / f"{model}-coco.yaml"),
            *data_overrides(args), f"--data.batch_size={args.batch_size}", "--data.num_workers=1",
            "--data.augmentation=" + json.dumps(OUR_NO_AUGMENTATION), f"--data.seed={seed}",
            f"--seed_everything={seed}", f"--model.optim.nominal_batch_size={args.nominal_batch_size}",
            f"--trainer.max_epochs={args.epochs}", f"--trainer.check_val_every_n_epoch={args.epochs}",
            "--trainer.num_sanity_val_steps=0", "--trainer.accelerator=cpu", "--trainer.precision=32-true",
            f"--trainer.default_root_dir={out}",
            "--trainer.logger=" + json.dumps({"class_path": "lightning.pytorch.loggers.CSVLogger",
                                              "init_args": {"save_dir": str(out)}}), *rounding]


def score(args: argparse.Namespace, model: str, weights: list[str], out: Path) -> tuple[float, float]:
    """Our `validate` on the COCO JSON: (mAP, mAP50)."""
    import torch

    from pgi_detect.cli.main import build_cli

    torch.set_num_threads(1)
    cli = build_cli(["validate", "--config", str(REPO / "experiments" / f"{model}-coco.yaml"), *data_overrides(args),
                     "--data.num_workers=0", "--trainer.accelerator=cpu", "--trainer.precision=32-true",
                     "--trainer.logger=false", f"--trainer.default_root_dir={out}", *weights])
    metrics = cli.trainer.callback_metrics
    return float(metrics["val/mAP"]), float(metrics["val/mAP50"])


def print_table(results: dict[str, list[float]], models: list[str], seeds: list[int]) -> None:
    """Markdown: official and ours per model and seed, ours-rounding as extra columns where it was run."""
    sides = ["ours"] + (["ours-rounding"] if any(key.endswith("/ours-rounding") for key in results) else [])
    print("\n| model | seed | official mAP / mAP50 |" + "".join(f" {s} mAP / mAP50 | {s} / official |" for s in sides))
    print("|---" * (3 + 2 * len(sides)) + "|")
    for model in models:
        ratios: dict[str, list[float]] = {side: [] for side in sides}
        for seed in seeds:
            theirs = results.get(f"{model}/{seed}/official")
            if not theirs:
                continue
            cells = [f"{theirs[0]:.3f} / {theirs[1]:.3f}"]
            for side in sides:
                mine = results.get(f"{model}/{seed}/{side}")
                if mine:
                    ratios[side].append(mine[0] / theirs[0] if theirs[0] else float("nan"))
                    cells += [f"{mine[0]:.3f} / {mine[1]:.3f}", f"{ratios[side][-1]:.2f}"]
                else:
                    cells += ["", ""]
            print(f"| {model} | {seed} | " + " | ".join(cells) + " |")
        means = [f"{sum(r) / len(r):.2f}" if r else "" for r in ratios.values()]
        print(f"| {model} | mean | |" + "".join(f" | {mean} |" for mean in means))


def run(command: list[str], log: Path, env: dict[str, str] | None = None) -> str:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as stream:
        result = subprocess.run(command, stdout=stream, stderr=subprocess.STDOUT, env=env, check=False)
    text = log.read_text()
    if result.returncode != 0:
        raise SystemExit(f"{command[1]} failed ({result.returncode}); see {log}:\n{text[-3000:]}")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official-root", type=Path, required=True, help="folder holding train.py / train_dual.py")
    parser.add_argument("--official-python", default=sys.executable, help="the Python that can import it")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="COCO folder (annotations/, images/)")
    parser.add_argument("--models", nargs="+", default=["gelan-t", "yolov9-t"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--img-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--nominal-batch-size", type=int, default=8)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--sides", nargs="+", default=["official", "ours"], choices=SIDES,
                        help="ours-rounding: ours with data.official_rounding (the official loader's resize and label "
                             "rounding); a rerun with only the missing sides adds them to --output's results")
    args = parser.parse_args(argv)
    args.official_root = args.official_root.resolve()
    data_yaml = yolo_layout(args.data, args.output / "yolo-layout")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled",
           "PYTHONPATH": os.pathsep.join([str(args.official_root), str(args.official_root.parent)])}
    results_path = args.output / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    for model in args.models:
        for seed in args.seeds:
            for side in args.sides:
                key = f"{model}/{seed}/{side}"
                if key in results:
                    continue  # a rerun continues where it stopped
                out = args.output / model / f"seed{seed}" / side
                out.mkdir(parents=True, exist_ok=True)
                print(f"{key}: training", flush=True)
                if side == "official":
                    run(official_command(args, model, seed, data_yaml, out), out / "train.log", env)
                    weights = [f"--model.weights={out / 'official' / 'weights' / 'last.pt'}"]
                else:
                    run(our_command(args, model, seed, out, side == "ours-rounding"), out / "train.log",
                        {**os.environ, "OMP_NUM_THREADS": "1"})
                    weights = [f"--ckpt_path={out / 'checkpoints' / 'last.ckpt'}"]
                results[key] = score(args, model, weights, out / "score")
                results_path.write_text(json.dumps(results, indent=1))
                print(f"{key}: mAP {results[key][0]:.3f} mAP50 {results[key][1]:.3f}", flush=True)
    print_table(results, args.models, args.seeds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
