"""check-data: parse a dataset, decode every image and list everything wrong with it, file by file."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from pgi_detect.data.formats.dataset_yaml import SPLITS, DatasetYaml, is_dataset_yaml, read_dataset_yaml
from pgi_detect.data.images.decode import ImageSizeMismatchError, check_header_size, decode_annotated_image
from pgi_detect.data.formats.sources import no_objects_problem, read_source
from pgi_detect.data.problems import DataError, DataProblem
from pgi_detect.data.records import DetectionSource


@dataclass
class DataReport:
    """What check_dataset found. `ok` is False when any problem (error or warning) was found."""

    location: str
    format: str = "?"
    num_images: int = 0  # usable images
    num_listed: int = 0  # images the dataset lists (usable + left out for the problems below)
    num_annotations: int = 0  # training targets (crowd excluded, repaired boxes included)
    num_crowd: int = 0
    class_names: list[str] = field(default_factory=list)
    per_class: dict[str, int] = field(default_factory=dict)
    negatives: list[str] = field(default_factory=list)  # usable images without objects
    unlabeled_images: list[str] = field(default_factory=list)  # YOLO: no label file (counted as negatives)
    orphan_label_files: list[str] = field(default_factory=list)
    problems: list[DataProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def errors(self) -> list[DataProblem]:
        return [p for p in self.problems if p.severity == "error"]

    def summary(self, max_problems: int = 50) -> str:
        left_out = self.num_listed - self.num_images
        images = f"{self.num_images} usable of {self.num_listed} listed ({left_out} left out, see PROBLEMS)" \
            if left_out else str(self.num_images)
        lines = [f"dataset: {self.location} ({self.format})",
                 f"images: {images}  annotations: {self.num_annotations}  crowd (not trained on): "
                 f"{self.num_crowd}  classes: {len(self.class_names)}",
                 f"negatives (no objects): {len(self.negatives)}"
                 + (f", of which without a label file: {len(self.unlabeled_images)}" if self.unlabeled_images else "")]
        for path in self.unlabeled_images[:max_problems]:
            lines.append(f"  no label file (negative): {path}")
        if self.per_class:
            width = max(len(n) for n in self.per_class)
            lines.append("per-class objects:")
            lines += [f"  {name:<{width}}  {count}" for name, count in self.per_class.items()]
        if self.problems:
            kinds = Counter(f"{p.severity}:{p.kind}" for p in self.problems)
            lines.append(f"PROBLEMS: {len(self.problems)} ({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))})")
            lines += [f"  [{p.severity}] {p}" for p in self.problems[:max_problems]]
            if len(self.problems) > max_problems:
                lines.append(f"  ... and {len(self.problems) - max_problems} more")
        else:
            lines.append("no problems found")
        return "\n".join(lines)


def check_dataset(path: str | Path | DatasetYaml, images: str | Path | None = None, format: str = "auto",
                  class_names: list[str] | None = None, decode: bool = True, progress: bool = True,
                  split: str | None = None) -> DataReport:
    """Parse and (with decode=True) decode every image; never raises for bad data, everything goes in the report.

    A dataset YAML (its file or the parsed `DatasetYaml`) is checked split by split: `split` names the one
    (loading.read_source); check_dataset_splits checks each split it has."""
    report = DataReport(location=f"{path} [{split}]" if split else str(path))
    try:
        source = read_source(path, images, format, class_names, segments=False, split=split)
    except DataError as exc:
        report.problems.append(unreadable(path, exc))
        return report
    fill_report(report, source, decode, progress)
    return report


def check_dataset_splits(path: str | Path, splits: list[str] | None = None, **kwargs) -> list[DataReport]:
    """One report per split of a dataset YAML (default: every split it has; the YAML is read once); one report for
    any other path."""
    if not is_dataset_yaml(path):
        return [check_dataset(path, **kwargs)]
    try:
        spec = read_dataset_yaml(path)
    except DataError as exc:
        return [DataReport(location=str(path), problems=[unreadable(path, exc)])]
    wanted = splits or [s for s in SPLITS if s in spec.splits]
    kwargs.pop("images", None)
    return [check_dataset(spec, split=split, **kwargs) for split in wanted]


def unreadable(path: str | Path | DatasetYaml, error: DataError) -> DataProblem:
    """The one problem of a dataset that cannot be read at all."""
    return DataProblem(str(path), str(error).removeprefix(f"{path}: "), "unreadable_dataset")


def fill_report(report: DataReport, source: DetectionSource, decode: bool, progress: bool) -> None:
    report.format, report.class_names = source.format, list(source.class_names)
    report.problems = list(source.problems)
    report.unlabeled_images = list(source.unlabeled_images)
    report.orphan_label_files = list(source.orphan_label_files)
    report.num_crowd = source.num_crowd
    table = source.records
    report.num_listed = len(table) + source.images_dropped
    # Without decoding, COCO images still have their headers read (EXIF orientation applied): an annotated size
    # that differs is the same unusable sample as when decoding (YOLO sizes come from the headers already).
    check = decode_annotated_image if decode else (check_header_size if source.format == "coco" else None)
    if check is not None:
        usable = []
        for position, record in enumerate(tqdm(table, total=len(table), unit="img", disable=not progress,
                                               desc="decoding images" if decode else "reading image headers")):
            try:
                check(record.path, record.height, record.width)
            except DataError as exc:
                kind = "size_mismatch" if isinstance(exc, ImageSizeMismatchError) else "corrupt_image"
                report.problems.append(DataProblem(str(record.path), str(exc).split(": ", 1)[-1], kind))
                continue
            usable.append(position)
        table = source.records = table.select(usable)
        # A box repair of an image whose annotated size is wrong was measured in that wrong frame: the mismatch is
        # the problem to fix, and its clipping warnings would mislead.
        mismatched = {p.file for p in report.problems if p.kind == "size_mismatch"}
        report.problems = [p for p in report.problems
                           if not (p.file in mismatched and p.kind in ("clipped_box", "degenerate_box"))]
    counts = Counter(table.used_classes().tolist())
    report.num_images = len(table)
    report.num_annotations = sum(counts.values())
    report.per_class = {name: counts.get(i, 0) for i, name in enumerate(source.class_names)}
    empty = table.object_counts() == 0
    report.negatives = [str(table.path(i)) for i in map(int, empty.nonzero()[0])]
    missing_objects = no_objects_problem(source)
    if missing_objects is not None:
        report.problems.append(missing_objects)
