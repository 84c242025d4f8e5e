"""NMS parity with the official non_max_suppression."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torchvision

from pgi_detect.geometry import NMS_DETECT, NMS_EVAL, non_max_suppression


@pytest.fixture
def nms_golden(golden_dir):
    return torch.load(golden_dir / "nms_golden.pt", weights_only=True)


@pytest.mark.numeric
@pytest.mark.parametrize(("settings", "key"), [(NMS_EVAL, "nms_val"), (NMS_DETECT, "nms_detect")])
def test_matches_official_golden(nms_golden, settings, key):
    # Kept rows are the golden's inputs after one xywh -> xyxy conversion and a product of two scores: exact up to a
    # float32 rounding on any CPU (atol 1e-5 on pixel-sized values); a changed threshold changes the row count.
    outputs = non_max_suppression(nms_golden["pred"], **settings)
    assert len(outputs) == len(nms_golden[key])
    for ours, theirs in zip(outputs, nms_golden[key]):
        assert ours.shape == theirs.shape
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)  # same boxes, scores, classes, order


def test_presets_carry_the_reference_settings():
    assert (NMS_EVAL.conf_thres, NMS_EVAL.iou_thres, NMS_EVAL.multi_label, NMS_EVAL.max_det) == (0.001, 0.7, True, 300)
    assert (NMS_DETECT.conf_thres, NMS_DETECT.iou_thres, NMS_DETECT.multi_label, NMS_DETECT.max_det) == (
        0.25, 0.45, False, 300,
    )
    assert dict(**NMS_EVAL)["iou_thres"] == 0.7


def reference_semantics_nms(pred, conf, iou, multi_label, max_det, max_nms=30000):
    """The reference algorithm spelled out: descending sort, 7680-px class offsets, one torchvision nms call."""
    outputs = []
    for x in pred.transpose(1, 2):
        x = x[x[:, 4:].amax(1) > conf]
        box = torchvision.ops.box_convert(x[:, :4], "cxcywh", "xyxy")
        if multi_label:
            i, j = (x[:, 4:] > conf).nonzero(as_tuple=True)
            rows = torch.cat((box[i], x[i, 4 + j, None], j[:, None].float()), 1)
        else:
            score, j = x[:, 4:].max(1, keepdim=True)
            rows = torch.cat((box, score, j.float()), 1)[score.view(-1) > conf]
        rows = rows[rows[:, 4].argsort(descending=True, stable=True)[:max_nms]]
        keep = torchvision.ops.nms(rows[:, :4] + rows[:, 5:6] * 7680, rows[:, 4], iou)[:max_det]
        outputs.append(rows[keep])
    return outputs


def synthetic_pred(seed: int, num_classes: int = 4, n: int = 400, quantise: bool = False):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.rand(2, 2, 8, generator=generator) * 300 + 50
    xy = centres.repeat_interleave(n // 8, 2) + torch.randn(2, 2, n, generator=generator) * 6
    wh = torch.rand(2, 2, n, generator=generator) * 40 + 30
    scores = torch.rand(2, num_classes, n, generator=generator) ** 3
    if quantise:  # many exact ties, as with low-precision scores
        scores = (scores * 20).round() / 20
    return torch.cat((xy, wh, scores), 1)


@pytest.mark.parametrize("multi_label", [True, False])
def test_tied_scores_resolve_like_the_reference(multi_label):
    pred = synthetic_pred(0, quantise=True)
    ours = non_max_suppression(pred, 0.05, 0.5, multi_label, max_det=50)
    theirs = reference_semantics_nms(pred, 0.05, 0.5, multi_label, max_det=50)
    assert any(len(o[:, 4].unique()) < len(o) for o in ours)  # the scenario really has ties among survivors
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_candidate_cap_and_max_det():
    pred = synthetic_pred(1, num_classes=3)
    capped = non_max_suppression(pred, 0.0, 0.9, True, max_det=7, max_nms=40)
    theirs = reference_semantics_nms(pred, 0.0, 0.9, True, max_det=7, max_nms=40)
    for a, b in zip(capped, theirs):
        assert len(a) == 7
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_class_filter_keeps_only_requested_classes():
    pred = synthetic_pred(2, num_classes=4)
    everything = non_max_suppression(pred, 0.1, 0.5, True, 300)
    only = non_max_suppression(pred, 0.1, 0.5, True, 300, classes=[2])
    for all_rows, rows in zip(everything, only):
        assert set(rows[:, 5].tolist()) == {2.0}
        torch.testing.assert_close(rows, all_rows[all_rows[:, 5] == 2])  # NMS is per class: same survivors


def test_no_candidates_gives_empty_rows():
    pred = torch.zeros(2, 84, 10)
    outputs = non_max_suppression(pred, **dataclasses.replace(NMS_DETECT, max_det=5))
    assert [tuple(o.shape) for o in outputs] == [(0, 6), (0, 6)]
