"""data.official_rounding: the official loader's truncated resize and half-pixel label placement, reproduced on
request through the shipped yolov9-t config, and off by default (the default samples are unchanged)."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from pgi_detect.data.images.decode import long_side_shape, resize_long_side
from pgi_detect.geometry import Letterbox
from pgi_detect.cli.main import build_cli
from conftest import REPO_ROOT

REPO = REPO_ROOT
NO_AUGMENTATION = {key: 0.0 for key in ("mosaic", "copy_paste", "mixup", "degrees", "translate", "scale", "shear",
                                         "perspective", "hsv_h", "hsv_s", "hsv_v", "fliplr", "flipud", "blur",
                                         "median_blur", "to_gray", "clahe")}
BOX = [100.0, 50.0, 200.0, 120.0]  # COCO x, y, w, h in original pixels
PAD_GREY = 114


def test_truncated_sides_are_the_official_int_cut():
    assert long_side_shape(427, 640, 256) == (171, 256)  # 170.8 rounded
    assert long_side_shape(427, 640, 256, truncate=True) == (170, 256)  # int(427 * 0.4)
    # 322 * (256 / 322) is a hair below 256 in floating point: the official loader loses a pixel on the long side
    assert long_side_shape(100, 322, 256) == (80, 256)
    assert long_side_shape(100, 322, 256, truncate=True) == (int(100 * (256 / 322)), int(322 * (256 / 322))) == (79, 255)
    image = np.zeros((427, 640, 3), np.uint8)
    assert resize_long_side(image, 256, augment=True, truncate=True).shape == (170, 256, 3)


def test_unrounded_letterbox_keeps_the_half_pixel_pad():
    fitted, unrounded = Letterbox.fit((171, 256), (256, 256)), Letterbox.fit_unrounded((171, 256), (256, 256))
    assert fitted.pad == (0, 42) and unrounded.pad == (0.0, 42.5)
    assert unrounded.gain == (1.0, 1.0) and fitted.content_box == unrounded.content_box
    shrink = Letterbox.fit_unrounded((300, 500), (256, 256), scaleup=True)
    assert shrink.gain == (256 / 500, 256 / 500) and shrink.pad == (0.0, (256 - round(300 * 256 / 500)) / 2)


@pytest.fixture()
def photos(tmp_path) -> Path:
    """Two 640-wide photos whose resized heights differ: 428 rows (171 either way, odd padding) and 427 rows
    (171 rounded, 170 truncated)."""
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "thing"}]}
    for index, height in enumerate((428, 427)):
        cv2.imwrite(str(images / f"{index}.png"), rng.integers(0, 256, (height, 640, 3), dtype=np.uint8))
        coco["images"].append({"id": index, "file_name": f"{index}.png", "height": height, "width": 640})
        coco["annotations"].append({"id": index, "image_id": index, "category_id": 1, "iscrowd": 0,
                                    "area": BOX[2] * BOX[3], "bbox": BOX})
    (tmp_path / "instances.json").write_text(json.dumps(coco))
    return tmp_path


def training_samples(photos: Path, tmp_path: Path, *extra: str) -> list[dict]:
    """The training batch `pgi-detect fit` with experiments/yolov9-t-coco.yaml draws (its DataLoader workers,
    persistent), augmentation off: per image, in id order, the image, its xyxy boxes in input pixels, its scale and
    pipeline."""
    annotations, images = photos / "instances.json", photos / "images"
    cli = build_cli(["--config", str(REPO / "experiments" / "yolov9-t-coco.yaml"),
                     f"--data.train={annotations}", f"--data.train_images={images}", f"--data.val={annotations}",
                     f"--data.val_images={images}", "--data.img_size=256", "--data.batch_size=2",
                     "--data.augmentation=" + json.dumps(NO_AUGMENTATION), f"--trainer.default_root_dir={tmp_path}",
                     "--trainer.logger=false", "--trainer.accelerator=cpu", "--trainer.precision=32-true", *extra],
                    run=False)
    cli.datamodule.setup("fit")
    loader = cli.datamodule.train_dataloader()
    assert loader.num_workers >= 1 and loader.persistent_workers  # the shipped config's loading, not a stand-in
    (batch,) = list(loader)
    samples = []
    for row in torch.argsort(batch["image_ids"]).tolist():
        targets = batch["targets"][batch["targets"][:, 0] == row, 2:].numpy() * 256  # cx cy w h in pixels
        boxes = np.concatenate([targets[:, :2] - targets[:, 2:] / 2, targets[:, :2] + targets[:, 2:] / 2], axis=1)
        samples.append({"image": batch["images"][row].numpy(), "boxes": boxes, "scale": batch["scales"][row].tolist(),
                        "pipeline": batch["pipelines"][row]})
    return samples


def official_boxes(height: int, width: int, img_size: int) -> np.ndarray:
    """The official loader's label arithmetic, written out: load_image's `int(w0 * r)` resize, then letterbox's
    ratio r and fractional pad (dw, dh) applied to the normalised labels."""
    r0 = img_size / max(height, width)
    w, h = int(width * r0), int(height * r0)
    r = min(img_size / h, img_size / w)
    dw, dh = (img_size - round(w * r)) / 2, (img_size - round(h * r)) / 2
    x, y, bw, bh = BOX
    normalised = np.array([x / width, y / height, (x + bw) / width, (y + bh) / height])
    return normalised * np.array([r * w, r * h, r * w, r * h]) + np.array([dw, dh, dw, dh])


def test_official_rounding_places_labels_as_the_official_loader(photos, tmp_path):
    default = training_samples(photos, tmp_path / "default")
    official = training_samples(photos, tmp_path / "official", "--data.official_rounding=true")
    assert [s["pipeline"] for s in default + official] == ["letterbox"] * 4
    for sample, height in zip(official, (428, 427)):
        np.testing.assert_allclose(np.asarray(sample["boxes"][0]), official_boxes(height, 640, 256), atol=1e-4)

    # 428 rows: the same image either way, the labels half a pixel lower with the option
    assert np.array_equal(np.asarray(default[0]["image"]), np.asarray(official[0]["image"]))
    np.testing.assert_allclose(np.asarray(official[0]["boxes"]) - np.asarray(default[0]["boxes"]), [[0, 0.5, 0, 0.5]], atol=1e-4)
    # 427 rows: 171 rows of photo from row 42 by default, 170 from row 43 with the option (row 42 is padding)
    rows_default = (np.asarray(default[1]["image"])[0] != PAD_GREY).any(axis=1)
    rows_official = (np.asarray(official[1]["image"])[0] != PAD_GREY).any(axis=1)
    assert np.flatnonzero(rows_default)[[0, -1]].tolist() == [42, 212]
    assert np.flatnonzero(rows_official)[[0, -1]].tolist() == [43, 212]
    assert list(official[1]["scale"]) == pytest.approx([256 / 640, 170 / 427])


def test_default_is_rounded_and_matches_the_image(photos, tmp_path):
    """Off: the labels sit on the pixels they were drawn on (the image's own placement)."""
    sample = training_samples(photos, tmp_path)[0]
    expected = np.array([BOX[0], BOX[1], BOX[0] + BOX[2], BOX[1] + BOX[3]]) * [0.4, 171 / 428, 0.4, 171 / 428]
    np.testing.assert_allclose(np.asarray(sample["boxes"][0]), expected + [0, 42, 0, 42], atol=1e-4)
