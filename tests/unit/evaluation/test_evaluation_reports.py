"""Evaluation reports: torchmetrics' MeanAveragePrecision checked against pycocotools (why CocoDetectionMetric
stays), COCO matching equal to pycocotools' evalImgs, per-class AP from the accumulated arrays, P/R/F1 curves, the
confusion matrix, and the CSV/PNG files."""
from __future__ import annotations

import contextlib
import csv
import io
import json

import faster_coco_eval
import numpy as np
import pycocotools.cocoeval
import pytest
from PIL import Image

from conftest import load_script_module
from pgi_detect.evaluation import CocoEvaluation, index_coco, score_detections
from pgi_detect.evaluation.class_metrics import confidence_curves, format_table, moving_average
from pgi_detect.evaluation.confusion import confusion_matrix
from pgi_detect.evaluation.matching import match_detections
from pgi_detect.evaluation.plots import plot_history, save_report_plots
from pgi_detect.evaluation.report import build_report, write_class_table_csv, write_confusion_csv


@pytest.fixture(scope="module")
def comparison():
    return load_script_module("compare_torchmetrics_map")


@pytest.fixture
def coco128_case(coco128_dir, comparison):
    gt = json.loads((coco128_dir / "annotations" / "instances_train2017.json").read_text())
    return gt, comparison.perturbed_detections(gt)


def test_torchmetrics_map_cannot_replace_our_metric(coco128_dir, comparison):
    """The finding recorded in docs/evaluation.md: MeanAveragePrecision equals pycocotools on crowd regions and
    dataset category ids only with COCO's float64 thresholds, and scores the images a DistributedSampler repeats
    twice; CocoDetectionMetric equals pycocotools in every case."""
    gt = json.loads((coco128_dir / "annotations" / "instances_train2017.json").read_text())
    assert sum(a["iscrowd"] for a in gt["annotations"]) == 10 and max(c["id"] for c in gt["categories"]) == 90
    records = {(r["case"], r["scorer"]): r for r in comparison.compare(gt, world_size=5)}
    padded = "DistributedSampler x5"
    assert records[(padded, "CocoDetectionMetric")]["visits"] == 130  # 2 images repeated
    for case in ("each image once", padded):
        assert records[(case, "CocoDetectionMetric")]["max_difference"] <= 1e-6
    assert records[("each image once", "MAP, COCO thresholds")]["max_difference"] <= 1e-6
    assert records[("each image once", "MAP, default thresholds")]["max_difference"] > 1e-4
    assert records[(padded, "MAP, COCO thresholds")]["max_difference"] > 1e-4


def _pycocotools_matches(gt: dict, dets: list[dict], iou: float, by_category: bool, max_dets: int) -> dict:
    """{detection index: (matched annotation id or 0, ignored)} from pycocotools' evalImgs; detections past the cap
    are absent."""
    api = index_coco(gt)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = pycocotools.cocoeval.COCOeval(api, api.loadRes([dict(d) for d in dets]), "bbox")
        params = evaluator.params
        params.iouThrs, params.areaRng, params.areaRngLbl = np.array([iou]), [[0, 1e10]], ["all"]
        params.maxDets, params.useCats = [max_dets], int(by_category)
        evaluator.evaluate()
    found = {}
    for item in filter(None, evaluator.evalImgs):
        for det_id, gt_id, ignored in zip(item["dtIds"], item["dtMatches"][0], item["dtIgnore"][0]):
            found[det_id - 1] = (int(gt_id), bool(ignored))
    return found


@pytest.mark.parametrize("iou, by_category, max_dets", [(0.5, True, 100), (0.5, True, 3), (0.45, False, 4)])
def test_matching_equals_pycocotools(coco128_case, iou, by_category, max_dets):
    gt, dets = coco128_case
    image_ids = [img["id"] for img in gt["images"]]
    matches = match_detections(gt, dets, image_ids, iou, by_category, max_dets)
    annotation_ids = [a["id"] for a in index_coco(gt, faster_coco_eval.COCO).loadAnns(
        index_coco(gt, faster_coco_eval.COCO).getAnnIds(imgIds=image_ids))]
    reference = _pycocotools_matches(gt, dets, iou, by_category, max_dets)
    ours = {}
    for index in range(len(dets)):
        matched = matches.det_gt[index]
        ours[index] = (annotation_ids[matched] if matched >= 0 else 0, bool(matches.det_ignored[index]))
    expected = {index: reference.get(index, (0, True)) for index in range(len(dets))}  # capped: ignored
    # pycocotools also reports the crowd region a detection matched; ours flags it ignored and unmatched
    expected = {i: (0, True) if ignored else (gt_id, False) for i, (gt_id, ignored) in expected.items()}
    assert ours == expected
    assert 0 < matches.true_positive.sum() < len(dets) and matches.det_ignored.any()


@pytest.mark.parametrize("backend", ["faster", "pycocotools"])
def test_per_class_ap_from_the_accumulated_arrays(coco128_case, backend):
    gt, dets = coco128_case
    scores = score_detections(gt, dets, backend)
    arrays = scores.arrays
    assert arrays.precision.shape == (10, 101, 80) and len(arrays.category_ids) == 80
    ap, ap50 = arrays.class_ap(), arrays.class_ap(iou_index=0)
    assert np.isnan(ap).sum() == 9  # 9 of the 80 categories have no box in coco128
    assert np.nanmean(ap) == pytest.approx(scores.stats["AP"], abs=1e-12)
    assert np.nanmean(ap50) == pytest.approx(scores.stats["AP50"], abs=1e-12)
    other = score_detections(gt, dets, "pycocotools" if backend == "faster" else "faster").arrays
    np.testing.assert_allclose(arrays.precision, other.precision, atol=1e-6)


def _tiny_case() -> tuple[dict, list[dict]]:
    """Image 1: class 7 at A, class 9 at B, a class-7 crowd region C; image 2: an undetected class-9 box."""
    def ann(i, image, category, box, crowd=0):
        return {"id": i, "image_id": image, "category_id": category, "bbox": box, "area": box[2] * box[3],
                "iscrowd": crowd}

    gt = {"images": [{"id": 1, "width": 100, "height": 100}, {"id": 2, "width": 100, "height": 100}],
          "annotations": [ann(1, 1, 7, [0, 0, 10, 10]), ann(2, 1, 9, [20, 20, 10, 10]),
                          ann(3, 1, 7, [50, 50, 30, 30], crowd=1), ann(4, 2, 9, [0, 0, 20, 20])],
          "categories": [{"id": 7, "name": "seven"}, {"id": 9, "name": "nine"}]}
    dets = [
        {"image_id": 1, "category_id": 7, "bbox": [0, 0, 10, 10], "score": 0.9},    # right class at A
        {"image_id": 1, "category_id": 7, "bbox": [20, 20, 10, 10], "score": 0.8},  # wrong class at B
        {"image_id": 1, "category_id": 9, "bbox": [21, 21, 10, 10], "score": 0.7},  # B, taken already (agnostic)
        {"image_id": 1, "category_id": 7, "bbox": [55, 55, 10, 10], "score": 0.6},  # inside the crowd region
        {"image_id": 1, "category_id": 9, "bbox": [0, 0, 10, 10], "score": 0.1},    # below the matrix's 0.25
    ]
    return gt, dets


def test_confusion_matrix_counts_and_normalisation():
    gt, dets = _tiny_case()
    matrix = confusion_matrix(gt, dets, [1, 2], category_ids=[7, 9])
    # rows predicted (seven, nine, background), columns true
    assert matrix.counts.tolist() == [[1, 1, 0], [0, 0, 1], [0, 1, 0]]
    normalised = matrix.normalised()
    np.testing.assert_allclose(normalised[:, 0], [1, 0, 0])
    np.testing.assert_allclose(normalised[:, 1], [0.5, 0, 0.5])
    np.testing.assert_allclose(normalised[:, 2], [0, 1, 0])


def test_confidence_curves_follow_the_detections():
    gt, dets = _tiny_case()
    matches = match_detections(gt, dets, [1, 2], 0.5)
    # class 7: 0.9 TP, 0.8 FP (class-aware: no class-7 box at B), 0.6 ignored (crowd); one box in total
    # class 9: 0.7 TP (B), 0.1 FP; two boxes. Between detections P and R are interpolated linearly (val.py's rule),
    # above the highest score P = 1 and R = 0, below the lowest they keep the last values.
    curves = confidence_curves(matches, [7, 9], grid=np.array([0.1, 0.4, 0.7, 0.8, 0.85, 0.9, 0.95]))
    np.testing.assert_allclose(curves.precision[0], [0.5, 0.5, 0.5, 0.5, 0.75, 1.0, 1.0])
    np.testing.assert_allclose(curves.recall[0], [1, 1, 1, 1, 1, 1, 0])
    np.testing.assert_allclose(curves.precision[1], [0.5, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0])
    np.testing.assert_allclose(curves.recall[1], [0.5, 0.5, 0.5, 0, 0, 0, 0])
    np.testing.assert_allclose(curves.f1[0], 2 * curves.precision[0] * curves.recall[0] /
                               (curves.precision[0] + curves.recall[0] + 1e-16))
    assert moving_average(np.array([0.0, 0, 3, 0, 0]), 0.2).tolist() == [0, 1, 1, 1, 0]


def test_report_table_plots_and_files(coco128_case, tmp_path):
    gt, dets = coco128_case
    image_ids = sorted(img["id"] for img in gt["images"])
    scores = score_detections(gt, dets, "faster", image_ids)
    evaluation = CocoEvaluation(scores.stats, dets, image_ids, scores.arrays)
    categories = sorted(gt["categories"], key=lambda c: c["id"])
    report = build_report(evaluation, gt, "val", [c["name"] for c in categories], [c["id"] for c in categories])
    overall, rows = report.rows[0], report.rows[1:]
    assert len(rows) == 71 and overall.images == 128 and overall.instances == 929  # 939 boxes, 10 crowd
    assert overall.ap == scores.stats["AP"] and overall.ap50 == scores.stats["AP50"]
    assert np.mean([r.ap for r in rows]) == pytest.approx(overall.ap, abs=1e-12)
    person = next(r for r in rows if r.name == "person")
    assert person.instances == sum(a["category_id"] == 1 and not a["iscrowd"] for a in gt["annotations"])
    assert 0 < overall.precision < 1 and 0 < overall.recall < 1
    assert overall.precision == pytest.approx(np.mean([r.precision for r in rows]))
    assert report.confusion.counts.shape == (81, 81) and report.confusion.counts.sum() > 0
    table = format_table(report.rows)
    assert len(table.splitlines()) == 73 and "person" in table

    files = save_report_plots(report, tmp_path)
    files["per_class"] = write_class_table_csv(report.rows, tmp_path / "per_class.csv")
    files["confusion"] = write_confusion_csv(report.confusion, report.matrix_names, tmp_path / "matrix.csv")
    for name in ("pr_curve", "f1_curve", "p_curve", "r_curve", "confusion_matrix"):
        with Image.open(files[name]) as image:
            assert image.size[0] > 1000 and image.size[1] > 600, name
    with files["per_class"].open() as handle:
        written = list(csv.DictReader(handle))
    assert written[0]["class"] == "all" and float(written[0]["AP50-95"]) == pytest.approx(overall.ap, abs=1e-6)
    assert len(written) == 72
    history = [{"epoch": 0, "train/loss": 3.0, "train/lr": 0.01}, {"epoch": 1, "train/loss": 2.0, "val/mAP": 0.1}]
    assert plot_history(history, tmp_path / "results.png").exists()
    assert plot_history([{"epoch": 0}], tmp_path / "none.png") is None


def test_the_report_is_the_same_from_a_dict_or_either_backends_coco_object(coco128_case):
    """build_report indexes the ground truth once for both matching passes; a faster-coco-eval object is used as it
    is, a pycocotools one (the datamodule's) or a dict indexed once."""
    gt, dets = coco128_case
    image_ids = sorted(img["id"] for img in gt["images"])
    scores = score_detections(gt, dets, "faster", image_ids)
    evaluation = CocoEvaluation(scores.stats, dets, image_ids, scores.arrays)
    expected = build_report(evaluation, gt, "val")
    fast = index_coco(gt, faster_coco_eval.COCO)
    for given in (index_coco(gt), fast, fast):  # the faster object twice: matching leaves it as it was
        report = build_report(evaluation, given, "val")
        assert [r.as_dict() for r in report.rows] == [r.as_dict() for r in expected.rows]
        assert (report.confusion.counts == expected.confusion.counts).all() and report.names == expected.names
