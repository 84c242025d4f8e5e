"""Command-line options that the tools share (range-checked flags; `detect` and `export`: NMS): the NMS settings, given as flags and used as one
`NMSSettings` object."""
from __future__ import annotations

import argparse
from typing import Any

from pgi_detect.geometry import NMS_DETECT, NMSSettings
from pgi_detect.settings import AT_LEAST_ONE, PROBABILITY, Range, SettingError


def add_nms_arguments(parser: argparse.ArgumentParser, defaults: NMSSettings = NMS_DETECT) -> None:
    """--conf, --iou, --max-det and --multi-label, defaulting to `defaults` (detect.py's)."""
    parser.add_argument("--conf", type=argument_type(PROBABILITY, float), default=defaults.conf_thres,
                        help="score threshold")
    parser.add_argument("--iou", type=argument_type(PROBABILITY, float), default=defaults.iou_thres,
                        help="NMS IoU threshold")
    parser.add_argument("--max-det", type=argument_type(AT_LEAST_ONE), default=defaults.max_det,
                        help="boxes kept per image")
    parser.add_argument("--multi-label", action="store_true", default=defaults.multi_label,
                        help="a box may be kept for several classes")


def nms_settings(args: argparse.Namespace) -> NMSSettings:
    return NMSSettings(float(args.conf), float(args.iou), bool(args.multi_label), int(args.max_det))


def check_device(device: str) -> None:
    """A CUDA device asked for where there is none is one line, not torch's driver error at the first tensor."""
    import torch  # detect's parser is built before torch is needed (pgi-detect --help stays fast)

    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise SettingError(f"--device {device}: no CUDA device is available here; use --device cpu")


def argument_type(valid: Range, kind: type = int) -> Any:
    """An argparse `type=` that parses `kind` and rejects values outside `valid` (argparse then names the flag)."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a{'n integer' if kind is int else ' number'}, got {text!r}")
        problem = valid.problem(value)
        if problem is not None:
            raise argparse.ArgumentTypeError(problem)
        return value

    parse.__name__ = kind.__name__  # argparse's "invalid <name> value" wording
    return parse
