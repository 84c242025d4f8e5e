"""`make demo`: synthetic shapes dataset -> train gelan-t on CPU -> COCO evaluation -> predictions -> metrics.

    python scripts/demo.py [--max-epochs N] [--data-dir demo_data] [--runs-dir demo_runs]

Runs the same code paths as `pgi-detect fit/validate` with experiments/demo-synthetic.yaml; takes a few minutes
on two CPU cores and needs no network (wandb is not used).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "experiments" / "demo-synthetic.yaml"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=REPO / "demo_data")
    parser.add_argument("--runs-dir", type=Path, default=REPO / "demo_runs")
    parser.add_argument("--num-train", type=int, default=200)
    parser.add_argument("--num-val", type=int, default=50)
    parser.add_argument("--max-epochs", type=int, default=None, help="default: the config's")
    parser.add_argument("--num-predict", type=int, default=2, help="val images to draw predictions on")
    args, overrides = parser.parse_known_args(argv)  # everything else goes to pgi-detect, e.g. --model.optim.lr0=0.003
    args.overrides = overrides
    return args


def make_data(data_dir: Path, num_train: int, num_val: int) -> None:
    from pgi_detect.data import make_synthetic_coco

    start = time.perf_counter()
    splits = make_synthetic_coco(data_dir, num_train=num_train, num_val=num_val, img_size=256, seed=0)
    print(f"[demo] synthetic data in {data_dir}: {splits['train'].num_images} train / {splits['val'].num_images} val "
          f"images ({time.perf_counter() - start:.1f} s)")


def train(args: argparse.Namespace):
    from pgi_detect.cli.main import build_cli

    data = args.data_dir
    cli_args = [
        "fit", "--config", str(CONFIG),
        f"--data.train={data / 'annotations' / 'instances_train.json'}", f"--data.train_images={data / 'images' / 'train'}",
        f"--data.val={data / 'annotations' / 'instances_val.json'}", f"--data.val_images={data / 'images' / 'val'}",
        f"--trainer.default_root_dir={args.runs_dir}", f"--trainer.logger.init_args.save_dir={args.runs_dir}",
    ]
    if args.max_epochs is not None:
        cli_args.append(f"--trainer.max_epochs={args.max_epochs}")
    cli_args += list(args.overrides)
    # A previous demo's checkpoints would make Lightning write best-v1.ckpt and evaluate the wrong "best".
    shutil.rmtree(args.runs_dir / "checkpoints", ignore_errors=True)
    start = time.perf_counter()
    cli = build_cli(cli_args)
    print(f"[demo] training took {time.perf_counter() - start:.0f} s")
    return cli


def predict(checkpoint: str, data_dir: Path, output_dir: Path, count: int, img_size: int) -> list[Path]:
    """Draw predictions of the trained checkpoint on the first `count` validation images."""
    from pgi_detect.data import decode_image
    from pgi_detect.inference import Predictor
    from pgi_detect.inference.draw import save_rgb_image

    predictor = Predictor.from_checkpoint(checkpoint, img_size=img_size)
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in sorted((data_dir / "images" / "val").glob("*.jpg"))[:count]:
        image = decode_image(path)
        found = predictor(image)
        canvas = found.draw(image)
        target = output_dir / f"{path.stem}_pred.jpg"
        save_rgb_image(canvas, str(target))
        names = ", ".join(f"{n} {s:.2f}" for n, s in zip(found.class_names, found.scores.tolist()))
        print(f"[demo] {path.name}: {len(found)} detections ({names}) -> {target}")
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "offline")
    make_data(args.data_dir, args.num_train, args.num_val)
    cli = train(args)
    trainer, task, datamodule = cli.trainer, cli.model, cli.datamodule
    checkpoint = trainer.checkpoint_callback.best_model_path or trainer.checkpoint_callback.last_model_path
    # Evaluate the saved checkpoint (EMA weights) the way `pgi-detect validate` does: stripped + fused model.
    results = trainer.validate(task, datamodule=datamodule, ckpt_path=checkpoint, verbose=False)[0]
    metrics = {k: float(v) for k, v in results.items() if k.startswith("val/")}
    predict(checkpoint, args.data_dir, args.runs_dir / "predictions", args.num_predict, datamodule.img_size)
    print(f"[demo] checkpoint: {checkpoint}")
    print("[demo] validation metrics (COCO, {} images):".format(len(task.last_eval.get("image_ids", []))))
    for name in ("val/mAP", "val/mAP50", "val/mAP75", "val/mAP_small", "val/mAP_medium", "val/mAP_large",
                 "val/fitness"):
        if name in task.last_eval.get("undefined", ()):
            # COCO's -1: no ground truth of that size among the val images (0 in the logs)
            print(f"    {name:<16} undefined (no ground-truth boxes of that size)")
        elif name in metrics:
            print(f"    {name:<16} {metrics[name]:.4f}")
    return metrics


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "src"))  # also works without the editable install
    main()
