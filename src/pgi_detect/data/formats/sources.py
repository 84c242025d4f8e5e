"""Which format a dataset path holds, and parsing it (with or without the bad-input policy applied)."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pgi_detect.data.formats.coco_json import load_coco_json
from pgi_detect.data.formats.dataset_yaml import DatasetYaml, is_dataset_yaml, load_yaml_split, read_dataset_yaml
from pgi_detect.data.problems import DataError, DataProblem, enforce_policy
from pgi_detect.data.records import DetectionSource
from pgi_detect.data.formats.yolo_txt import load_yolo_txt

DataFormat = Literal["auto", "coco", "yolo"]
EMPTY_LABELS_OPTION = "allow_empty_labels"


def detect_format(path: str | Path, format: str = "auto") -> str:
    """'coco' for a .json file, 'yolo' for a folder; an explicit format is checked against the path."""
    path = Path(path)
    if format not in ("auto", "coco", "yolo"):
        raise ValueError(f"format must be 'auto', 'coco' or 'yolo', got {format!r}")
    if not path.exists():
        raise DataError(f"{path}: dataset path not found")
    if is_dataset_yaml(path):
        raise DataError(f"{path}: a dataset YAML (path/train/val/names) is given whole: data.dataset={path} "
                        "(check-data --path accepts it too)")
    if format == "coco" and path.is_dir():
        raise DataError(f"{path}: is a folder; format coco expects the annotation .json file")
    if format == "yolo" and path.is_file():
        hint = " (a .json file is COCO: use format coco or auto)" if path.suffix.lower() == ".json" else ""
        raise DataError(f"{path}: is a file; format yolo expects a dataset folder with images/ and labels/{hint}")
    if format == "auto":
        if path.is_file() and path.suffix.lower() == ".json":
            return "coco"
        if path.is_dir():
            return "yolo"
        raise DataError(f"{path}: cannot tell the format: expected a COCO .json file, a YOLO dataset folder or a "
                        "dataset YAML (.yaml with train/val/names)")
    return format


def read_source(path: str | Path | DatasetYaml, images: str | Path | None = None, format: str = "auto",
                class_names: list[str] | None = None, segments: bool = True,
                split: str | None = None) -> DetectionSource:
    """Parse a dataset without applying the bad-input policy (check-data uses this to list every problem).

    `path` is a COCO annotation file or a YOLO dataset folder; with a `split`, a dataset YAML (its file, or the
    `DatasetYaml` read from it, so it is not read again) of which that split is parsed (`images` and `format` do not
    apply). segments=False does not keep polygon labels (copy-paste / segment-aware warping need them)."""
    if split is not None:
        spec = path if isinstance(path, DatasetYaml) else read_dataset_yaml(path)
        return load_yaml_split(spec, split, class_names, segments)
    if detect_format(path, format) == "coco":
        source = load_coco_json(path, images, segments=segments)
        if class_names is not None:
            if len(class_names) != source.num_classes:
                raise DataError(f"{path}: {source.num_classes} categories but {len(class_names)} class_names given")
            source.class_names = list(class_names)
        return source
    return load_yolo_txt(path, images, class_names, segments=segments)


def apply_policy(source: DetectionSource, on_bad_sample: str) -> DetectionSource:
    """Raise on the first bad sample (policy 'error') or log and keep the usable ones; an empty result is an error."""
    enforce_policy(source.problems, on_bad_sample, source.location)
    if not len(source.records):
        raise DataError(f"{source.location}: no usable images")
    return source


def load_source(path: str | Path | DatasetYaml, images: str | Path | None = None, format: str = "auto",
                class_names: list[str] | None = None, on_bad_sample: str = "error",
                segments: bool = True, split: str | None = None) -> DetectionSource:
    """Parse a dataset (read_source: `split` of a dataset YAML) and apply the policy: raise on the first bad sample,
    or log and drop bad samples.

    YOLO image sizes are read while parsing, so the datasets and the ground truth built from one source always
    hold the same images.
    """
    return apply_policy(read_source(path, images, format, class_names, segments, split), on_bad_sample)


def no_objects_problem(source: DetectionSource) -> DataProblem | None:
    """The problem with a dataset none of whose images has an object (None when some have): where labels were
    expected and what was found there. Training on it would learn pure background."""
    if not len(source.records) or source.num_objects:
        return None
    images = len(source.records)
    if source.format == "coco":
        message = (f"none of the {images} usable images has an object (non-crowd annotations with a known "
                   f"category; {source.num_crowd} crowd annotations)")
    else:
        labelled = images - len(source.unlabeled_images)
        folders = ", ".join(source.label_locations) or "next to the images"
        example = source.unlabeled_images[0] if source.unlabeled_images else None
        message = f"none of the {images} images has an object: {labelled} have a label file, all empty"
        if not labelled:
            message = (f"no label file matched any of the {images} images; labels are expected in {folders} "
                       "(the image path with its last 'images' folder replaced by 'labels', suffix .txt"
                       + (f", e.g. for {example}" if example else "") + ")")
            if source.orphan_label_files:
                message += (f"; the {len(source.orphan_label_files)} label files found there match no image "
                            f"(e.g. {source.orphan_label_files[0]})")
    return DataProblem(source.location, message, "no_objects")


def require_objects(source: DetectionSource, allow_empty_labels: bool) -> None:
    """Training data must have objects unless background-only data is intended (`allow_empty_labels`)."""
    problem = no_objects_problem(source)
    if problem is not None and not allow_empty_labels:
        raise DataError(f"{problem}. Training would only see background; if that is intended, set "
                        f"{EMPTY_LABELS_OPTION}=true (data.{EMPTY_LABELS_OPTION}).")
