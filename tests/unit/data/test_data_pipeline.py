"""Dataset, batching, DataModule: the batch contract, boxes following pixels, close-mosaic in persistent workers,
reproducibility, rectangular validation, bad samples at load time, the synthetic dataset."""
from __future__ import annotations

import json
import logging

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from pgi_detect.data import (AugmentationConfig, DataError, DetectionDataModule, DetectionDataset, load_source,
                             make_synthetic_coco)
from pgi_detect.data.augment import transforms as aug
from pgi_detect.data.pipeline.collate import collate_detections
from helpers.datasets import datamodule, rectangles_coco



def object_mask(image_chw: torch.Tensor) -> np.ndarray:
    hsv = cv2.cvtColor(np.ascontiguousarray(image_chw.numpy().transpose(1, 2, 0)), cv2.COLOR_RGB2HSV)
    return hsv[..., 1] > 100


@pytest.mark.parametrize("mosaic", [True, False])
def test_training_boxes_follow_pixels(tmp_path, mosaic):
    source = load_source(rectangles_coco(tmp_path), tmp_path / "images")
    config = AugmentationConfig(**{**AugmentationConfig.disabled().to_dict(), "mosaic": 1.0, "scale": 0.5,
                                   "translate": 0.1, "fliplr": 0.5, "flipud": 0.5, "degrees": 0.0})
    dataset = DetectionDataset(source, img_size=64, train=True, augmentation=config, seed=1)
    dataset.set_mosaic(mosaic)
    checked = 0
    for index in range(len(dataset)):
        sample = dataset[index]
        assert sample["image"].shape == (3, 64, 64) and sample["image"].dtype == torch.uint8
        assert sample["pipeline"] == ("mosaic" if mosaic else "letterbox")
        mask = object_mask(sample["image"])
        covered = np.zeros_like(mask)
        for x1, y1, x2, y2 in sample["boxes"]:
            assert 0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 64 and x2 - x1 > 2 and y2 - y1 > 2
            inner = mask[int(np.ceil(y1)) + 1:int(y2) - 1, int(np.ceil(x1)) + 1:int(x2) - 1]
            assert inner.size == 0 or inner.mean() > 0.9
            covered[int(y1):int(np.ceil(y2)), int(x1):int(np.ceil(x2))] = True
            checked += 1
        assert (mask & ~covered).sum() <= 0.1 * max(mask.sum(), 10)  # no object without a box
    assert checked > 5


def test_eval_samples_invert_to_original_boxes(tmp_path):
    source = load_source(rectangles_coco(tmp_path, 4, sizes=((64, 96), (96, 40))), tmp_path / "images")
    dataset = DetectionDataset(source, img_size=64)
    for index, record in enumerate(source.records):
        sample = dataset[index]
        assert sample["pipeline"] == "eval" and sample["orig_shape"] == (record.height, record.width)
        scale, pad = np.asarray(sample["scale"]), np.asarray(sample["pad"])
        restored = (sample["boxes"] - np.tile(pad, 2)) / np.tile(scale, 2)
        np.testing.assert_allclose(restored, record.boxes, atol=1.0)


def test_collate_builds_the_batch_contract(tmp_path):
    source = load_source(rectangles_coco(tmp_path, 3), tmp_path / "images")
    dataset = DetectionDataset(source, img_size=64)
    batch = collate_detections([dataset[i] for i in range(3)])
    assert batch["images"].shape == (3, 3, 64, 64) and batch["images"].dtype == torch.uint8
    assert batch["targets"].shape == (6, 6) and batch["targets"].dtype == torch.float32
    assert batch["targets"][:, 0].tolist() == [0, 0, 1, 1, 2, 2]
    assert batch["targets"][:, 2:].min() >= 0 and batch["targets"][:, 2:].max() <= 1
    assert batch["image_ids"].tolist() == [1, 2, 3] and batch["image_ids"].dtype == torch.int64
    assert batch["orig_shapes"].tolist()[0] == [64, 96] and batch["orig_shapes"].dtype == torch.int64
    assert batch["scales"].shape == (3, 2) and batch["pads"].tolist()[0] == [0.0, 10.0]  # 43 rows, 21 pad: 10 top, 11 bottom
    assert batch["paths"][0].endswith("0.png")
    sample = dataset[0]
    cx, cy, w, h = batch["targets"][0, 2:].tolist()
    np.testing.assert_allclose([(cx - w / 2) * 64, (cy - h / 2) * 64], sample["boxes"][0, :2], atol=1e-4)


def test_corrupt_image_at_load_time_error_or_skip(tmp_path, caplog):
    path = rectangles_coco(tmp_path, 4)
    (tmp_path / "images" / "2.png").write_bytes(b"\x89PNG garbage")
    source = load_source(path, tmp_path / "images")
    strict = DetectionDataset(source, img_size=64, train=True)
    with pytest.raises(DataError, match=r"2\.png: corrupt"):
        strict[2]
    lenient = DetectionDataset(source, img_size=64, train=True, on_bad_sample="skip")
    with caplog.at_level(logging.WARNING, logger="pgi_detect.data"):
        samples = [lenient[i] for i in range(4)]
    assert all(not s["path"].endswith("2.png") for s in samples) and "2.png" in caplog.text


def test_annotated_size_must_match_decoded_image(tmp_path):
    path = rectangles_coco(tmp_path, 2)
    data = json.loads(path.read_text())
    data["images"][0]["width"], data["images"][0]["height"] = 64, 96  # as if EXIF rotation were ignored
    path.write_text(json.dumps(data))
    dataset = DetectionDataset(load_source(path, tmp_path / "images"), img_size=64)
    with pytest.raises(DataError, match=r"0\.png: decoded size 96x64"):
        dataset[0]


def first_batches(dm, n=2):
    """The first `n` batches of two epochs (the trainer calls `set_epoch` at each epoch start)."""
    dm.setup("fit")
    loader = dm.train_dataloader()
    batches = []
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)
        for i, batch in enumerate(loader):
            batches.append(batch)
            if i + 1 == n:
                break
    return batches


@pytest.mark.parametrize("num_workers", [0, 2])
def test_same_seed_same_batches(tmp_path, num_workers):
    rectangles_coco(tmp_path, 8)
    a = first_batches(datamodule(tmp_path, num_workers=num_workers, persistent_workers=False))
    b = first_batches(datamodule(tmp_path, num_workers=num_workers, persistent_workers=False))
    for x, y in zip(a, b):
        assert torch.equal(x["images"], y["images"]) and torch.equal(x["targets"], y["targets"])
    c = first_batches(datamodule(tmp_path, num_workers=num_workers, persistent_workers=False, seed=4))
    assert not torch.equal(a[0]["images"], c[0]["images"])
    assert not torch.equal(a[0]["images"], a[2]["images"])  # epochs differ


def test_batches_do_not_depend_on_the_worker_count(tmp_path):
    """Each sample's augmentation is drawn from (seed, epoch, index), so 0 and 2 workers give the same batches."""
    rectangles_coco(tmp_path, 8)
    single = first_batches(datamodule(tmp_path, num_workers=0))
    workers = first_batches(datamodule(tmp_path, num_workers=2, persistent_workers=False))
    for x, y in zip(single, workers, strict=True):
        assert torch.equal(x["images"], y["images"]) and torch.equal(x["targets"], y["targets"])


def test_close_mosaic_reaches_persistent_workers(tmp_path):
    rectangles_coco(tmp_path, 8)
    dm = datamodule(tmp_path, num_workers=2, persistent_workers=True, augmentation={"mixup": 0.0})
    dm.setup("fit")
    loader = dm.train_dataloader()
    first = [p for batch in loader for p in batch["pipelines"]]
    assert first and set(first) == {"mosaic"}
    workers = loader._iterator._workers
    dm.set_mosaic(False)
    second = [p for batch in loader for p in batch["pipelines"]]
    assert loader._iterator._workers is workers and all(w.is_alive() for w in workers)  # same worker processes
    assert set(second) == {"letterbox"}
    dm.set_mosaic(True)
    assert {p for batch in loader for p in batch["pipelines"]} == {"mosaic"}


def test_rect_validation_batches(tmp_path):
    rectangles_coco(tmp_path, 6, sizes=((64, 96), (96, 40), (60, 90)))
    dm = datamodule(tmp_path, rect_val=True, val_batch_size=2)
    dm.setup("validate")
    source = dm.source("val")
    records = {r.image_id: r for r in source.records}
    shapes = []
    for batch in dm.val_dataloader():
        shapes.append(tuple(batch["images"].shape[-2:]))
        h, w = batch["images"].shape[-2:]
        assert h % 32 == 0 and w % 32 == 0
        for i, image_id in enumerate(batch["image_ids"].tolist()):
            rows = batch["targets"][batch["targets"][:, 0] == i]
            xyxy = torch.cat([rows[:, 2:4] - rows[:, 4:] / 2, rows[:, 2:4] + rows[:, 4:] / 2], 1) * torch.tensor([w, h, w, h])
            restored = (xyxy - batch["pads"][i].repeat(2)) / batch["scales"][i].repeat(2)
            np.testing.assert_allclose(restored.numpy(), records[image_id].boxes, atol=1.0)
    # sorted by h/w: four 2:3 images, then two 12:5 ones; sides ceil(ratio·64/32 + 0.5)·32
    assert shapes == [(64, 96), (64, 96), (96, 64)]


def test_datamodule_class_table_ground_truth_and_eval_loaders(tmp_path):
    rectangles_coco(tmp_path, 4)
    dm = datamodule(tmp_path)
    assert dm.num_classes == 6 and dm.class_names[0] == "c0" and dm.category_ids == [1, 2, 3, 4, 5, 6]
    gt = dm.ground_truth("val")
    assert sorted(gt.getImgIds()) == [1, 2, 3, 4] and len(gt.getAnnIds()) == 8
    with pytest.raises(DataError, match="none is configured: pass data.test"):
        dm.setup("test")  # no silent fallback to the val split
    with pytest.raises(ValueError, match="no test dataset configured"):
        dm.ground_truth("test")  # nor in the ground truth `test` would score against
    dm.setup("predict")  # predict does fall back to val, and says so
    batch = next(iter(dm.predict_dataloader()))
    assert batch["images"].shape == (4, 3, 64, 64) and set(batch["pipelines"]) == {"eval"}
    with_test = datamodule(tmp_path, test=str(tmp_path / "ann.json"), test_images=str(tmp_path / "images"))
    with_test.setup("test")
    assert next(iter(with_test.test_dataloader()))["image_ids"].tolist() == batch["image_ids"].tolist()



def yolo_with_unreadable_image(root):
    """YOLO folder of three images whose middle one has no readable header (its label file is fine)."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for name in ("a", "b", "c"):
        Image.fromarray(np.full((48, 64, 3), 114, np.uint8)).save(root / "images" / f"{name}.png")
        (root / "labels" / f"{name}.txt").write_text("0 0.5 0.5 0.25 0.25\n")
    (root / "images" / "b.png").write_bytes(b"not an image")
    (root / "classes.yaml").write_text("names: [box]\n")
    return root


@pytest.mark.parametrize("ground_truth_first", [False, True])
def test_yolo_val_dataset_and_ground_truth_hold_the_same_images(tmp_path, ground_truth_first):
    root = yolo_with_unreadable_image(tmp_path)
    with pytest.raises(DataError, match=r"b\.png: cannot read image header"):
        DetectionDataModule(val=str(root), img_size=64, num_workers=0).source("val")
    dm = DetectionDataModule(val=str(root), img_size=64, batch_size=2, num_workers=0, on_bad_sample="skip")
    gt = dm.ground_truth("val") if ground_truth_first else None
    dm.setup("validate")
    gt = gt or dm.ground_truth("val")
    dataset_ids = sorted(r.image_id for r in dm.dataset("val").records)
    assert dataset_ids == sorted(gt.getImgIds()) == [0, 2]
    batch = next(iter(dm.val_dataloader()))
    assert sorted(batch["image_ids"].tolist()) == dataset_ids
    np.testing.assert_allclose(gt.loadAnns(gt.getAnnIds(imgIds=[0]))[0]["bbox"], [24, 18, 16, 12])

def test_datamodule_from_cli_yaml(tmp_path):
    jsonargparse = pytest.importorskip("jsonargparse")
    rectangles_coco(tmp_path, 4)
    parser = jsonargparse.ArgumentParser()
    parser.add_class_arguments(DetectionDataModule, "data")
    config = parser.parse_string(
        f"data:\n  train: {tmp_path / 'ann.json'}\n  train_images: {tmp_path / 'images'}\n  img_size: 64\n"
        "  num_workers: 0\n  on_bad_sample: skip\n  augmentation:\n    mixup: 0.0\n    degrees: 5.0\n")
    dm = parser.instantiate(config).data
    assert dm.augmentation.mixup == 0.0 and dm.augmentation.degrees == 5.0 and dm.augmentation.mosaic == 1.0
    assert dm.num_classes == 6


def test_cache_images_gives_identical_samples(tmp_path):
    rectangles_coco(tmp_path, 4)
    plain = datamodule(tmp_path)
    cached = datamodule(tmp_path, cache_images=True)
    plain.setup("validate")
    cached.setup("validate")
    assert cached.dataset("val").images.cache is not None and cached.dataset("val").images.cache.get(3) is not None
    assert torch.equal(next(iter(plain.val_dataloader()))["images"], next(iter(cached.val_dataloader()))["images"])


def test_synthetic_dataset_is_deterministic_and_loadable(tmp_path):
    a = make_synthetic_coco(tmp_path / "a", num_train=6, num_val=2, img_size=64, seed=5)
    b = make_synthetic_coco(tmp_path / "b", num_train=6, num_val=2, img_size=64, seed=5)
    assert a["train"].annotation_file.read_text() == b["train"].annotation_file.read_text()
    assert (a["val"].images_dir / "000007.jpg").read_bytes() == (b["val"].images_dir / "000007.jpg").read_bytes()
    source = load_source(a["train"].annotation_file)  # images folder found from the json path
    assert source.class_names == ["circle", "square", "triangle"] and len(source.records) == 6
    assert all(r.num_objects >= 1 for r in source.records)
    for record in source.records:  # object colour inside its box
        image = np.asarray(Image.open(record.path).convert("RGB"))
        for (x1, y1, x2, y2), cls in zip(record.boxes.astype(int), record.classes):
            centre = image[(y1 + y2) // 2, (x1 + x2) // 2].astype(int)
            assert int(np.argmax(centre)) == int(cls)  # red circle, green square, blue triangle


def test_coco128_training_batch(coco128_dir):
    dm = DetectionDataModule(train=str(coco128_dir / "annotations" / "instances_train2017.json"), img_size=320,
                             batch_size=4, num_workers=0)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["images"].shape == (4, 3, 320, 320) and len(batch["targets"]) > 0
    assert batch["targets"][:, 1].max() < 80 and batch["targets"][:, 2:].max() <= 1


@pytest.mark.parametrize("blur", [0.0, 1.0])
def test_close_mosaic_samples_same_with_and_without_the_hsv_row_band(tmp_path, monkeypatch, blur):
    """Mosaic-off samples convert only the rows the warp can bring content into (augment.content_rows); they must
    equal samples converted whole, including when a pixel transform (blur) touched the padding rows."""
    rectangles_coco(tmp_path, num_images=6, sizes=((64, 96), (96, 48)))
    source = load_source(str(tmp_path / "ann.json"), str(tmp_path / "images"))
    dataset = DetectionDataset(source, 96, train=True, augmentation=AugmentationConfig(blur=blur))
    dataset.set_mosaic(False)
    keys = [(epoch, index) for epoch in range(4) for index in range(len(dataset))]
    banded = [dataset[key] for key in keys]
    bands = []
    real_content_rows = aug.content_rows
    monkeypatch.setattr(aug, "content_rows", lambda *args: bands.append(real_content_rows(*args)))
    whole = [dataset[key] for key in keys]
    assert len(bands) == len(keys) and sum(b[1] - b[0] < 96 for b in bands) > len(keys) // 4
    for key, a, b in zip(keys, banded, whole):
        assert torch.equal(a["image"], b["image"]), key


def mosaic_samples_with_and_without_decoding_every_tile(dataset, keys, monkeypatch):
    """(samples as built, samples with every tile decoded first, tiles decoded as built, tiles in all)."""
    decoded = []
    real_load = dataset.images.load
    monkeypatch.setattr(dataset.images, "load", lambda index: decoded.append(index) or real_load(index))
    built = [dataset[key] for key in keys]
    lazily_decoded = len(decoded)
    real_build = dataset.mosaic._build
    monkeypatch.setattr(dataset.mosaic, "_build",
                        lambda index, rng, decode_all: real_build(index, rng, decode_all=True))
    decoded.clear()
    every = [dataset[key] for key in keys]
    return built, every, lazily_decoded, len(decoded)


@pytest.mark.parametrize("data", ["rectangles", "coco128 polygons"])
def test_mosaic_tiles_nobody_sees_are_not_decoded_and_samples_stay_the_same(tmp_path, monkeypatch, request, data):
    if data == "rectangles":
        rectangles_coco(tmp_path, num_images=8, sizes=((64, 96), (96, 48), (80, 80)))
        source = load_source(str(tmp_path / "ann.json"), str(tmp_path / "images"))
        size, keys = 64, [(epoch, index) for epoch in range(6) for index in range(8)]
    else:
        root = request.getfixturevalue("coco128_dir")
        source = load_source(root / "annotations" / "instances_train2017.json", root / "images" / "train2017")
        # plus three samples (found by a search over 8 epochs) where copy-paste brings pixels from a tile outside
        # the part of the canvas the warp reads, which must therefore be decoded
        size, keys = 320, [(epoch, index) for epoch in range(2) for index in range(0, 128, 4)] + [(1, 83), (5, 53),
                                                                                                  (7, 55)]
    dataset = DetectionDataset(source, size, train=True)
    built, every, lazily_decoded, all_decoded = mosaic_samples_with_and_without_decoding_every_tile(
        dataset, keys, monkeypatch)
    assert lazily_decoded < 0.95 * all_decoded  # some tiles were skipped
    assert data == "rectangles" or any(s["pipeline"] == "mosaic+mixup" for s in built)
    for key, a, b in zip(keys, built, every):
        assert torch.equal(a["image"], b["image"]) and np.array_equal(a["boxes"], b["boxes"]), key
        assert np.array_equal(a["classes"], b["classes"]) and a["orig_shape"] == b["orig_shape"], key


def test_bad_tiles_are_replaced_as_before_and_bad_images_still_found(tmp_path, monkeypatch):
    """A tile to decode that is bad rebuilds the sample decoding every tile first (the old way, same draws); in
    skip mode an epoch of mosaics finds the bad image (as its own sample's main tile at the latest)."""
    path = rectangles_coco(tmp_path, 6, sizes=((64, 96), (96, 48)))
    (tmp_path / "images" / "2.png").write_bytes(b"\x89PNG garbage")
    source = load_source(path, tmp_path / "images")
    strict = DetectionDataset(source, img_size=64, train=True)
    with pytest.raises(DataError, match=r"2\.png: corrupt"):
        [strict[(0, index)] for index in range(6)]
    lenient = DetectionDataset(source, img_size=64, train=True, on_bad_sample="skip")
    samples = [lenient[(0, index)] for index in range(6)]
    assert lenient.bad_samples.bad == {2} and lenient.skipped_samples >= 1
    assert all(not s["path"].endswith("2.png") for s in samples)
    # from here on the bad image is known: samples drawing it rebuild the old way, so they equal the old way's
    keys = [(epoch, index) for epoch in range(1, 4) for index in range(6)]
    built, every, _, _ = mosaic_samples_with_and_without_decoding_every_tile(lenient, keys, monkeypatch)
    for key, a, b in zip(keys, built, every):
        assert torch.equal(a["image"], b["image"]) and np.array_equal(a["boxes"], b["boxes"]), key
