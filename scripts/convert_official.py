#!/usr/bin/env python
"""Convert official YOLOv9 / GELAN weights into a file pgi_detect loads (`pgi_detect.weights.load_detector`).

    python scripts/convert_official.py --weights yolov9-c.pt --strip --output gelan-c.pt

The official file is read with a restricted unpickler (no official code needed or imported). Which zoo model it holds
is read from its tensors; `--model` insists on one (an error lists what does not fit).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pgi_detect.models import count_parameters, list_models
from pgi_detect.weights import WeightsError, convert_official, identify_zoo_model, save_detector
from pgi_detect.weights.official import read_official_file


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True, help="official .pt (pickled model) or a state-dict file")
    parser.add_argument("--model", choices=list_models(),
                        help="architecture of the weights (default: recognised from the weights)")
    parser.add_argument("--strip", action="store_true", help="drop the PGI auxiliary branch (yolov9-x -> gelan-x)")
    parser.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="class count of the output model (default: the checkpoint's); a different value re-initialises "
        "only the class output convs, for fine-tuning",
    )
    parser.add_argument("--output", required=True, help="where to write the converted file")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        official = read_official_file(args.weights)
        model = args.model or identify_zoo_model(official.state, source=args.weights).model
        detector = convert_official(
            official.state, model, num_classes=args.num_classes, strip=args.strip, source=args.weights
        )
    except (WeightsError, FileNotFoundError) as error:
        print(error, file=sys.stderr)
        return 1
    names = official.class_names  # kept when they still describe the output classes
    save_detector(detector, args.output, class_names=names if names and len(names) == detector.num_classes else None)
    print(
        f"wrote {args.output}: {detector.name} (from {model}), nc={detector.num_classes}, "
        f"{count_parameters(detector):,} params"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
