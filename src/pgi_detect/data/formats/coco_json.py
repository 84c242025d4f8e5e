"""COCO JSON annotations → DetectionSource, through a flat-array index that is cached on disk.

Category ids are mapped to contiguous indices in sorted-id order (`category_ids[index]` maps back for evaluation).
iscrowd annotations are not training targets (they stay in the ground truth returned by
`DetectionDataModule.ground_truth()`, where COCOeval treats them as ignore regions). Images without annotations are
kept as negatives. Boxes come from the JSON `bbox`.

Each non-crowd annotation's polygon `segmentation` is kept as the object's segment (an object made of several
polygons gets them joined by zero-width bridges, records.merge_polygons; an RLE or missing segmentation gets the
box rectangle). Images without any polygon carry no segments; `segments=False` hides them all.

The parse goes once over the annotations in plain Python and builds the index (records.RecordTable arrays) with
numpy; `index_cache` stores it, so the next load of an unchanged file maps it from disk in a fraction of a second.
What depends on the images folder (file paths, missing files) is checked on every load.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pgi_detect.data import index_cache
from pgi_detect.data.problems import DataError, DataProblem
from pgi_detect.data.records import (DetectionSource, RecordTable, box_repair, clip_boxes_to_image, merge_polygons,
                                     offsets_of, pack_names, ragged_indices)

INDEX_KIND = "coco"


def annotation_polygon(segmentation: Any) -> np.ndarray | None:
    """The object's polygon from a COCO `segmentation` polygon list (parts joined); None for RLE / missing / invalid."""
    if not isinstance(segmentation, list):
        return None
    parts = []
    for part in segmentation:
        if (isinstance(part, (list, tuple)) and len(part) >= 6 and len(part) % 2 == 0
                and all(isinstance(v, (int, float)) for v in part)):
            polygon = np.asarray(part, np.float32).reshape(-1, 2)
            if np.all(np.isfinite(polygon)):
                parts.append(polygon)
    return merge_polygons(parts) if parts else None


def read_json(path: Path) -> Any:
    """Parse a JSON file; the error names the file, line and column."""
    if path.is_dir():
        raise DataError(f"{path}: is a folder; a COCO dataset is given by its annotation .json file")
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path}: annotation file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read the annotation file ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a UTF-8 JSON file ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None


def guess_coco_images_dir(annotation_file: Path) -> Path | None:
    """`.../annotations/instances_train2017.json` → `.../images/train2017` or `.../train2017` when present."""
    split = annotation_file.stem.split("_", 1)[-1]
    root = annotation_file.parent.parent
    for candidate in (root / "images" / split, root / split, root / "images"):
        if candidate.is_dir():
            return candidate
    return None


def _require_list(data: dict, key: str, path: Path) -> list:
    value = data.get(key)
    if not isinstance(value, list):
        raise DataError(f"{path}: not a COCO detection file: top-level '{key}' list is missing")
    return value


def load_coco_json(annotation_file: str | Path, images_dir: str | Path | None = None, segments: bool = True,
                   cache: bool = True) -> DetectionSource:
    """Parse a COCO JSON file. Structural errors raise DataError; per-image/annotation problems are collected.

    segments=False hides the polygons (copy-paste and segment-aware warping then do not run). cache=False neither
    reads nor writes the on-disk index (index_cache.py; files under index_cache.MIN_CACHED_BYTES never are)."""
    annotation_file = Path(annotation_file)
    images_dir = guess_coco_images_dir(annotation_file) if images_dir is None else Path(images_dir)
    if images_dir is None or not images_dir.is_dir():
        if annotation_file.is_dir() or not annotation_file.exists():
            read_json(annotation_file)  # the error says what is wrong with the path
        if images_dir is None:
            raise DataError(f"{annotation_file}: cannot find the images folder; pass the images path explicitly")
        # else every image would be one "image file not found" problem, and skipping them leaves nothing
        raise DataError(f"{images_dir}: images folder not found")
    index = coco_index(annotation_file, cache)
    return source_from_index(index, annotation_file, images_dir, segments)


@dataclass
class CocoIndex:
    """A parsed annotation file: RecordTable arrays (file names relative to the images folder) and metadata
    (class table, crowd count, the problems found, as JSON-able lists)."""

    arrays: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)


def coco_index(annotation_file: Path, cache: bool = True) -> CocoIndex:
    """The index of an annotation file: from the cache when fresh, else parsed (and cached when large enough)."""
    use_cache = cache and annotation_file.is_file() and annotation_file.stat().st_size >= index_cache.MIN_CACHED_BYTES
    if use_cache:
        cached = index_cache.read_index(annotation_file, INDEX_KIND)
        if cached is not None:
            return CocoIndex(*cached)
    index = parse_coco(read_json(annotation_file), annotation_file)
    if use_cache and index_cache.write_index(annotation_file, INDEX_KIND, index.arrays, index.meta) is not None:
        cached = index_cache.read_index(annotation_file, INDEX_KIND)  # mapped: shared with every other process
        if cached is not None:
            return CocoIndex(*cached)
    return index


def parse_coco(data: Any, annotation_file: Path) -> CocoIndex:
    """Build the index of a parsed COCO JSON document."""
    if not isinstance(data, dict):
        raise DataError(f"{annotation_file}: not a COCO detection file: top level is not an object")
    images = _require_list(data, "images", annotation_file)
    annotations = _require_list(data, "annotations", annotation_file)
    categories = _require_list(data, "categories", annotation_file)
    category_ids, class_names = parse_categories(categories, annotation_file)
    image_ids, names, widths, heights = parse_images(images, annotation_file)
    rows = {image_id: row for row, image_id in enumerate(image_ids)}
    classes = {c: i for i, c in enumerate(category_ids)}
    # [image, message, kind, severity, row]: a box repair names its image by row (>= 0); an annotation problem has
    # row -1 and names the image's file name (or None: the annotation file). The annotation file's path is added
    # when a source is built (source_from_index): a cached index holds no path as one working directory saw it.
    problems: list[list] = []
    # First pass trusts that coordinates are finite numbers (checked after, in numpy); if some are not (a width
    # that is a string or null fails its sign test here already), the second pass checks every value and reports
    # (or replaces) the offending annotations.
    try:
        objects = collect_objects(annotations, rows, classes, names, problems, strict=False)
        numbers = objects.finalize()
    except (TypeError, ValueError):
        numbers = False
    if not numbers:
        problems.clear()
        objects = collect_objects(annotations, rows, classes, names, problems, strict=True)
        objects.finalize(checked=True)
    packed_names, name_offsets = pack_names(names)
    arrays = {
        "names": packed_names, "name_offsets": name_offsets,
        "image_ids": np.asarray(image_ids, np.int64),
        "widths": np.asarray(widths, np.int32),
        "heights": np.asarray(heights, np.int32),
        **objects.pack(np.asarray(widths, np.float32), np.asarray(heights, np.float32), problems),
    }
    meta = {"class_names": class_names, "category_ids": category_ids, "num_crowd": objects.crowd,
            "problems": problems}
    return CocoIndex(arrays, meta)


def parse_categories(categories: list, annotation_file: Path) -> tuple[list[int], list[str]]:
    """(sorted category ids, their names): class index i is the i-th smallest id."""
    try:
        category_ids = sorted(int(c["id"]) for c in categories)
        names_by_id = {int(c["id"]): str(c.get("name", c["id"])) for c in categories}
    except (KeyError, TypeError, ValueError, AttributeError):
        raise DataError(f"{annotation_file}: every category needs an integer 'id'") from None
    if len(set(category_ids)) != len(category_ids):
        raise DataError(f"{annotation_file}: duplicate category ids")
    return category_ids, [names_by_id[c] for c in category_ids]


def parse_images(images: list, annotation_file: Path) -> tuple[list[int], list[str], list[int], list[int]]:
    """(ids, file names, widths, heights) in file order; a malformed or duplicate entry is a structural error."""
    ids, names, widths, heights = [], [], [], []
    for position, entry in enumerate(images):
        try:
            image_id, file_name = entry["id"], str(entry["file_name"])
            width, height = int(entry["width"]), int(entry["height"])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{annotation_file}: images[{position}] needs id, file_name, width, height: "
                            f"{entry!r:.200}") from None
        if type(image_id) is not int:
            raise DataError(f"{annotation_file}: images[{position}] ({file_name}): image id {image_id!r} is a "
                            f"{type(image_id).__name__}; COCO image ids must be integers")
        if width <= 0 or height <= 0:
            raise DataError(f"{annotation_file}: images[{position}] ({file_name}): width and height must be "
                            f"positive, got {width}x{height}")
        ids.append(image_id)
        names.append(file_name)
        widths.append(width)
        heights.append(height)
    if len(set(ids)) != len(ids):
        seen: set[int] = set()
        duplicate = next(i for i in ids if i in seen or seen.add(i))  # type: ignore[func-returns-value]
        raise DataError(f"{annotation_file}: duplicate image id {duplicate}")
    return ids, names, widths, heights


_NUMBER = (int, float)


@dataclass
class ObjectLists:
    """The usable (non-crowd) annotations in file order, as flat lists: image row, class, bbox [x, y, w, h], and
    the polygon (flat x, y list; the bbox rectangle for annotations without one)."""

    rows: list[int] = field(default_factory=list)
    classes: list[int] = field(default_factory=list)
    boxes: list[float] = field(default_factory=list)
    points: list[float] = field(default_factory=list)
    point_counts: list[int] = field(default_factory=list)
    has_polygon: list[bool] = field(default_factory=list)
    bad_rows: set[int] = field(default_factory=set)
    crowd: int = 0
    num_images: int = 0
    box_array: np.ndarray | None = None  # (n, 4) float64 [x, y, w, h], set by finalize
    point_array: np.ndarray | None = None  # (P, 2) float32, set by finalize

    def finalize(self, checked: bool = False) -> bool:
        """Convert the coordinate lists to arrays; False when some value is not a finite number. Unless every value
        was `checked` one by one already (the strict pass), the dtype numpy infers tells numbers from the rest: a
        float conversion would read a numeric string such as "5" as a number."""
        if checked:
            boxes, points = np.asarray(self.boxes, np.float64), np.asarray(self.points, np.float64)
        else:
            boxes, points = np.asarray(self.boxes), np.asarray(self.points)
            if boxes.dtype.kind not in "fi" or points.dtype.kind not in "fi":  # str, None, an int beyond int64
                return False
        if not (np.isfinite(boxes).all() and np.isfinite(points).all()):
            return False
        self.box_array = boxes.astype(np.float64, copy=False).reshape(-1, 4)
        self.point_array = points.astype(np.float32).reshape(-1, 2)
        self.boxes, self.points = [], []  # the arrays hold them now
        return True

    def pack(self, widths: np.ndarray, heights: np.ndarray, problems: list[list]) -> dict[str, np.ndarray]:
        """Group by image (file order kept within an image), drop the objects of unusable images, clip boxes and
        polygons to their image (repairs reported), and return the RecordTable's per-object arrays."""
        assert self.box_array is not None, "finalize() first"
        rows = np.asarray(self.rows, np.int64)
        usable = np.ones(self.num_images, bool)
        usable[list(self.bad_rows)] = False
        boxes = self.box_array
        raw = np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], 1).astype(np.float32)
        keep = usable[rows]
        order = np.flatnonzero(keep)[np.argsort(rows[keep], kind="stable")]
        rows, raw = rows[order], raw[order]
        limits = np.stack([widths[rows], heights[rows]], 1)
        clipped, valid, moved = clip_boxes_to_image(raw, limits[:, :1], limits[:, 1:])
        for i in np.flatnonzero(~valid | moved):  # named by image row: source_from_index adds the file path
            problems.append([None, *box_repair(raw[i], bool(valid[i])), "warning", int(rows[i])])
        points, point_offsets, has_polygon = self._pack_points(order, valid, limits)
        rows = rows[valid]
        image_has_segments = np.zeros(self.num_images, bool)
        image_has_segments[rows[has_polygon]] = True
        return {
            "usable": usable, "object_offsets": offsets_of(np.bincount(rows, minlength=self.num_images)),
            "boxes": np.ascontiguousarray(clipped[valid], np.float32),
            "classes": np.asarray(self.classes, np.int64)[order][valid],
            "has_segments": image_has_segments, "point_offsets": point_offsets, "points": points,
        }

    def _pack_points(self, order: np.ndarray, valid: np.ndarray, limits: np.ndarray):
        counts = np.asarray(self.point_counts, np.int64)
        starts = offsets_of(counts)[:-1]
        points = self.point_array
        assert points is not None, "finalize() first"
        counts, starts = counts[order][valid], starts[order][valid]
        points = points[ragged_indices(starts, counts)].clip(0, np.repeat(limits[valid], counts, axis=0))
        has_polygon = np.asarray(self.has_polygon, bool)[order][valid]
        return np.ascontiguousarray(points, np.float32), offsets_of(counts), has_polygon


def collect_objects(annotations: list, row_of_image: dict[int, int], index_of_category: dict[int, int],
                    names: list[str], problems: list[list], strict: bool = True) -> ObjectLists:
    """Go once over the annotations. Crowd annotations are counted and skipped (evaluation ignores them); an
    annotation that is not an object or names an unknown image is reported and dropped; one with an unknown category
    or an invalid bbox (not 4 finite numbers, negative width or height) makes its image unusable.

    strict=False does not check that each coordinate is a finite number (ObjectLists.finalize does, at once)."""
    found = ObjectLists(num_images=len(names))
    for position, ann in enumerate(annotations):
        if type(ann) is not dict:
            problems.append([None, f"annotations[{position}] is not an object: {ann!r:.80}", "malformed_annotation",
                             "error", -1])
            continue
        image_id = ann.get("image_id")
        row = row_of_image.get(image_id) if isinstance(image_id, int) else None
        if row is None:
            problems.append([None, f"annotation {ann.get('id', '?')} references unknown image id {image_id!r}",
                             "unknown_image", "error", -1])
            continue
        if ann.get("iscrowd", 0):
            found.crowd += 1
            continue
        category = ann.get("category_id")
        index = index_of_category.get(category) if isinstance(category, int) else None
        bbox = ann.get("bbox")
        problem = None
        if index is None:
            problem = (f"annotation {ann.get('id', '?')} has unknown category id {category!r}", "unknown_category")
        elif type(bbox) is not list or len(bbox) != 4 or (strict and not all(type(v) in _NUMBER and math.isfinite(v)
                                                                             for v in bbox)):
            problem = (f"annotation {ann.get('id', '?')} has an invalid bbox {bbox!r:.80}", "invalid_box")
        elif bbox[2] < 0 or bbox[3] < 0:
            problem = (f"annotation {ann.get('id', '?')} has a bbox {bbox!r} with negative width or height",
                       "invalid_box")
        if problem is not None:
            problems.append([names[row], problem[0], problem[1], "error", -1])
            found.bad_rows.add(row)
            continue
        found.rows.append(row)
        found.classes.append(index)
        found.boxes.extend(bbox)
        add_polygon(found, ann.get("segmentation"), bbox, strict)
    return found


def add_polygon(found: ObjectLists, segmentation: Any, bbox: list, strict: bool = True) -> None:
    """Append the object's polygon (its bbox rectangle when it has none) to the flat point list.

    strict=False takes a single polygon's values unchecked (ObjectLists.finalize checks them all at once)."""
    if (type(segmentation) is list and len(segmentation) == 1 and type(segmentation[0]) is list
            and len(segmentation[0]) >= 6 and not len(segmentation[0]) % 2
            and (not strict or all(type(v) in _NUMBER and math.isfinite(v) for v in segmentation[0]))):
        found.points.extend(segmentation[0])  # one polygon: the common case, no numpy per object
        found.point_counts.append(len(segmentation[0]) // 2)
        found.has_polygon.append(True)
        return
    polygon = annotation_polygon(segmentation)
    if polygon is None:
        x, y, w, h = (float(v) for v in bbox)
        found.points.extend((x, y, x + w, y, x + w, y + h, x, y + h))
        found.point_counts.append(4)
        found.has_polygon.append(False)
    else:
        found.points.extend(polygon.ravel().tolist())
        found.point_counts.append(len(polygon))
        found.has_polygon.append(True)


def source_from_index(index: CocoIndex, annotation_file: Path, images_dir: Path, segments: bool) -> DetectionSource:
    """The DetectionSource of an index for one images folder: missing image files are checked here (every load)."""
    arrays, meta = index.arrays, index.meta
    names, offsets = arrays["names"].tobytes(), arrays["name_offsets"]
    prefix = str(images_dir) + os.sep
    try:
        present = set(os.listdir(images_dir))
    except OSError:  # an unlistable folder: each file is looked up on its own
        present = set()
    where = str(annotation_file)
    problems = [DataProblem(where if image is None else f"{where} [{image}]", message, kind, severity)
                for image, message, kind, severity, row in meta["problems"] if row < 0]
    usable = np.array(arrays["usable"], bool)
    missing = np.zeros(len(usable), bool)
    for row in range(len(usable)):
        name = names[offsets[row]:offsets[row + 1]].decode("utf-8")
        if name not in present and not os.path.exists(prefix + name):
            missing[row] = True
            problems.append(DataProblem(prefix + name, "image file not found", "missing_image"))
    for _, message, kind, severity, row in meta["problems"]:
        if row >= 0 and not missing[row]:
            name = names[offsets[row]:offsets[row + 1]].decode("utf-8")
            problems.append(DataProblem(prefix + name, message, kind, severity))
    table = RecordTable(
        prefix, arrays["names"], offsets, arrays["image_ids"], arrays["widths"], arrays["heights"],
        arrays["object_offsets"], arrays["boxes"], arrays["classes"],
        has_segments=arrays["has_segments"] if segments else None,
        point_offsets=arrays["point_offsets"] if segments else None, points=arrays["points"] if segments else None)
    table = table.select(np.flatnonzero(usable & ~missing))
    return DetectionSource(images_dropped=len(usable) - len(table), format="coco", location=str(annotation_file),
                           records=table,
                           class_names=list(meta["class_names"]), category_ids=list(meta["category_ids"]),
                           problems=problems, num_crowd=int(meta["num_crowd"]))
