"""Segment labels: parsing (COCO polygons, YOLO polygon lines), mirrored copy-paste, segment-aware warping, and the
training pipeline with copy-paste."""
from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from pgi_detect.data import AugmentationConfig, DetectionDataModule, DetectionDataset, load_source, make_synthetic_coco
from pgi_detect.data.augment import transforms as aug
from pgi_detect.data.records import ImageRecord, RecordTable, merge_polygons, pack_segments

RED = (250, 20, 20)


def colour_mask(image: np.ndarray, colour) -> np.ndarray:
    return np.abs(image.astype(int) - np.asarray(colour)).sum(-1) < 30


def mask_bbox(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def triangle_canvas():
    image = np.full((80, 100, 3), 114, np.uint8)
    polygon = np.array([[10, 20], [40, 20], [25, 60]], np.float32)
    cv2.fillPoly(image, [polygon.astype(np.int32)], RED)
    box = np.array([[10, 20, 40, 60]], np.float32)
    return image, box, polygon


# ---------------------------------------------------------------------------------------------------- copy-paste


def test_copy_paste_mirrors_pixels_box_class_and_polygon():
    image, boxes, polygon = triangle_canvas()
    out, out_boxes, classes, segments = aug.copy_paste(image, boxes, np.array([3]), [polygon], 1.0,
                                                       np.random.default_rng(0))
    assert classes.tolist() == [3, 3] and len(segments) == 2
    np.testing.assert_allclose(out_boxes[1], [100 - 40, 20, 100 - 10, 60])  # mirror of the original box
    np.testing.assert_allclose(segments[1][:, 0], 100 - polygon[:, 0])
    np.testing.assert_allclose(segments[1][:, 1], polygon[:, 1])
    red = colour_mask(out, RED)
    assert np.array_equal(red[:, 50:], red[:, :50][:, ::-1])  # the pasted pixels are the mirrored object
    assert red[:, 50:].sum() == colour_mask(image, RED).sum()
    np.testing.assert_allclose(mask_bbox(red[:, 50:]) + [50, 0, 50, 0], out_boxes[1], atol=1.5)
    assert np.array_equal(out[:, :50], image[:, :50])  # nothing else changed
    assert np.array_equal(out[~red], image[~red])


def test_copy_paste_skips_mirrors_that_cover_existing_boxes():
    image = np.full((80, 100, 3), 114, np.uint8)
    rects = np.array([[10, 5, 40, 30], [60, 5, 90, 30], [10, 50, 30, 70]], np.float32)  # 0 and 1 are mirrors
    segments = [np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], np.float32) for x1, y1, x2, y2 in rects]
    for (x1, y1, x2, y2), colour in zip(rects.astype(int), [(200, 0, 0), (0, 200, 0), (0, 0, 200)]):
        image[y1:y2, x1:x2] = colour
    out, out_boxes, classes, out_segments = aug.copy_paste(image, rects, np.array([0, 1, 2]), segments, 1.0,
                                                           np.random.default_rng(0))
    assert len(out_boxes) == 4 and classes.tolist() == [0, 1, 2, 2]
    np.testing.assert_allclose(out_boxes[3], [70, 50, 90, 70])
    assert np.array_equal(out[5:30], image[5:30])  # objects 0 and 1 untouched
    assert colour_mask(out[50:70, 70:90], (0, 0, 200)).mean() > 0.9
    # an object whose mirror overlaps it (straddling the centre line) is not pasted either
    centre = np.array([[40, 10, 70, 40]], np.float32)
    _, centre_boxes, _, _ = aug.copy_paste(image, centre, np.array([0]), [aug.resample_segment(
        np.array([[40, 10], [70, 10], [70, 40], [40, 40]], np.float32), 8)], 1.0, np.random.default_rng(0))
    assert len(centre_boxes) == 1


def test_copy_paste_tries_round_fraction_of_objects_and_no_draw_without_segments():
    image = np.full((200, 200, 3), 114, np.uint8)
    rects = np.array([[5, 10 + 18 * i, 20, 25 + 18 * i] for i in range(10)], np.float32)
    segments = [np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], np.float32) for x1, y1, x2, y2 in rects]
    _, out_boxes, _, _ = aug.copy_paste(image, rects, np.zeros(10, np.int64), segments, 0.3, np.random.default_rng(1))
    assert len(out_boxes) == 13
    rng = np.random.default_rng(5)
    state = rng.bit_generator.state
    result = aug.copy_paste(image, rects[:0], np.zeros(0, np.int64), [], 0.3, rng)
    assert result[0] is image and rng.bit_generator.state == state


# ---------------------------------------------------------------------------------------------------- warping


def test_segment_warp_scale_translation_gives_exact_box():
    rectangle = np.array([[10, 20], [50, 20], [50, 40], [10, 40]], np.float32)
    matrix = np.array([[2.0, 0, 5], [0, 2.0, 7], [0, 0, 1]])
    np.testing.assert_allclose(aug.transform_segments([rectangle], matrix, (200, 200))[0], [25, 47, 105, 87],
                               atol=1e-4)
    # only the points inside the output count: clipped to the image, a polygon entirely outside gives a zero box
    np.testing.assert_allclose(aug.transform_segments([rectangle], matrix, (60, 70))[0], [25, 47, 60, 70], atol=0.2)
    outside = rectangle + 500
    assert aug.transform_segments([outside], matrix, (60, 70))[0].tolist() == [0, 0, 0, 0]


def test_resample_segment_is_even_and_keeps_vertices():
    square = np.array([[0, 0], [10, 0], [10, 10], [0, 10]], np.float32)
    points = aug.resample_segment(square)
    assert len(points) == aug.SEGMENT_RESAMPLE_POINTS + 4
    steps = np.hypot(*np.diff(points[:1000], axis=0).T)
    np.testing.assert_allclose(steps[steps < 0.1 + 1e-6], 40 / 1000, atol=1e-6)  # 1000 evenly spaced points


def test_segment_box_shortcut_matches_full_resampling():
    rng = np.random.default_rng(0)
    polygons = [rng.uniform(-40, 170, 2) + rng.uniform(-30, 30, (int(rng.integers(3, 12)), 2)) for _ in range(60)]
    config = AugmentationConfig(degrees=30, shear=5, scale=0.5, translate=0.2)
    for seed in range(5):
        matrix, _ = aug.affine_matrix(np.random.default_rng(seed), config, (128, 128), (128, 128))
        full = aug._resampled_boxes([p.astype(np.float64) for p in polygons], matrix, (128, 128), 1000)
        full[~np.isfinite(full).all(1)] = 0
        np.testing.assert_allclose(aug.transform_segments(polygons, matrix, (128, 128)), full, atol=1e-3)


def test_rotated_polygon_box_is_tighter_than_corner_warp():
    t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    circle = np.stack([64 + 20 * np.cos(t), 64 + 20 * np.sin(t)], 1).astype(np.float32)
    box = np.concatenate([circle.min(0), circle.max(0)])[None]
    angle = math.radians(45)
    c, s = math.cos(angle), math.sin(angle)
    to_centre = np.array([[1, 0, -64], [0, 1, -64], [0, 0, 1.0]])
    matrix = np.linalg.inv(to_centre) @ np.array([[1.5 * c, 1.5 * s, 0], [-1.5 * s, 1.5 * c, 0], [0, 0, 1]]) @ to_centre
    from_segments = aug.transform_segments([circle], matrix, (128, 128))[0]
    from_corners = aug.transform_boxes(box, matrix, (128, 128))[0]
    assert (from_segments[:2] >= from_corners[:2] + 5).all() and (from_segments[2:] <= from_corners[2:] - 5).all()
    np.testing.assert_allclose(from_segments[2:] - from_segments[:2], [60, 60], atol=0.5)  # circle diameter · 1.5


@pytest.mark.parametrize("degrees,shear", [(0.0, 0.0), (30.0, 0.0), (10.0, 8.0)])
def test_random_perspective_segment_boxes_follow_pixels(degrees, shear):
    image = np.full((128, 128, 3), 114, np.uint8)
    polygon = np.array([[30, 40], [90, 50], [50, 85]], np.float32)
    cv2.fillPoly(image, [polygon.astype(np.int32)], RED)
    boxes = np.concatenate([polygon.min(0), polygon.max(0)])[None]
    config = AugmentationConfig(degrees=degrees, shear=shear, scale=0.3, translate=0.1)
    out, out_boxes, classes = aug.random_perspective(image, boxes, np.array([0]), config, np.random.default_rng(3),
                                                     border=0, segments=[polygon])
    assert classes.tolist() == [0]
    np.testing.assert_allclose(out_boxes[0], mask_bbox(colour_mask(out, RED)), atol=2.5)
    # same randomness, same image; without segments the box is the (looser or equal) corner warp
    out2, corner_boxes, _ = aug.random_perspective(image, boxes, np.array([0]), config, np.random.default_rng(3))
    assert np.array_equal(out, out2)
    assert (corner_boxes[0, :2] <= out_boxes[0, :2] + 1e-3).all()
    assert (corner_boxes[0, 2:] >= out_boxes[0, 2:] - 1e-3).all()


def test_box_candidates_area_threshold_with_segments():
    config = AugmentationConfig()
    before, after = np.array([[0, 0, 100, 100]], np.float32), np.array([[0, 0, 20, 20]], np.float32)  # 4 %
    assert aug.box_candidates(before, after, config).tolist() == [False]
    assert aug.box_candidates(before, after, config, config.min_area_ratio_segments).tolist() == [True]
    assert AugmentationConfig.disabled().copy_paste == 0.0 and AugmentationConfig().copy_paste == 0.3
    assert AugmentationConfig.disabled().min_area_ratio_segments == 0.01


# ---------------------------------------------------------------------------------------------------- parsing


def test_merge_polygons_covers_every_part():
    a = np.array([[0, 0], [10, 0], [10, 10], [0, 10]], np.float32)
    b = a + [30, 5]
    merged = merge_polygons([a, b])
    np.testing.assert_allclose(np.concatenate([merged.min(0), merged.max(0)]), [0, 0, 40, 15])
    mask = np.zeros((20, 50), np.uint8)
    cv2.fillPoly(mask, [merged.astype(np.int32)], 1)
    assert mask[1:10, 1:10].all() and mask[6:15, 31:40].all() and mask[0:20, 15:25].sum() <= 20  # thin bridge only


def write_coco_with_polygons(tmp_path):
    (tmp_path / "images").mkdir()
    Image.fromarray(np.full((40, 60, 3), 128, np.uint8)).save(tmp_path / "images" / "a.png")
    Image.fromarray(np.full((40, 60, 3), 128, np.uint8)).save(tmp_path / "images" / "b.png")
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 10], "iscrowd": 0,
         "segmentation": [[10, 10, 30, 10, 30, 20, 10, 20]]},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [0, 25, 50, 10], "iscrowd": 0,  # two parts
         "segmentation": [[0, 25, 10, 25, 10, 35], [40, 25, 50, 25, 50, 35, 40, 35]]},
        {"id": 3, "image_id": 1, "category_id": 1, "bbox": [35, 2, 10, 6], "iscrowd": 0,  # RLE → box rectangle
         "segmentation": {"counts": [0, 10], "size": [40, 60]}},
        {"id": 4, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "iscrowd": 1,
         "segmentation": {"counts": [0, 10], "size": [40, 60]}},
        {"id": 5, "image_id": 2, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": 0},  # no polygon anywhere
    ]
    data = {"images": [{"id": 1, "file_name": "a.png", "width": 60, "height": 40},
                       {"id": 2, "file_name": "b.png", "width": 60, "height": 40}],
            "annotations": annotations, "categories": [{"id": 1, "name": "x"}]}
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return path


def test_coco_json_segments(tmp_path):
    path = write_coco_with_polygons(tmp_path)
    a, b = load_source(path, tmp_path / "images").records
    segments = a.pixel_segments(40, 60)
    assert len(segments) == 3 and a.segment_points.dtype == np.float32 and a.segment_offsets.dtype == np.int32
    np.testing.assert_allclose(segments[0], [[10, 10], [30, 10], [30, 20], [10, 20]])
    for polygon, box in zip(segments, a.boxes):  # polygon bounds = the JSON bbox here (parts joined, RLE → box)
        np.testing.assert_allclose(np.concatenate([polygon.min(0), polygon.max(0)]), box)
    assert not b.has_segments and b.pixel_segments(40, 60) is None
    assert not any(r.has_segments for r in load_source(path, tmp_path / "images", segments=False).records)


def test_yolo_polygon_segments(tmp_path):
    for folder in ("images", "labels"):
        (tmp_path / folder).mkdir()
    (tmp_path / "classes.yaml").write_text("names: [a, b]\n")
    for stem in ("p", "q"):
        Image.fromarray(np.zeros((50, 100, 3), np.uint8)).save(tmp_path / "images" / f"{stem}.jpg")
    (tmp_path / "labels" / "p.txt").write_text("0 0.1 0.1 0.3 0.1 0.2 0.3\n1 0.5 0.5 0.2 0.4\n")
    (tmp_path / "labels" / "q.txt").write_text("1 0.5 0.5 0.2 0.4\n")
    p, q = load_source(tmp_path).records
    order = np.argsort(p.classes)
    segments = p.pixel_segments(50, 100)
    np.testing.assert_allclose(segments[order[0]], [[10, 5], [30, 5], [20, 15]], atol=1e-4)
    np.testing.assert_allclose(segments[order[1]], [[40, 15], [60, 15], [60, 35], [40, 35]], atol=1e-4)
    assert not q.has_segments
    assert not load_source(tmp_path, segments=False).records[0].has_segments


def test_record_table_holds_only_the_segments_records_have():
    """Packing records: objects of a record without segments own no points (none are made up for them)."""
    triangle, square = np.float32([[1, 1], [9, 1], [5, 8]]), np.float32([[2, 2], [6, 2], [6, 6], [2, 6]])
    with_segments = ImageRecord(Path("a.jpg"), 1, np.float32([[1, 1, 9, 8], [2, 2, 6, 6]]), np.int64([0, 1]), 60, 40)
    with_segments.segment_points, with_segments.segment_offsets = pack_segments([triangle, square])
    plain = ImageRecord(Path("b.jpg"), 2, np.float32([[0, 0, 5, 5]]), np.int64([1]), 60, 40)
    table = RecordTable.from_records([plain, with_segments])
    assert table.points.shape == (7, 2) and table.point_offsets.tolist() == [0, 0, 3, 7]
    b, a = table
    assert not b.has_segments and a.has_segments and a.segment_offsets.tolist() == [0, 3, 7]
    for polygon, expected in zip(a.pixel_segments(40, 60), (triangle, square)):
        np.testing.assert_array_equal(polygon, expected)
    boxes_only = RecordTable.from_records([plain])
    assert boxes_only.points is None and boxes_only.point_offsets is None and not boxes_only.any_segments


def test_coco128_segments(coco128_dir):
    source = load_source(coco128_dir / "annotations" / "instances_train2017.json")
    with_segments = [r for r in source.records if r.has_segments]
    assert len(with_segments) >= 120
    for record in with_segments:
        segments = record.pixel_segments(record.height, record.width)
        assert len(segments) == len(record.boxes)
        bounds = np.stack([np.concatenate([s.min(0), s.max(0)]) for s in segments])
        assert np.abs(bounds - record.boxes).max() < 3  # polygon bounds ≈ the JSON bbox


# ---------------------------------------------------------------------------------------------------- pipeline


def count_objects(source, copy_paste, samples=24):
    config = AugmentationConfig(**{**AugmentationConfig.disabled().to_dict(), "mosaic": 1.0, "scale": 0.5,
                                   "translate": 0.1, "copy_paste": copy_paste})
    dataset = DetectionDataset(source, img_size=128, train=True, augmentation=config, seed=2)
    total = 0
    for index in range(samples):
        sample = dataset[index % len(dataset)]
        boxes = sample["boxes"]
        assert sample["pipeline"] == "mosaic" and sample["image"].shape == (3, 128, 128)
        assert (boxes >= 0).all() and (boxes <= 128).all()
        assert ((boxes[:, 2] - boxes[:, 0]) > 2).all() and ((boxes[:, 3] - boxes[:, 1]) > 2).all()
        total += len(boxes)
    return total, dataset


def test_train_pipeline_with_copy_paste_on_synthetic_shapes(tmp_path):
    split = make_synthetic_coco(tmp_path, num_train=12, num_val=2, img_size=96, seed=1)["train"]
    source = load_source(split.annotation_file)
    assert all(r.has_segments for r in source.records)
    plain, _ = count_objects(source, 0.0)
    pasted, dataset = count_objects(source, 1.0)
    assert dataset.use_segments and pasted > plain * 1.2
    dataset.set_mosaic(False)  # close-mosaic: letterbox pipeline, no segments involved
    assert dataset[0]["pipeline"] == "letterbox"
    box_only = load_source(split.annotation_file, segments=False)
    assert not DetectionDataset(box_only, 128, train=True).use_segments


def test_datamodule_loads_segments_for_training_only(tmp_path):
    split = make_synthetic_coco(tmp_path, num_train=4, num_val=2, img_size=64, seed=1)
    ann = str(split["train"].annotation_file)
    dm = DetectionDataModule(train=ann, val=str(split["val"].annotation_file), img_size=64, num_workers=0)
    assert dm.source("train").records[0].has_segments and not dm.source("val").records[0].has_segments
    off = DetectionDataModule(train=ann, img_size=64, num_workers=0, segments=False)
    assert not off.source("train").records[0].has_segments
    no_mosaic = DetectionDataModule(train=ann, img_size=64, num_workers=0, augmentation={"mosaic": 0.0})
    assert not no_mosaic.source("train").records[0].has_segments


def test_coco128_train_pipeline_with_copy_paste(coco128_dir):
    source = load_source(coco128_dir / "annotations" / "instances_train2017.json")
    plain, _ = count_objects(source, 0.0, samples=16)
    pasted, _ = count_objects(source, 1.0, samples=16)
    assert pasted > plain
