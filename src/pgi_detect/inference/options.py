"""Command-line options that `detect` and `export` share: the NMS settings, given as flags and used as one
`NMSSettings` object."""
from __future__ import annotations

import argparse

from pgi_detect.geometry import NMS_DETECT, NMSSettings


def add_nms_arguments(parser: argparse.ArgumentParser, defaults: NMSSettings = NMS_DETECT) -> None:
    """--conf, --iou, --max-det and --multi-label, defaulting to `defaults` (detect.py's)."""
    parser.add_argument("--conf", type=float, default=defaults.conf_thres, help="score threshold")
    parser.add_argument("--iou", type=float, default=defaults.iou_thres, help="NMS IoU threshold")
    parser.add_argument("--max-det", type=int, default=defaults.max_det, help="boxes kept per image")
    parser.add_argument("--multi-label", action="store_true", default=defaults.multi_label,
                        help="a box may be kept for several classes")


def nms_settings(args: argparse.Namespace) -> NMSSettings:
    return NMSSettings(float(args.conf), float(args.iou), bool(args.multi_label), int(args.max_det))
