"""Refactoring guard (tests/helpers/trajectory.py): the shipped recipe's augmented batches (data guard) and 24
optimizer steps of gelan-t and yolov9-t in float64 (loop guard) reproduce their records on any CPU.

A deliberate change of the training numbers or the augmentation re-records both (tests/helpers/trajectory.py
--write) with the reason in the commit message."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers.trajectory import (
    BLOCK_TOLERANCE,
    DATA_BATCHES_PER_EPOCH,
    DATA_EPOCHS,
    DATA_PACKAGES,
    LOOP_PACKAGES,
    LOOP_RECORD,
    MODELS,
    OPTIMIZER_STEPS,
    batches_record,
    changed_versions,
    compare_batches,
    compare_loops,
    draw_recipe_batches,
    read_data_record,
    run_loop,
    write_rectangles,
)

pytestmark = pytest.mark.numeric


def with_images(batches: list[dict], change) -> list[dict]:
    return [{**batch, "images": change(batch["images"])} for batch in batches]


@pytest.mark.slow
def test_recipe_batches_are_reproduced(coco128_dir, tmp_path):
    expected, versions = read_data_record()
    changed = changed_versions(versions, DATA_PACKAGES)
    # Another opencv moves pixels of the resize/warp by more than kernel noise: say so instead of blaming our code.
    assert not changed, f"install the versions pinned in constraints.txt (make install): {changed}"
    batches = draw_recipe_batches(coco128_dir, tmp_path)
    assert len(batches) == len(DATA_EPOCHS) * DATA_BATCHES_PER_EPOCH
    actual = batches_record(batches)
    # The recipe really ran: mosaic everywhere, some mixups (copy-paste runs inside the mosaics).
    pipelines = set(expected["pipelines"].flat)
    assert pipelines == {"mosaic", "mosaic+mixup"}
    assert compare_batches(actual, expected) == []

    # The tolerance passes what differs between CPUs and fails a changed augmentation, on these very images.
    rng = np.random.default_rng(0)

    def kernel_noise(images: torch.Tensor) -> torch.Tensor:  # 0.1 % of pixels off by one or two levels
        noise = rng.integers(-2, 3, images.shape) * (rng.random(images.shape) < 1e-3)
        return (images.numpy().astype(np.int64) + noise).clip(0, 255).astype(np.uint8)

    noisy = batches_record(with_images(batches, lambda x: torch.from_numpy(kernel_noise(x))))
    assert compare_batches(noisy, expected) == []
    shifted = batches_record(with_images(batches, lambda x: torch.roll(x, 1, dims=3)))
    assert any("block sum" in line for line in compare_batches(shifted, expected))
    brighter = batches_record(with_images(batches, lambda x: (x.double() * 1.01).round().clamp(0, 255).byte()))
    assert compare_batches(brighter, expected)
    moved_box = {**actual, "targets": actual["targets"] + np.asarray([0, 0, 1e-4, 0, 0, 0], np.float32)}
    assert any("target boxes" in line for line in compare_batches(moved_box, expected))
    assert BLOCK_TOLERANCE == 64  # one level per pixel of an 8x8 block: the figure the docs give


@pytest.fixture(scope="module")
def rectangles(tmp_path_factory):
    return write_rectangles(tmp_path_factory.mktemp("rectangles")).parent


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_training_loop_is_reproduced(model, rectangles, tmp_path):
    record = json.loads(LOOP_RECORD.read_text())
    changed = changed_versions(record["versions"], LOOP_PACKAGES)
    assert not changed, f"install the versions pinned in constraints.txt (make install): {changed}"
    expected = record[model]
    run = run_loop(model, rectangles, tmp_path / "run")
    assert run.batches_equal_files, "the loop guard's batches must be the PNG pixels (no OpenCV kernel in them)"
    # Accumulate 2 ramped from 1 over the 16 warmup batches: steps after batches 0-7, then every second batch.
    assert run.accumulate == expected["accumulate"] == 2
    assert len(run.step_batches) == OPTIMIZER_STEPS and run.step_batches[:9] == [0, 1, 2, 3, 4, 5, 6, 7, 9]
    assert compare_loops(run, expected) == []
