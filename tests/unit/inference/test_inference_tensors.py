"""Predictor on torch tensors: (3, H, W) gives one `Detections`, (B, 3, H, W) a list; uint8 in [0, 255] and floating
point in [0, 1] give what the same RGB arrays give; anything else is a clear error."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from pgi_detect.geometry import NMS_DETECT
from pgi_detect.inference import Detections, Predictor
from pgi_detect.models import build_model

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    torch.manual_seed(0)
    return Predictor(build_model("gelan-t", num_classes=3), ["a", "b", "c"], img_size=64,
                     nms=replace(NMS_DETECT, conf_thres=1e-6, max_det=20))


def images(*shape: int, count: int = 2) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (*shape, 3), dtype=np.uint8) for _ in range(count)]


def assert_same(actual: Detections, expected: Detections, score_atol: float = 0.0, box_atol: float = 0.0) -> None:
    assert len(actual) == len(expected) > 0 and actual.image_shape == expected.image_shape
    torch.testing.assert_close(actual.scores, expected.scores, atol=score_atol, rtol=0)
    torch.testing.assert_close(actual.boxes, expected.boxes, atol=box_atol, rtol=0)
    assert actual.class_names == expected.class_names


def test_uint8_tensors_give_what_the_arrays_give(predictor: Predictor) -> None:
    arrays = images(48, 80)  # resized and padded by the letterbox
    expected = predictor(arrays)
    batch = torch.stack([torch.from_numpy(a).permute(2, 0, 1) for a in arrays])
    single = predictor(batch[0])
    assert isinstance(single, Detections)
    assert_same(single, expected[0])
    batched = predictor(batch)
    assert isinstance(batched, list) and len(batched) == 2
    for actual, wanted in zip(batched, expected):
        assert_same(actual, wanted)


def test_float_tensors_in_0_1_give_what_the_arrays_give(predictor: Predictor) -> None:
    arrays = images(48, 64)  # long side = img_size: padded only, so both paths see the same pixels
    expected = predictor(arrays)
    batch = torch.stack([torch.from_numpy(a).permute(2, 0, 1) for a in arrays]).float() / 255
    for dtype, score_atol, box_atol in ((torch.float32, 1e-5, 1e-2), (torch.float16, 2e-3, 1.0)):
        for actual, wanted in zip(predictor(batch.to(dtype)), expected):
            assert_same(actual, wanted, score_atol, box_atol)


def test_float_tensors_are_resized_without_rounding(predictor: Predictor) -> None:
    from pgi_detect.inference.predictor import tensor_to_arrays

    (array,) = images(96, 160, count=1)
    as_float = torch.from_numpy(array).permute(2, 0, 1).float() / 255
    from_uint8, _ = predictor.preprocess([array])
    from_float, _ = predictor.preprocess(tensor_to_arrays(as_float))
    assert tensor_to_arrays(as_float)[0].dtype == np.float32
    difference = (from_float - from_uint8).abs()
    assert 0 < float(difference.max()) <= 1 / 255 + 1e-6  # the uint8 resize rounds, the float one does not


@pytest.mark.parametrize(("tensor", "message"), [
    (torch.rand(3, 32, 32) * 255, r"must lie in \[0, 1\] \(got .* to 25\d"),
    (torch.rand(32, 32, 3), r"got shape \(32, 32, 3\); permute"),
    (torch.zeros(2, 1, 32, 32), r"RGB \(3, H, W\) or \(B, 3, H, W\)"),
    (torch.zeros(3, 32, 32, dtype=torch.int64), "uint8 or floating point, got torch.int64"),
])
def test_other_tensors_are_refused_with_a_reason(predictor: Predictor, tensor: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        predictor(tensor)
