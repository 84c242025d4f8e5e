"""data.cache_images ram | disk: the same samples as decoding every time; the disk cache is keyed on the images,
built once by local rank 0 (the others wait), refused on a disk too small, and a bad image stays a bad sample."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from helpers.datasets import datamodule, rectangles_coco
from pgi_detect.data import DataError
from pgi_detect.data.images import cache as image_cache


@pytest.fixture
def data(tmp_path, monkeypatch):
    monkeypatch.setenv("PGI_DETECT_CACHE_DIR", str(tmp_path / "cache"))
    rectangles_coco(tmp_path / "set", 6, sizes=((64, 96), (80, 48)))
    return tmp_path / "set"


def batches(module, split):
    module.setup("fit" if split == "train" else "validate")
    loader = module.train_dataloader() if split == "train" else module.val_dataloader()
    return [batch["images"] for batch in loader]


@pytest.mark.parametrize("kind", [True, "ram", "disk"])
@pytest.mark.parametrize("split", ["train", "val"])
def test_cached_samples_equal_decoded_ones(data, kind, split):
    """Mosaic training samples and letterboxed evaluation samples, bit for bit."""
    plain, cached = batches(datamodule(data), split), batches(datamodule(data, cache_images=kind), split)
    assert len(plain) == len(cached) and all(torch.equal(a, b) for a, b in zip(plain, cached))


def cache_files(tmp_path):
    return sorted(p.name for p in (tmp_path / "cache" / "images").glob("*.u8"))


def test_the_disk_cache_is_built_once_and_follows_the_images(data, tmp_path, monkeypatch):
    decoded = []
    real = image_cache._fill

    def counting(buffer, offsets, shapes, decode, threads, description):
        decoded.append(len(shapes))
        return real(buffer, offsets, shapes, decode, threads, description)

    monkeypatch.setattr(image_cache, "_fill", counting)
    batches(datamodule(data, cache_images="disk"), "val")
    batches(datamodule(data, cache_images="disk"), "val")
    assert decoded == [6] and len(cache_files(tmp_path)) == 1  # the second run maps the first one's file
    image = sorted((data / "images").iterdir())[0]
    os.utime(image, ns=(1, 1))  # a changed image (its mtime) is another key
    batches(datamodule(data, cache_images="disk"), "val")
    assert decoded == [6, 6] and len(cache_files(tmp_path)) == 2
    batches(datamodule(data, cache_images="disk", img_size=96), "val")  # another size too
    assert len(cache_files(tmp_path)) == 3
    # the official rounding (truncated sides) is another key, and its cached samples are its decoded ones
    truncated = batches(datamodule(data, cache_images="disk", official_rounding=True), "val")
    assert len(cache_files(tmp_path)) == 4
    assert all(torch.equal(a, b) for a, b in zip(truncated, batches(datamodule(data, official_rounding=True), "val")))
    assert not list((tmp_path / "cache" / "images").glob(".*partial"))


def test_other_local_ranks_wait_for_rank_zero(data, tmp_path, monkeypatch):
    batches(datamodule(data, cache_images="disk"), "val")  # rank 0's file exists: read, not rebuilt
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(image_cache, "_fill", lambda *args: pytest.fail("a non-zero local rank decoded"))
    batches(datamodule(data, cache_images="disk"), "val")
    # On a cache folder every node shares, the global rank decides: local rank 0 of node 1 (global rank 2) waits too.
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("PGI_DETECT_CACHE_SHARED", "1")
    monkeypatch.setenv("PGI_DETECT_CACHE_WAIT_S", "0.3")
    with pytest.raises(DataError, match="did not appear within 0 s .*local rank 0 builds it"):
        batches(datamodule(data, cache_images="disk", img_size=96), "val")  # nobody builds this one


def test_a_disk_too_small_is_an_error_before_decoding(data, monkeypatch):
    monkeypatch.setattr(image_cache.shutil, "disk_usage", lambda folder: type("Usage", (), {"free": 1000})())
    monkeypatch.setattr(image_cache, "_fill", lambda *args: pytest.fail("decoded before checking the space"))
    with pytest.raises(DataError, match=r"the decoded images need 0\.00 GiB, .* has 0\.00 GiB free"):
        batches(datamodule(data, cache_images="disk"), "val")


def test_a_bad_image_is_a_hole_the_policy_still_sees(data):
    (sorted((data / "images").iterdir())[2]).write_bytes(b"not an image")
    module = datamodule(data, cache_images="disk", on_bad_sample="skip")
    module.setup("fit")
    dataset = module.dataset("train")
    assert dataset.images.cache.get(2) is None and dataset.images.cache.get(1) is not None
    assert len(list(module.train_dataloader())) > 0 and dataset.skipped_samples >= 1


def test_cache_images_values():
    assert [image_cache.cache_kind(v) for v in (False, None, True, "ram", "disk")] == [None, None, "ram", "ram", "disk"]
    with pytest.raises(ValueError, match="false, ram or disk"):
        image_cache.cache_kind("gpu")
    assert np.dtype(np.uint8)  # the buffer's type: one byte per channel value
