"""The Letterbox value object: placement, image padding, box mapping both ways, composition, and the batch form used
by evaluation (`to_source_pixels`, `postprocess`)."""
from __future__ import annotations

import numpy as np
import torch

from pgi_detect.geometry import NMS_DETECT, Letterbox, non_max_suppression, postprocess, stack_letterboxes
from pgi_detect.geometry import to_source_pixels


def test_letterbox_centres_pads_and_inverts():
    letterbox = Letterbox.fit((50, 100), (64, 64))
    out = letterbox.apply(np.zeros((50, 100, 3), np.uint8))
    assert out.shape == (64, 64, 3) and letterbox.gain == (0.64, 0.64) and letterbox.pad == (0, 16)
    assert out[0, 0].tolist() == [114] * 3 and out[32, 32].tolist() == [0, 0, 0]
    point = np.array([[80.0, 25.0, 80.0, 25.0]], np.float32)
    mapped = letterbox.boxes_to_input(point)
    np.testing.assert_allclose(letterbox.boxes_to_source(torch.from_numpy(mapped)).numpy(), point, rtol=1e-6)
    small = Letterbox.fit((20, 10), (64, 64), scaleup=False)
    assert small.gain == (1.0, 1.0) and small.pad == (27, 22)
    assert small.apply(np.zeros((20, 10, 3), np.uint8)).shape == (64, 64, 3)


def test_odd_padding_goes_bottom_right():
    letterbox = Letterbox.fit((10, 21), (32, 32), scaleup=False)  # 21 wide: 11 columns of padding
    out = letterbox.apply(np.zeros((10, 21, 3), np.uint8))
    assert letterbox.pad == (5, 11) and out.shape == (32, 32, 3)
    assert out[11:21, 5:26].max() == 0 and out[:, 26:].min() == 114 and out[21:].min() == 114


def test_composed_placement_maps_like_both_steps():
    resize = Letterbox.stretch((480, 640), (240, 320))
    box = Letterbox.fit((240, 320), (320, 320))
    total = resize.then(box)
    points = np.array([[10.0, 20.0, 300.0, 400.0]], np.float32)
    np.testing.assert_allclose(total.boxes_to_input(points), box.boxes_to_input(resize.boxes_to_input(points)))
    assert total.source_shape == (480, 640) and total.shape == (320, 320)


def test_boxes_to_source_clips_and_keeps_extra_columns():
    rows = torch.tensor([[-10.0, 30.0, 400.0, 500.0, 0.9, 3.0]])
    letterbox = Letterbox((300, 350), (352, 352), (1.0, 1.0), (0.0, 20.0))
    out = letterbox.boxes_to_source(rows)
    torch.testing.assert_close(out, torch.tensor([[0.0, 10.0, 350.0, 300.0, 0.9, 3.0]]))
    assert rows[0, 0] == -10.0  # input untouched


def test_batch_undo_equals_per_image_undo():
    generator = torch.Generator().manual_seed(0)
    detections = [torch.rand(n, 6, generator=generator) * 400 for n in (3, 0, 5)]
    letterboxes = [Letterbox((480, 640), (320, 320), (0.5, 0.5), (0.0, 40.0)),
                   Letterbox((300, 300), (320, 320), (1.0, 1.0), (12.0, 0.0)),
                   Letterbox((400, 500), (416, 416), (0.8, 0.8), (3.0, 7.0))]
    batched = to_source_pixels(detections, *stack_letterboxes(letterboxes))
    for det, out, letterbox in zip(detections, batched, letterboxes):
        torch.testing.assert_close(out, letterbox.boxes_to_source(det))


def test_postprocess_is_nms_then_undo():
    generator = torch.Generator().manual_seed(1)
    pred = torch.rand(2, 4 + 3, 50, generator=generator)
    pred[:, :2] *= 300
    pred[:, 2:4] *= 60
    letterboxes = [Letterbox.fit((480, 640), (320, 320)), Letterbox.fit((640, 480), (320, 320))]
    out = postprocess(pred, NMS_DETECT, *stack_letterboxes(letterboxes))
    expected = to_source_pixels(non_max_suppression(pred, **NMS_DETECT), *stack_letterboxes(letterboxes))
    assert len(out) == 2 and any(len(rows) for rows in out)
    for got, want in zip(out, expected):
        torch.testing.assert_close(got, want)
