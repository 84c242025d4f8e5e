"""`pgi-detect check-data`: print what `pgi_detect.data.check` finds in a dataset; exit status 1 when it finds
problems."""
from __future__ import annotations

import argparse

from pgi_detect.cli.options import argument_type
from pgi_detect.data.check import check_dataset_splits
from pgi_detect.data.formats.dataset_yaml import SPLITS
from pgi_detect.settings import NON_NEGATIVE


def check_data_main(argv: list[str] | None = None) -> int:
    """`pgi-detect check-data`: print the report; exit code 1 when problems were found, 0 otherwise."""
    parser = argparse.ArgumentParser(prog="pgi-detect check-data",
                                     description="Validate a COCO JSON, YOLO txt or dataset-YAML detection dataset.")
    parser.add_argument("--path", required=True,
                        help="COCO annotation .json, YOLO dataset folder, or dataset YAML (path/train/val/names)")
    parser.add_argument("--images", default=None, help="image folder (COCO; guessed when omitted)")
    parser.add_argument("--split", choices=SPLITS, nargs="+", default=None,
                        help="dataset YAML: the splits to check (default: every split it has)")
    parser.add_argument("--format", choices=("auto", "coco", "yolo"), default="auto")
    parser.add_argument("--class-names", nargs="+", default=None, help="class names (YOLO without classes.yaml)")
    parser.add_argument("--no-decode", action="store_true", help="skip decoding images (only headers/annotations)")
    parser.add_argument("--max-problems", type=argument_type(NON_NEGATIVE), default=50,
                        help="problems listed individually")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    reports = check_dataset_splits(args.path, args.split, images=args.images, format=args.format,
                                   class_names=args.class_names, decode=not args.no_decode, progress=not args.quiet)
    print("\n\n".join(report.summary(args.max_problems) for report in reports))
    return 0 if all(report.ok for report in reports) else 1
