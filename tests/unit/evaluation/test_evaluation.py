"""COCO scoring: faster-coco-eval must agree with pycocotools, and the json helpers must be lossless."""
from __future__ import annotations

import json
import random

import faster_coco_eval
import pycocotools.coco
import pytest
import torch

from pgi_detect.evaluation import (
    evaluate_detections,
    fitness,
    index_coco,
    predictions_to_coco,
    score_detections,
    write_detections_json,
)


def _load_gt(coco128_dir):
    return json.loads((coco128_dir / "annotations" / "instances_train2017.json").read_text())


def _perturbed_detections(gt: dict, seed: int = 0) -> list[dict]:
    """Ground-truth boxes jittered, with random scores, some dropped and some false positives added."""
    rng = random.Random(seed)
    category_ids = [c["id"] for c in gt["categories"]]
    dets = []
    for ann in gt["annotations"]:
        if rng.random() < 0.15:
            continue
        x, y, w, h = ann["bbox"]
        jitter = [rng.gauss(0, 0.08) for _ in range(4)]
        box = [x + jitter[0] * w, y + jitter[1] * h, w * (1 + jitter[2]), h * (1 + jitter[3])]
        category = ann["category_id"] if rng.random() > 0.1 else rng.choice(category_ids)
        dets.append({"image_id": ann["image_id"], "category_id": category,
                     "bbox": [round(v, 3) for v in box], "score": round(rng.random(), 5)})
    images = [img["id"] for img in gt["images"]]
    for _ in range(200):
        dets.append({"image_id": rng.choice(images), "category_id": rng.choice(category_ids),
                     "bbox": [rng.uniform(0, 400), rng.uniform(0, 300), rng.uniform(5, 200), rng.uniform(5, 200)],
                     "score": round(rng.random() * 0.5, 5)})
    return dets


def test_faster_matches_pycocotools(coco128_dir):
    gt = _load_gt(coco128_dir)
    dets = _perturbed_detections(gt)
    fast = evaluate_detections(gt, dets, backend="faster")
    ref = evaluate_detections(gt, dets, backend="pycocotools")
    assert 0.2 < ref["AP"] < 0.95  # a non-trivial operating point
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"):
        assert fast[key] == pytest.approx(ref[key], abs=1e-6), key


def test_perfect_detections_score_one(coco128_dir):
    gt = _load_gt(coco128_dir)
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
            for a in gt["annotations"] if not a.get("iscrowd", 0)]
    for backend in ("faster", "pycocotools"):
        metrics = evaluate_detections(gt, dets, backend=backend)
        assert metrics["AP"] == pytest.approx(1.0, abs=1e-9)
        assert metrics["AP50"] == pytest.approx(1.0, abs=1e-9)
        assert fitness(metrics) == pytest.approx(1.0)


def test_image_id_restriction_and_empty(coco128_dir):
    gt = _load_gt(coco128_dir)
    subset = sorted({a["image_id"] for a in gt["annotations"]})[:10]
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
            for a in gt["annotations"] if a["image_id"] in subset]
    # Perfect on the subset, but the other 118 images have no detections at all.
    assert evaluate_detections(gt, dets, image_ids=subset)["AP"] == pytest.approx(1.0)
    assert evaluate_detections(gt, dets)["AP"] < 0.5
    assert evaluate_detections(gt, [])["AP"] == 0.0


def test_predictions_to_coco_roundtrip(tmp_path):
    boxes = torch.tensor([[10.0, 20.0, 50.5, 80.25], [0.0, 0.0, 1.23456, 2.0]])
    scores = torch.tensor([0.9123456, 0.1])
    classes = torch.tensor([0.0, 2.0])
    dets = predictions_to_coco(boxes, scores, classes, image_id=7, category_ids=[1, 2, 3])
    assert dets[0] == {"image_id": 7, "category_id": 1, "bbox": [10.0, 20.0, 40.5, 60.25], "score": 0.91235}
    assert dets[1]["category_id"] == 3 and dets[1]["bbox"][2] == 1.235
    path = write_detections_json(dets, tmp_path / "out" / "dets.json")
    assert json.loads(path.read_text()) == dets


def test_metric_scores_each_image_once_and_equals_evaluate_detections():
    """CocoDetectionMetric: repeated images (sampler padding) count once, and the numbers are evaluate_detections'."""
    import torch

    from pgi_detect.evaluation import CocoDetectionMetric, evaluate_detections, rows_to_coco

    gt = {
        "images": [{"id": 1, "width": 100, "height": 100}, {"id": 2, "width": 100, "height": 100}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 5, "bbox": [10, 10, 30, 30], "area": 900, "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 9, "bbox": [50, 40, 20, 40], "area": 800, "iscrowd": 0},
        ],
        "categories": [{"id": 5, "name": "a"}, {"id": 9, "name": "b"}],
    }
    image_1 = torch.tensor([[10.0, 10.0, 40.0, 40.0, 0.9, 0.0], [60.0, 60.0, 90.0, 90.0, 0.3, 1.0]])
    image_2 = torch.tensor([[50.0, 40.0, 70.0, 80.0, 0.8, 0.0]])  # right box, wrong class
    metric = CocoDetectionMetric("pycocotools")
    metric.update([image_1, image_2], torch.tensor([1, 2]))
    metric.update([image_2.clone()], torch.tensor([2]))  # a padded repeat of image 2
    metric.ground_truth, metric.category_ids = gt, [5, 9]
    evaluation = metric.compute()
    assert evaluation.image_ids == [1, 2] and len(evaluation.detections) == 3
    expected = evaluate_detections(gt, rows_to_coco({1: image_1, 2: image_2}, [5, 9]), "pycocotools")
    assert evaluation.stats == expected
    assert 0 < evaluation.stats["AP"] < 1


def test_a_coco_object_of_the_backend_is_scored_without_indexing_it_again(coco128_dir):
    gt = _load_gt(coco128_dir)
    reference = index_coco(gt)  # what the datamodule hands over: a pycocotools index
    fast = index_coco(reference, faster_coco_eval.COCO)  # the other class: indexed anew from the same dict
    assert isinstance(fast, faster_coco_eval.COCO) and fast.dataset is gt and len(fast.anns) == len(gt["annotations"])
    assert index_coco(reference) is reference and index_coco(fast, faster_coco_eval.COCO) is fast
    never_indexed = pycocotools.coco.COCO()
    never_indexed.dataset = gt
    assert len(index_coco(never_indexed).imgs) == len(gt["images"])
    dets = _perturbed_detections(gt)
    for backend in ("faster", "pycocotools"):
        expected = score_detections(gt, dets, backend)
        for given in (reference, fast, reference):  # an index used before scores the same
            scores = score_detections(given, dets, backend)
            assert scores.stats == expected.stats, (backend, type(given))
            assert (scores.arrays.precision == expected.arrays.precision).all()


@pytest.mark.parametrize("backend", ["faster", "pycocotools"])
def test_statistics_without_ground_truth_are_undefined_not_zero(coco128_dir, backend):
    """pycocotools' -1 (no ground truth in that area range) is logged as 0 but named as undefined; an image set
    without any ground truth leaves every statistic undefined, with or without detections."""
    gt = _load_gt(coco128_dir)
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
            for a in gt["annotations"] if not a.get("iscrowd", 0)]
    # Only large objects kept: small and medium AP/AR have nothing to find.
    large = dict(gt, annotations=[a for a in gt["annotations"] if a["area"] > 96 ** 2])
    scores = score_detections(large, [d for d in dets if d["bbox"][2] * d["bbox"][3] > 96 ** 2], backend)
    assert set(scores.undefined) == {"APs", "APm", "ARs", "ARm"} and scores.stats["APs"] == 0.0
    assert scores.stats["AP"] > 0.9 and "AP" not in scores.undefined
    empty = dict(gt, annotations=[])
    for detections in (dets[:20], []):
        result = score_detections(empty, detections, backend)
        assert "AP" in result.undefined and result.stats["AP"] == 0.0
    assert score_detections(gt, [], backend).undefined == ()  # nothing found where there is something: AP 0
