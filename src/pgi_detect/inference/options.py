"""Command-line options that `detect` and `export` share: the NMS settings, given as flags and used as one
`NMSSettings` object."""
from __future__ import annotations

import argparse

from pgi_detect.geometry import NMS_DETECT, NMSSettings
from pgi_detect.settings import AT_LEAST_ONE, PROBABILITY, SettingError, argument_type


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
