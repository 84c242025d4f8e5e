"""The ultralytics / official YOLO dataset YAML (`data.yaml`): `path`, `train` / `val` / `test`, `names`.

    path: ../datasets/coco128      # dataset root; relative to this file's folder (else to the working directory)
    train: images/train2017         # relative to `path`: a folder of images, a .txt list of images, or a list
    val: [images/val2017, extra/images/val]
    test: test-dev.txt              # optional
    names: {0: person, 1: bicycle}  # or a list; `nc`, when given, must agree

An image's label file is its path with the last `images` component replaced by `labels` and the suffix by `.txt`
(`images/train2017/1.jpg` → `labels/train2017/1.txt`), as those tools do. Lines of a .txt list are image paths,
relative to the list's own folder (`./images/...` as ultralytics writes them). Image ids are running indices over
the split's sorted image paths; category ids are the class indices.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pgi_detect.text import class_count
from pgi_detect.data.images.decode import IMAGE_SUFFIXES
from pgi_detect.data.problems import DataError
from pgi_detect.data.records import DetectionSource
from pgi_detect.data.formats.yolo_txt import labels_path_of, list_images, load_yolo_images, parse_class_names

SPLITS = ("train", "val", "test")
YAML_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class DatasetYaml:
    """A parsed dataset YAML: the root, each split's entries (folders, .txt lists or image files) and the classes."""

    file: Path
    root: Path
    splits: dict[str, tuple[Path, ...]]
    class_names: tuple[str, ...]
    # Split -> the first of its entries that does not exist: an error when that split is read, not before, so that
    # `check-data --split train` and a train-only use work while the val folder is still missing.
    missing: dict[str, Path] = field(default_factory=dict)

    def location(self, split: str) -> str:
        return f"{self.file} [{split}]"

    def __str__(self) -> str:  # where messages name the dataset: its file
        return str(self.file)


def is_dataset_yaml(path: str | Path) -> bool:
    path = Path(path)
    return path.suffix.lower() in YAML_SUFFIXES and path.is_file()


def read_dataset_yaml(path: str | Path) -> DatasetYaml:
    """Parse and check a dataset YAML (the split paths must exist); errors name the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: dataset YAML not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the dataset YAML ({exc})") from None
    if not isinstance(data, dict) or not any(data.get(split) for split in SPLITS):
        raise DataError(f"{path}: not a dataset YAML: expected 'train', 'val' and/or 'test' keys")
    root = dataset_root(path, data.get("path"))
    class_names = parse_class_names(data.get("names"), path)
    if data.get("nc") is not None and data["nc"] != len(class_names):
        raise DataError(f"{path}: nc is {data['nc']} but 'names' lists {class_count(len(class_names))}")
    splits, missing = {}, {}
    for split in SPLITS:
        value = data.get(split)
        if not value:
            continue
        entries = value if isinstance(value, list) else [value]
        if not all(isinstance(e, str) for e in entries):
            raise DataError(f"{path}: {split}: expected a path or a list of paths, got {value!r:.100}")
        resolved = tuple(root / e for e in entries)
        absent = next((entry for entry in resolved if not entry.exists()), None)
        if absent is not None:
            missing[split] = absent
        splits[split] = resolved
    return DatasetYaml(path, root, splits, tuple(class_names), missing)


def dataset_root(yaml_file: Path, value: object) -> Path:
    """`path:` relative to the YAML's folder (else to the working directory when only that exists); the YAML's
    folder when absent."""
    if value is None or value == "":
        return yaml_file.parent
    if not isinstance(value, str):
        raise DataError(f"{yaml_file}: path: expected a folder, got {value!r:.100}")
    root = Path(value).expanduser()
    if root.is_absolute():
        return root
    beside = yaml_file.parent / root
    return beside if beside.exists() or not root.exists() else root


def split_images(spec: DatasetYaml, split: str) -> tuple[list[Path], list[Path]]:
    """(the split's image files, sorted; the label folders of its folder entries, for orphan label files)."""
    if split not in spec.splits:
        raise DataError(f"{spec.file}: no {split!r} split (it has {', '.join(spec.splits) or 'none'})")
    if split in spec.missing:
        raise DataError(f"{spec.file}: {split}: {spec.missing[split]} not found (paths are relative to path: "
                        f"{spec.root})")
    images: list[Path] = []
    label_dirs: list[Path] = []
    for entry in spec.splits[split]:
        if entry.is_dir():
            found = list_images(entry)
            if not found:
                raise DataError(f"{spec.file}: {split}: no images in {entry}")
            images += found
            label_dirs.append(labels_path_of(entry))
        elif entry.suffix.lower() == ".txt":
            images += read_image_list(entry)
        elif entry.suffix.lower() in IMAGE_SUFFIXES:
            images.append(entry)
        else:
            raise DataError(f"{spec.file}: {split}: {entry} is neither a folder, a .txt image list nor an image")
    return sorted(set(images)), [d for d in label_dirs if d.is_dir()]


def read_image_list(list_file: Path) -> list[Path]:
    """Image paths of a .txt list (one per line; relative ones are relative to the list's folder)."""
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{list_file}: cannot read the image list ({exc})") from None
    paths = [Path(line.strip()) for line in lines if line.strip()]
    return [p if p.is_absolute() else list_file.parent / p for p in paths]


def load_yaml_split(spec: DatasetYaml, split: str, class_names: list[str] | None = None,
                    segments: bool = True) -> DetectionSource:
    """Parse one split of a dataset YAML (no bad-input policy applied: see loading.load_source)."""
    images, label_dirs = split_images(spec, split)
    if class_names is not None and len(class_names) != len(spec.class_names):
        raise DataError(f"{spec.file}: {class_count(len(spec.class_names))} in 'names' but {len(class_names)} "
                        "class_names given")
    names = list(class_names) if class_names is not None else list(spec.class_names)

    def label_for(image: Path) -> Path:
        return labels_path_of(image).with_suffix(".txt")

    return load_yolo_images(images, label_for, names, spec.location(split), label_dirs, segments)
