"""Predictor, sources, drawing and writers. A "white-square detector" stub makes the expected boxes known exactly,
so letterboxing and the mapping back to original pixels are checked end to end; gelan-t covers the real model."""
from __future__ import annotations

from dataclasses import replace

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from pgi_detect.geometry import NMS_DETECT
from pgi_detect.inference import Detections, Predictor, draw_detections, iter_frames, run_prediction
from pgi_detect.inference import inputs
from pgi_detect.models import build_model

NAMES = ["cat", "square", "dog"]


pytestmark = pytest.mark.usefixtures("single_torch_thread")


class WhiteSquareDetector(nn.Module):
    """Finds the pure-white pixels of each letterboxed input and predicts their bounding box as class 1 (score
    0.9), plus a low-score decoy (class 0, 0.1) that the 0.25 threshold must drop."""

    strides = (8, 16, 32)
    num_classes = 3

    def predict_raw(self, images: Tensor) -> Tensor:
        rows = []
        for image in images:
            ys, xs = (image.amin(0) > 0.99).nonzero(as_tuple=True)
            x1, y1, x2, y2 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
            box = torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1)).float()
            found = torch.cat((box, torch.tensor([0.0, 0.9, 0.0])))
            decoy = torch.tensor([10.0, 10.0, 8.0, 8.0, 0.1, 0.0, 0.0])
            rows.append(torch.stack((found, decoy), 1))
        return torch.stack(rows)


def image_with_square(height: int, width: int, box: tuple[int, int, int, int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 200, (height, width, 3), dtype=np.uint8)
    x1, y1, x2, y2 = box
    image[y1:y2, x1:x2] = 255
    return image


@pytest.fixture
def square_predictor() -> Predictor:
    return Predictor(WhiteSquareDetector(), NAMES, img_size=96, batch_size=2)


def test_boxes_map_back_to_original_pixels(square_predictor: Predictor) -> None:
    # Landscape and portrait, down- and up-scaled: letterbox pads differently on each axis.
    cases = [((120, 200), (40, 30, 100, 90)), ((50, 30), (5, 10, 25, 40)), ((300, 100), (0, 0, 50, 60))]
    images = [image_with_square(h, w, box, seed=i) for i, ((h, w), box) in enumerate(cases)]
    results = square_predictor(images)
    assert len(results) == 3
    for result, ((h, w), box) in zip(results, cases):
        assert isinstance(result, Detections) and len(result) == 1  # decoy below conf 0.25 is gone
        assert result.image_shape == (h, w)
        assert result.class_ids.tolist() == [1] and result.class_names == ["square"]
        assert result.scores.tolist() == pytest.approx([0.9])
        # One letterboxed pixel is at most 1/gain original pixels; allow that plus resize blur.
        tolerance = 1.5 * max(h, w) / 96
        assert result.boxes[0].tolist() == pytest.approx(list(box), abs=tolerance)


def test_single_inputs_return_one_detections(square_predictor: Predictor, tmp_path: Path) -> None:
    image = image_with_square(64, 80, (10, 20, 30, 50))
    path = tmp_path / "one.png"
    Image.fromarray(image).save(path)
    from_array = square_predictor(image)
    from_pil = square_predictor(Image.fromarray(image))
    from_path = square_predictor(path)
    for result in (from_array, from_pil, from_path):
        assert isinstance(result, Detections)
        assert torch.allclose(result.boxes, from_array.boxes)


def test_conf_threshold_and_class_filter() -> None:
    image = image_with_square(64, 64, (8, 8, 40, 40))
    low = Predictor(WhiteSquareDetector(), NAMES, img_size=64, nms=replace(NMS_DETECT, conf_thres=0.05))(image)
    assert sorted(low.class_ids.tolist()) == [0, 1]
    only_cats = Predictor(WhiteSquareDetector(), NAMES, img_size=64, nms=replace(NMS_DETECT, conf_thres=0.05), classes=[0])(image)
    assert only_cats.class_ids.tolist() == [0]
    none = Predictor(WhiteSquareDetector(), NAMES, img_size=64, nms=replace(NMS_DETECT, conf_thres=0.95))(image)
    assert len(none) == 0 and none.boxes.shape == (0, 4)


def test_coco_records_use_xywh_and_category_ids() -> None:
    detections = Detections.from_rows(torch.tensor([[10.0, 20.0, 40.0, 60.0, 0.87654321, 2.0]]), (100, 100), NAMES)
    (record,) = detections.to_coco(image_id=7, category_ids=[1, 5, 9], file_name="x.jpg")
    assert record == {
        "image_id": 7, "category_id": 9, "class_index": 2, "category_name": "dog", "bbox": [10.0, 20.0, 30.0, 40.0],
        "score": 0.87654, "file_name": "x.jpg",
    }


def test_sources_ids_and_order(tmp_path: Path) -> None:
    for stem in ("000000000042", "000000000007"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / f"{stem}.jpg")
    frames = list(iter_frames(tmp_path))
    assert [f.image_id for f in frames] == [7, 42]  # COCO: id = int(stem), sorted by name
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "street.png")
    assert [f.image_id for f in iter_frames(tmp_path)] == [0, 1, 2]  # mixed stems: running ids
    gray = np.zeros((5, 6), np.uint8)
    (frame,) = iter_frames([gray])
    assert frame.image.shape == (5, 6, 3)
    with pytest.raises(FileNotFoundError):
        list(iter_frames(tmp_path / "missing"))


def test_draw_detections_marks_box_pixels() -> None:
    image = np.zeros((60, 80, 3), np.uint8)
    drawn = draw_detections(image, [[20, 30, 60, 50]], [0.5], [0], ["cat"], line_width=2)
    assert image.sum() == 0  # input untouched
    assert drawn[40, 20].any() and drawn[40, 60].any()  # left and right edges drawn
    assert not drawn[40, 40].any()  # interior stays empty


def test_detections_draw_is_draw_detections_of_its_fields() -> None:
    rows = torch.tensor([[20.0, 30.0, 60.0, 50.0, 0.5, 1.0], [5.0, 5.0, 15.0, 12.0, 0.3, 0.0]])
    detections = Detections.from_rows(rows, (60, 80), NAMES)
    image = np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    expected = draw_detections(image, rows[:, :4].numpy(), rows[:, 4].numpy(), [1, 0], [NAMES[1], NAMES[0]], 3)
    assert np.array_equal(detections.draw(image, line_width=3), expected)


def write_video(path: Path, frames: int, size: tuple[int, int]) -> None:
    height, width = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (width, height))
    for index in range(frames):
        image = image_with_square(height, width, (5 + 2 * index, 8, 30 + 2 * index, 40), seed=index)
        writer.write(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    writer.release()


def test_run_prediction_writes_json_images_and_video(square_predictor: Predictor, tmp_path: Path) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    Image.fromarray(image_with_square(70, 90, (10, 10, 50, 40))).save(inputs / "a.png")
    Image.fromarray(image_with_square(90, 70, (20, 30, 60, 80))).save(inputs / "b.png")
    write_video(inputs / "clip.mp4", frames=5, size=(64, 96))

    run = run_prediction(square_predictor, inputs, tmp_path / "out")

    assert run.frames == 7 and run.detections == 7
    assert sorted(p.name for p in run.images) == ["a.png", "b.png"]  # named and written like the inputs (docs/inference.md)
    records = json.loads(run.json_path.read_text())
    assert len(records) == 7
    a = next(r for r in records if r["file_name"] == "a.png")
    assert a["category_name"] == "square" and a["bbox"] == pytest.approx([10, 10, 40, 30], abs=2)
    video_records = [r for r in records if r["file_name"] == "clip.mp4"]
    assert [r["frame"] for r in video_records] == [0, 1, 2, 3, 4]
    assert len({r["image_id"] for r in records}) == 7  # unique ids across images and frames
    (video,) = run.videos
    capture = cv2.VideoCapture(str(video))
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    ok, first = capture.read()
    capture.release()
    assert ok and first.shape == (64, 96, 3) and count == 5


def test_run_prediction_expands_its_source_once(square_predictor: Predictor, tmp_path: Path, monkeypatch) -> None:
    """Counting frames for the progress report and predicting them share one expansion of the source: a one-shot
    iterable is predicted (the count used to use it up: nothing predicted, silently), a folder is listed once, and a
    bad source fails before predictions.json is created (it used to leave an open, empty one)."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(image_with_square(70, 90, (10, 10, 50, 40))).save(folder / name)
    run = run_prediction(square_predictor, iter([folder / "a.png", folder / "b.png"]), tmp_path / "iterator",
                         progress=True, save_images=False)
    assert run.frames == 2 and len(json.loads(run.json_path.read_text())) == 2
    listed = []
    monkeypatch.setattr(inputs, "list_images", lambda path, real=inputs.list_images: listed.append(path) or real(path))
    run = run_prediction(square_predictor, folder, tmp_path / "folder", progress=True, save_images=False)
    assert run.frames == 2 and listed == [folder]
    with pytest.raises(FileNotFoundError, match="missing: no such file or folder"):
        run_prediction(square_predictor, tmp_path / "missing", tmp_path / "bad")
    assert not (tmp_path / "bad" / "predictions.json").exists()


def test_gelan_predictor_batches_match_single_images() -> None:
    torch.manual_seed(0)
    detector = build_model("gelan-t", num_classes=3)
    predictor = Predictor(detector, NAMES, img_size=64, nms=replace(NMS_DETECT, conf_thres=1e-6, max_det=20),
                          batch_size=2)
    assert not detector.fused and predictor.model.fused  # the caller's model is untouched
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, shape, dtype=np.uint8) for shape in ((48, 64, 3), (70, 40, 3), (64, 64, 3))]
    batched = predictor(images)
    for image, result in zip(images, batched):
        single = predictor(image)
        assert 0 < len(result) <= 20
        h, w = image.shape[:2]
        assert (result.boxes[:, [0, 2]] <= w).all() and (result.boxes[:, [1, 3]] <= h).all()
        assert (result.boxes >= 0).all()
        assert torch.allclose(result.scores, single.scores, atol=1e-5)
    nhwc = Predictor(detector, NAMES, img_size=64, nms=replace(NMS_DETECT, conf_thres=1e-6, max_det=20),
                     channels_last=True)
    batch, _ = predictor.preprocess(images)
    assert torch.allclose(nhwc.raw_predictions(batch), predictor.raw_predictions(batch), atol=1e-4, rtol=1e-4)
