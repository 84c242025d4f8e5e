"""Which format a dataset path holds, and parsing it (with or without the bad-input policy applied)."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pgi_detect.data.coco_json import load_coco_json
from pgi_detect.data.problems import DataError, enforce_policy
from pgi_detect.data.records import DetectionSource
from pgi_detect.data.yolo_txt import load_yolo_txt

DataFormat = Literal["auto", "coco", "yolo"]


def detect_format(path: str | Path, format: str = "auto") -> str:
    """'coco' for a .json file, 'yolo' for a folder; an explicit format is checked against the path."""
    path = Path(path)
    if format not in ("auto", "coco", "yolo"):
        raise ValueError(f"format must be 'auto', 'coco' or 'yolo', got {format!r}")
    if not path.exists():
        raise DataError(f"{path}: dataset path not found")
    if format == "auto":
        if path.is_file() and path.suffix.lower() == ".json":
            return "coco"
        if path.is_dir():
            return "yolo"
        raise DataError(f"{path}: cannot tell the format: expected a COCO .json file or a YOLO dataset folder")
    return format


def read_source(path: str | Path, images: str | Path | None = None, format: str = "auto",
                class_names: list[str] | None = None, segments: bool = True) -> DetectionSource:
    """Parse a dataset without applying the bad-input policy (check-data uses this to list every problem).

    segments=False does not keep polygon labels (copy-paste / segment-aware warping need them)."""
    if detect_format(path, format) == "coco":
        source = load_coco_json(path, images, segments=segments)
        if class_names is not None:
            if len(class_names) != source.num_classes:
                raise DataError(f"{path}: {source.num_classes} categories but {len(class_names)} class_names given")
            source.class_names = list(class_names)
        return source
    return load_yolo_txt(path, images, class_names, segments=segments)


def load_source(path: str | Path, images: str | Path | None = None, format: str = "auto",
                class_names: list[str] | None = None, on_bad_sample: str = "error",
                segments: bool = True) -> DetectionSource:
    """Parse a dataset and apply the policy: raise on the first bad sample, or log and drop bad samples.

    YOLO image sizes are read while parsing, so the datasets and the ground truth built from one source always
    hold the same images.
    """
    source = read_source(path, images, format, class_names, segments)
    enforce_policy(source.problems, on_bad_sample, source.location)
    if not source.records:
        raise DataError(f"{source.location}: no usable images")
    return source
