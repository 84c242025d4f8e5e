"""The COCO index: flat arrays, the on-disk cache (fresh, stale, read-only), the same records and problems whether
parsed or cached; YOLO ground truth areas (polygon area for polygon rows) against the COCO JSON path."""
from __future__ import annotations

import json
import logging
import os
import shutil

import numpy as np
import pytest

from pgi_detect.data import DataError, index_cache, load_source
from pgi_detect.data.formats import coco_json
from pgi_detect.data.formats.coco_json import annotation_polygon
from pgi_detect.data.formats.ground_truth import ground_truth_dict
from pgi_detect.data.records import RecordTable
from helpers.datasets import rectangles_coco


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv(index_cache.ENV_CACHE_DIR, str(folder))
    monkeypatch.setattr(index_cache, "MIN_CACHED_BYTES", 0)
    return folder


def coco_with_problems(tmp_path):
    path = rectangles_coco(tmp_path / "d", 6)
    data = json.loads(path.read_text())
    data["annotations"][0]["bbox"] = [-10, 2, 30, 10]  # clipped, reported
    data["annotations"][1]["segmentation"] = [[1, 1, 20, 1, 20, 15, 1, 15], [30, 30, 40, 30, 40, 40]]  # two parts
    data["annotations"][2]["category_id"] = 99  # unknown: image unusable
    data["annotations"].append({"id": 77, "image_id": 123, "category_id": 1, "bbox": [1, 1, 2, 2]})
    path.write_text(json.dumps(data))
    os.remove(path.parent / "images" / "5.png")  # missing: checked on every load
    return path


def same_source(a, b):
    assert [str(p) for p in a.problems] == [str(p) for p in b.problems]
    assert len(a.records) == len(b.records) and a.class_names == b.class_names and a.category_ids == b.category_ids
    for x, y in zip(a.records, b.records):
        assert (x.path, x.image_id, x.width, x.height) == (y.path, y.image_id, y.width, y.height)
        np.testing.assert_array_equal(x.boxes, y.boxes)
        np.testing.assert_array_equal(x.classes, y.classes)
        assert x.has_segments == y.has_segments
        if x.has_segments:
            np.testing.assert_array_equal(x.segment_points, y.segment_points)
            np.testing.assert_array_equal(x.segment_offsets, y.segment_offsets)


def test_cached_index_gives_the_same_source_and_is_memory_mapped(tmp_path, cache_dir):
    path = coco_with_problems(tmp_path)
    images = path.parent / "images"
    parsed = load_source(path, images, on_bad_sample="skip")
    assert len(list(cache_dir.iterdir())) == 1  # written on the first load
    cached = load_source(path, images, on_bad_sample="skip")
    same_source(parsed, cached)
    assert isinstance(cached.records, RecordTable) and isinstance(cached.records.boxes.base, np.memmap)
    assert sorted(p.kind for p in cached.problems) == ["clipped_box", "missing_image", "unknown_category",
                                                       "unknown_image"]
    uncached = coco_json.load_coco_json(path, images, cache=False)
    same_source(uncached, cached)
    shutil.copy(images / "0.png", images / "5.png")  # the missing image appears: no stale answer from the cache
    assert "missing_image" not in {p.kind for p in load_source(path, images, on_bad_sample="skip").problems}


def test_cached_problems_name_the_file_as_this_load_gives_it(tmp_path, cache_dir, monkeypatch):
    """The cache is keyed by the resolved path; problems read back from it name the path as given now, not as the
    load that wrote the cache gave it (from another working directory)."""
    coco_with_problems(tmp_path)
    monkeypatch.chdir(tmp_path)
    first = load_source("d/ann.json", "d/images", on_bad_sample="skip")
    monkeypatch.chdir(tmp_path / "d")
    cached = load_source("ann.json", "images", on_bad_sample="skip")
    assert isinstance(cached.records.boxes.base, np.memmap)  # read from the cache
    assert sorted(str(p) for p in first.problems) == sorted("d/" + str(p) for p in cached.problems)
    assert "ann.json [1.png]: annotation 3 has unknown category id 99" in [str(p) for p in cached.problems]


def test_changed_file_rebuilds_the_index(tmp_path, cache_dir):
    path = rectangles_coco(tmp_path, 3)
    first = load_source(path, tmp_path / "images")
    data = json.loads(path.read_text())
    data["annotations"] = data["annotations"][:1]
    path.write_text(json.dumps(data))
    second = load_source(path, tmp_path / "images")
    assert first.num_objects == 6 and second.num_objects == 1


def test_unwritable_cache_folder_costs_only_the_cache(tmp_path, cache_dir, caplog):
    path = rectangles_coco(tmp_path, 3)
    cache_dir.mkdir()
    cache_dir.chmod(0o500)
    if os.access(cache_dir, os.W_OK):  # root ignores permissions
        cache_dir.chmod(0o700)
        (cache_dir / "blocker").write_text("")
        os.environ[index_cache.ENV_CACHE_DIR] = str(cache_dir / "blocker")  # a file: mkdir fails for anyone
    with caplog.at_level(logging.WARNING, logger="pgi_detect.data"):
        source = load_source(path, tmp_path / "images")
    assert source.num_objects == 6 and "cannot write the annotation index cache" in caplog.text


def test_bad_coordinates_take_the_checking_pass(tmp_path):
    path = rectangles_coco(tmp_path, 2)
    data = json.loads(path.read_text())
    data["annotations"][0]["bbox"] = [1, 2, float("nan"), 4]  # image 1 unusable
    data["annotations"][2]["segmentation"] = [[1, 2, "x", 4, 5, 6]]  # not numbers: the box rectangle instead
    data["annotations"][3]["segmentation"] = [[1, 2, 9, 2, 9, 8]]
    path.write_text(json.dumps(data))
    source = coco_json.load_coco_json(path, tmp_path / "images", cache=False)
    assert [p.kind for p in source.problems] == ["invalid_box"] and "annotation 1 " in source.problems[0].message
    (record,) = source.records
    assert record.image_id == 2 and record.has_segments
    x1, y1, x2, y2 = record.boxes[0]
    np.testing.assert_allclose(record.segment_points[:4], [[x1, y1], [x2, y1], [x2, y2], [x1, y2]])


@pytest.mark.parametrize("bbox", [[1, 2, "5", 4], [1, 2, 5, None], ["1", 2, 5, 4]])
def test_a_bbox_value_that_is_not_a_number_is_an_invalid_box(tmp_path, bbox):
    """A width or height that is not a number used to crash the first pass with a bare TypeError, and a numeric
    string elsewhere was read as a number; each is the image's invalid_box problem, skippable like any other."""
    path = rectangles_coco(tmp_path, 2)
    data = json.loads(path.read_text())
    data["annotations"][0]["bbox"] = bbox
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"ann\.json \[0\.png\]: annotation 1 has an invalid bbox"):
        load_source(path, tmp_path / "images")
    source = load_source(path, tmp_path / "images", on_bad_sample="skip")
    assert [p.kind for p in source.problems] == ["invalid_box"]
    assert [r.image_id for r in source.records] == [2] and source.num_objects == 2


def test_yolo_polygon_areas_give_the_coco_size_buckets(coco128_dir, tmp_path):
    """coco128 written as YOLO polygon labels: the ground truth's size buckets match the COCO JSON's."""
    data = json.loads((coco128_dir / "annotations" / "instances_train2017.json").read_text())
    index = {c: i for i, c in enumerate(sorted(c["id"] for c in data["categories"]))}
    root = tmp_path / "yolo"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.yaml").write_text(json.dumps({"names": [str(c) for c in sorted(index)]}))
    by_image: dict[int, list] = {}
    for annotation in data["annotations"]:
        if not annotation["iscrowd"]:
            by_image.setdefault(annotation["image_id"], []).append(annotation)
    for image in data["images"]:
        os.symlink(coco128_dir / "images" / "train2017" / image["file_name"], root / "images" / image["file_name"])
        scale = np.asarray([image["width"], image["height"]])
        lines = [f"{index[a['category_id']]} " + " ".join(f"{v:.6f}" for v in
                                                           (annotation_polygon(a["segmentation"]) / scale).ravel())
                 for a in by_image.get(image["id"], [])]
        (root / "labels" / f"{image['file_name'].rsplit('.', 1)[0]}.txt").write_text("\n".join(lines))
    yolo = ground_truth_dict(load_source(root, segments=False))
    files = {im["id"]: im["file_name"] for im in yolo["images"]}
    yolo_by_file: dict[str, list] = {}
    for annotation in yolo["annotations"]:
        yolo_by_file.setdefault(files[annotation["image_id"]], []).append(annotation)

    def bucket(area):
        return 0 if area < 32 ** 2 else 1 if area < 96 ** 2 else 2

    agree = by_box = total = 0
    for image in data["images"]:
        for annotation in by_image.get(image["id"], []):
            match = min(yolo_by_file[image["file_name"]],
                        key=lambda a: np.abs(np.subtract(a["bbox"], annotation["bbox"])).sum())
            total += 1
            agree += bucket(match["area"]) == bucket(annotation["area"])
            by_box += bucket(match["bbox"][2] * match["bbox"][3]) == bucket(annotation["area"])
    assert total == 929
    assert agree / total >= 0.99  # differences: objects within a few % of 32² / 96² (polygon vs mask area)
    assert by_box / total < 0.9  # what box areas gave
