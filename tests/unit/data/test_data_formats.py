"""COCO JSON and YOLO txt parsing, the bad-input policy, ground truth for evaluation, check-data."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from PIL import Image

from pgi_detect.cli.check_data import check_data_main
from pgi_detect.data import DataError, check_dataset, load_source
from pgi_detect.data.records import clip_boxes_to_image
from pgi_detect.data.formats.ground_truth import ground_truth_coco


def write_images(folder, names, size=(40, 60)):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.fromarray(np.full((size[0], size[1], 3), 128, np.uint8)).save(folder / name)


def coco_dict(**overrides):
    data = {
        "images": [{"id": 7, "file_name": "a.png", "width": 60, "height": 40},
                   {"id": 9, "file_name": "b.png", "width": 60, "height": 40}],
        "categories": [{"id": 5, "name": "cat"}, {"id": 2, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 5, "bbox": [10, 10, 20, 10], "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 2, "bbox": [0, 0, 5, 5], "iscrowd": 1},
        ],
    }
    data.update(overrides)
    return data


def write_coco(tmp_path, data=None, images=("a.png", "b.png")):
    write_images(tmp_path / "images", images)
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data if data is not None else coco_dict()))
    return path


def test_coco_categories_contiguous_crowd_excluded_negatives_kept(tmp_path):
    source = load_source(write_coco(tmp_path), tmp_path / "images")
    assert source.category_ids == [2, 5] and source.class_names == ["dog", "cat"]
    by_id = {r.image_id: r for r in source.records}
    assert by_id[7].classes.tolist() == [1]  # cat (id 5) -> index 1; the crowd dog is not a target
    np.testing.assert_allclose(by_id[7].boxes, [[10, 10, 30, 20]])
    assert by_id[9].num_objects == 0  # negative kept
    gt = ground_truth_coco(source)
    assert len(gt.getAnnIds()) == 2  # crowd stays in the evaluation ground truth


def test_malformed_json_names_file_line_and_column(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{\n  "images": [\n    {"id": 1,,}\n  ]\n}')
    with pytest.raises(DataError, match=r"bad\.json: malformed JSON at line 3 column"):
        load_source(path, tmp_path)


def test_unknown_image_and_category_fail_fast_or_skip(tmp_path, caplog):
    data = coco_dict()
    data["annotations"] += [{"id": 3, "image_id": 99, "category_id": 5, "bbox": [1, 1, 5, 5]},
                            {"id": 4, "image_id": 9, "category_id": 77, "bbox": [1, 1, 5, 5]}]
    path = write_coco(tmp_path, data)
    with pytest.raises(DataError, match=r"ann\.json: annotation 3 references unknown image id 99"):
        load_source(path, tmp_path / "images")
    with caplog.at_level(logging.WARNING, logger="pgi_detect.data"):
        source = load_source(path, tmp_path / "images", on_bad_sample="skip")
    assert [r.image_id for r in source.records] == [7]  # image 9 had an unknown category -> dropped
    assert "unknown category id 77" in caplog.text and "2 data problem(s)" in caplog.text


def test_missing_image_fails_fast_or_is_skipped(tmp_path):
    path = write_coco(tmp_path, images=("a.png",))
    with pytest.raises(DataError, match=r"b\.png: image file not found"):
        load_source(path, tmp_path / "images")
    assert [r.image_id for r in load_source(path, tmp_path / "images", on_bad_sample="skip").records] == [7]


def test_boxes_outside_clipped_and_zero_area_dropped_and_reported(tmp_path, caplog):
    data = coco_dict(annotations=[
        {"id": 1, "image_id": 7, "category_id": 5, "bbox": [-10, 30, 100, 50]},  # sticks out: clipped
        {"id": 2, "image_id": 7, "category_id": 5, "bbox": [10, 10, 0, 5]},  # zero width: dropped
        {"id": 3, "image_id": 7, "category_id": 5, "bbox": [70, 10, 5, 5]},  # entirely outside: dropped
    ])
    path = write_coco(tmp_path, data)
    with caplog.at_level(logging.WARNING, logger="pgi_detect.data"):
        source = load_source(path, tmp_path / "images")  # warnings never stop loading
    record = next(r for r in source.records if r.image_id == 7)
    np.testing.assert_allclose(record.boxes, [[0, 30, 60, 40]])
    kinds = sorted(p.kind for p in source.problems)
    assert kinds == ["clipped_box", "degenerate_box", "degenerate_box"]
    assert "a.png" in caplog.text


def write_yolo(root, labels: dict[str, str], images=("a.jpg", "b.jpg"), names="names: [cat, dog]\n"):
    write_images(root / "images", images, size=(50, 100))
    (root / "labels").mkdir(parents=True)
    for stem, text in labels.items():
        (root / "labels" / f"{stem}.txt").write_text(text)
    if names is not None:
        (root / "classes.yaml").write_text(names)
    return root


def test_yolo_boxes_polygons_negatives_and_orphans(tmp_path):
    root = write_yolo(tmp_path, {"a": "1 0.5 0.5 0.2 0.4\n0 0.1 0.1 0.3 0.1 0.2 0.3\n1 0.5 0.5 0.2 0.4\n",
                                 "ghost": "0 0.5 0.5 0.1 0.1\n"})
    source = load_source(root)
    assert source.class_names == ["cat", "dog"] and source.category_ids == [0, 1]
    assert [r.path.name for r in source.records] == ["a.jpg", "b.jpg"]
    assert source.unlabeled_images == [str(root / "images" / "b.jpg")]
    assert [p.kind for p in source.problems] == ["duplicate_label", "orphan_label"]  # both warnings
    assert "a.txt" in source.problems[0].file and "ghost.txt" in source.problems[1].file
    a = source.records[0]  # image headers read while loading: pixel boxes and sizes
    assert (a.height, a.width, a.normalized) == (50, 100, False)
    order = np.argsort(a.classes)
    assert a.classes[order].tolist() == [0, 1]  # duplicate row removed
    np.testing.assert_allclose(a.boxes[order], [[10, 5, 30, 15], [40, 15, 60, 35]], atol=1e-4)
    gt = ground_truth_coco(source)
    assert sorted(gt.getImgIds()) == [0, 1] and gt.loadAnns(gt.getAnnIds())[0]["category_id"] in (0, 1)


def test_yolo_names_dict_and_argument(tmp_path):
    root = write_yolo(tmp_path / "d", {"a": "1 0.5 0.5 0.2 0.2"}, names="names:\n  0: cat\n  1: dog\n")
    assert load_source(root).class_names == ["cat", "dog"]
    root = write_yolo(tmp_path / "n", {"a": "1 0.5 0.5 0.2 0.2"}, names=None)
    with pytest.raises(DataError, match="classes.yaml"):
        load_source(root)
    assert load_source(root, class_names=["x", "y"]).class_names == ["x", "y"]


def test_yolo_malformed_line_and_bad_class_name_file_and_line(tmp_path):
    root = write_yolo(tmp_path / "m", {"a": "0 0.5 0.5 0.2 0.2\n0 0.5 oops 0.1 0.1\n"})
    with pytest.raises(DataError, match=r"a\.txt:2: non-numeric"):
        load_source(root)
    assert [r.path.name for r in load_source(root, on_bad_sample="skip").records] == ["b.jpg"]
    root = write_yolo(tmp_path / "c", {"b": "5 0.5 0.5 0.2 0.2\n"})
    with pytest.raises(DataError, match=r"b\.txt:1: class 5 is not an index"):
        load_source(root)


def test_check_data_reports_problems_and_exit_code(tmp_path, capsys):
    path = write_coco(tmp_path, images=("a.png",))
    assert check_data_main(["--path", str(path), "--images", str(tmp_path / "images"), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "b.png" in out and "missing_image" in out and "images: 1" in out
    write_images(tmp_path / "images", ["b.png"])
    report = check_dataset(path, tmp_path / "images", progress=False)
    assert report.ok and report.num_images == 2 and report.num_annotations == 1 and report.num_crowd == 1
    assert report.per_class == {"dog": 0, "cat": 1} and len(report.negatives) == 1
    (tmp_path / "images" / "b.png").write_bytes(b"not an image")
    report = check_dataset(path, tmp_path / "images", progress=False)
    assert [p.kind for p in report.problems] == ["corrupt_image"] and report.num_images == 1


def test_check_data_size_mismatch_and_malformed_json(tmp_path):
    data = coco_dict()
    data["images"][1]["width"] = 40  # b.png is 60x40 on disk
    report = check_dataset(write_coco(tmp_path, data), tmp_path / "images", progress=False)
    assert [p.kind for p in report.problems] == ["size_mismatch"]
    (tmp_path / "ann.json").write_text("{")
    report = check_dataset(tmp_path / "ann.json", tmp_path / "images", progress=False)
    assert not report.ok and "line 1 column 2" in report.problems[0].message


def test_coco128_loads_like_the_reference(coco128_dir):
    source = load_source(coco128_dir / "annotations" / "instances_train2017.json")
    assert len(source.records) == 128 and source.num_classes == 80
    assert source.category_ids[11:13] == [13, 14]  # id 12 does not exist in COCO
    assert sum(r.num_objects for r in source.records) == 929  # 939 annotations - 10 crowd
    assert sum(r.num_objects == 0 for r in source.records) == 2


def test_coco128_val_yolo_report(coco128_val_yolo_dir):
    report = check_dataset(coco128_val_yolo_dir, progress=False, decode=False)
    assert report.num_images == 128 and len(report.class_names) == 80
    # Label files without an image are warnings, images without a label file negatives.
    assert all(p.kind == "orphan_label" for p in report.problems)
    assert set(report.unlabeled_images) <= set(report.negatives)


def test_check_data_yolo_unreadable_header_with_and_without_decoding(tmp_path):
    root = write_yolo(tmp_path, {"a": "0 0.5 0.5 0.2 0.2\n"}, images=("a.png", "b.png"))
    (root / "images" / "b.png").write_bytes(b"not an image")
    for decode in (True, False):
        report = check_dataset(root, decode=decode, progress=False)
        assert [(p.kind, p.file.endswith("b.png")) for p in report.problems] == [("corrupt_image", True)]
        assert report.num_images == 1


def test_clip_boxes_tolerance_and_min_size():
    boxes = np.asarray([[-0.5, 0, 10, 10], [-3, 0, 10, 10], [5, 5, 5.0005, 9]], np.float32)
    _, keep, clipped = clip_boxes_to_image(boxes, 20, 20)
    assert keep.tolist() == [True, True, True] and clipped.tolist() == [False, True, False]
    _, keep, clipped = clip_boxes_to_image(boxes, 20, 20, report_tolerance=0.1, min_size=1e-3)
    assert keep.tolist() == [True, True, False] and clipped.tolist() == [True, True, False]
