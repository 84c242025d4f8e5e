"""Refactoring guard: 24 optimizer steps of gelan-t and yolov9-t through the CLI with the shipped COCO configs on
coco128 (full recipe, deterministic CPU) reproduce the recorded loss items and final raw / EMA weight checksums.

A deliberate change of the training numbers re-records tests/data/trajectory.json (tests/helpers/trajectory.py
--write) with the reason in the commit message."""
from __future__ import annotations

import json

import pytest

from helpers.trajectory import MODELS, OPTIMIZER_STEPS, RECORD, package_versions, run_trajectory

RELATIVE_TOLERANCE = 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_training_trajectory_is_reproduced(model, coco128_dir, tmp_path):
    record = json.loads(RECORD.read_text())
    expected = record[model]
    changed = {name: f"recorded with {was}, now {now}" for name, now in package_versions().items()
               if (was := record["versions"].get(name)) != now}
    # A different opencv moves pixels of the resize/warp and so the losses: say so instead of blaming our code.
    assert not changed, f"install the versions pinned in constraints.txt (make install): {changed}"
    actual = run_trajectory(model, coco128_dir, tmp_path)
    assert actual["accumulate"] == expected["accumulate"] == 2
    assert OPTIMIZER_STEPS == 24 and len(actual["items"]) == len(expected["items"]) == 40
    # The recipe really ran: mosaic everywhere and some mixups (copy-paste runs inside the mosaics).
    assert actual["pipelines"] == expected["pipelines"] and expected["pipelines"]["mosaic+mixup"] > 0
    for step, (got, want) in enumerate(zip(actual["items"], expected["items"])):
        assert got == pytest.approx(want, rel=RELATIVE_TOLERANCE), f"batch {step}: loss items {got} != {want}"
    for kind in ("raw", "ema"):
        assert actual[kind] == pytest.approx(expected[kind], rel=RELATIVE_TOLERANCE), kind
