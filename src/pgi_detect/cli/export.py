"""`pgi-detect export`: ONNX export of a checkpoint (or an untrained zoo model) from the command line, with an optional
onnxruntime check (`pgi_detect.inference.export` does the work)."""
from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from pgi_detect.cli.options import add_nms_arguments, argument_type, nms_settings
from pgi_detect.inference.export import DEFAULT_OPSET, VERIFY_TOLERANCE, _image_shape, export_onnx, verify_onnx
from pgi_detect.models import build_model, inference_copy
from pgi_detect.settings import AT_LEAST_ONE
from pgi_detect.weights import WeightsError, read_weights

DESCRIPTION = "ONNX export of the deployable detector (auxiliary branch stripped, BN folded, RepConvN merged)."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pgi-detect export", description=DESCRIPTION)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="DetectionTask .ckpt, a detector file, an official .pt, or a pretrained "
                        "name (gelan-c, yolov9-c, yolov9-c-converted, ...)")
    source.add_argument("--model", help="zoo name: export an untrained model (for deployment tests)")
    parser.add_argument("--num-classes", type=argument_type(AT_LEAST_ONE), default=80, help="with --model")
    parser.add_argument("--output", help="target .onnx (default: next to the checkpoint, or <model>.onnx)")
    parser.add_argument("--img-size", type=argument_type(AT_LEAST_ONE), nargs="+", default=[640],
                        help="traced size: S or H W (rounded up to multiples of 32)")
    parser.add_argument("--batch-size", type=argument_type(AT_LEAST_ONE), default=1, help="traced batch size")
    parser.add_argument("--static-batch", action="store_true", help="fix the batch dimension")
    parser.add_argument("--dynamic-shape", action="store_true", help="symbolic height and width")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    parser.add_argument("--nms", action="store_true", help="include NMS; output (K, 7) detections")
    add_nms_arguments(parser)
    parser.add_argument("--verify", action="store_true", help="compare onnxruntime with PyTorch (raw export)")
    return parser


def export_main(argv: Sequence[str] | None = None) -> int:
    """`pgi-detect export ...`: load a checkpoint (or build a zoo model) and write ONNX. Returns the exit status
    (the console script passes it to sys.exit)."""
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    if args.checkpoint:
        try:
            loaded = read_weights(args.checkpoint)
        except (WeightsError, FileNotFoundError) as error:
            print(f"pgi-detect export: {error}", file=sys.stderr)
            return 1
        detector, names, category_ids = loaded.detector, loaded.class_names, loaded.category_ids
        output = Path(args.output or Path(args.checkpoint).with_suffix(".onnx"))
    else:
        detector, names, category_ids = build_model(args.model, num_classes=args.num_classes), None, None
        output = Path(args.output or f"{args.model}.onnx")
    if args.verify and importlib.util.find_spec("onnxruntime") is None:
        print("pgi-detect export: --verify needs onnxruntime (pip install 'pgi-detect[export]')", file=sys.stderr)
        return 1
    img_size = args.img_size[0] if len(args.img_size) == 1 else tuple(args.img_size[:2])
    model = inference_copy(detector)  # stripped + fused once, for both the export and the check
    path = export_onnx(
        model, output, img_size, prepare=False, dynamic_batch=not args.static_batch, dynamic_shape=args.dynamic_shape,
        batch_size=args.batch_size, opset=args.opset, nms=args.nms, nms_settings=nms_settings(args),
        class_names=names, category_ids=category_ids,
    )
    print(f"exported {path} ({'NMS inside' if args.nms else 'raw predictions'}, opset {args.opset})")
    if args.verify:
        height, width = _image_shape(img_size, int(max(getattr(detector, "strides", (32,)))))
        images = torch.rand(max(args.batch_size, 1), 3, height, width, generator=torch.Generator().manual_seed(0))
        settings = nms_settings(args) if args.nms else None
        diff = verify_onnx(path, model, images, prepare=False, nms_settings=settings)
        what = "detections" if args.nms else "raw predictions"
        print(f"onnxruntime vs PyTorch ({what}, random images): max abs difference {diff:.3g}")
        if diff > VERIFY_TOLERANCE:
            print(f"pgi-detect export: {path}: onnxruntime disagrees with PyTorch ({diff:.3g} > {VERIFY_TOLERANCE})",
                  file=sys.stderr)
            return 1
    return 0
