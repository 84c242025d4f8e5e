"""`detect`: predict any image / folder / video with a checkpoint, without a dataset config (Predictor +
run_prediction). Complements the LightningCLI `predict`, which runs on a configured datamodule split.

    python -m pgi_detect.cli.detect --checkpoint best.ckpt --source street.jpg clips/ --output runs/detect
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence

from pgi_detect.text import class_count
from pgi_detect.cli.options import add_nms_arguments, argument_type, check_device, nms_settings
from pgi_detect.inference.predictor import Predictor
from pgi_detect.inference.runner import PredictionRun, run_prediction
from pgi_detect.settings import AT_LEAST_ONE, Range, SettingError

IMAGE_SIZE = Range(32, step=32)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pgi-detect detect", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True,
                        help="DetectionTask .ckpt, a detector file, an official .pt, or a pretrained name (gelan-c, ...)")
    parser.add_argument("--source", nargs="+", required=True, help="image files, folders and/or video files")
    parser.add_argument("--output", default="runs/detect", help="folder for predictions.json, images/, videos/")
    parser.add_argument("--img-size", type=argument_type(IMAGE_SIZE), default=640,
                        help="long side the images are letterboxed to (a multiple of 32)")
    add_nms_arguments(parser)
    parser.add_argument("--classes", type=int, nargs="+", help="keep only these class ids")
    parser.add_argument("--batch-size", type=argument_type(AT_LEAST_ONE), default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--half", action="store_true", help="float16 network on CUDA")
    parser.add_argument("--channels-last", action="store_true", help="NHWC memory format (faster on CPU)")
    parser.add_argument("--no-images", action="store_true", help="do not write annotated images")
    parser.add_argument("--no-videos", action="store_true", help="do not write annotated videos")
    parser.add_argument("--no-json", action="store_true", help="do not write predictions.json")
    parser.add_argument("--progress-every", type=argument_type(AT_LEAST_ONE), default=100, metavar="N",
                        help="without a terminal: a progress line every N images (default 100)")
    return parser


def detect(argv: Sequence[str] | None = None) -> PredictionRun:
    """Parse `detect` arguments, predict, write the outputs and return what was written."""
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    check_device(args.device)
    predictor = Predictor.from_checkpoint(
        args.checkpoint, device=args.device, img_size=args.img_size, nms=nms_settings(args),
        classes=args.classes, batch_size=args.batch_size,
        half=args.half, channels_last=args.channels_last,
    )
    if args.classes:
        count = predictor.model.spec.num_classes
        unknown = sorted(set(args.classes) - set(range(count)))
        if unknown:
            raise SettingError(f"--classes {' '.join(map(str, unknown))}: {args.checkpoint} has {class_count(count)} "
                               f"(0-{count - 1})")
    run = run_prediction(
        predictor, args.source, args.output, save_json=not args.no_json, save_images=not args.no_images,
        save_videos=not args.no_videos, progress=True, progress_every=args.progress_every,
    )
    skipped = f", {len(run.skipped)} unreadable input(s) skipped" if run.skipped else ""
    print(f"{run.frames} images/frames, {run.detections} detections{skipped} -> {run.output_dir}")
    return run


def detect_main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (exit status 0), e.g. for an EXTRA_COMMANDS entry in pgi_detect.cli.commands."""
    detect(argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(detect_main())
