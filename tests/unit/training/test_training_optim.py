"""The recipe's optimizer groups, nominal-batch rules and lr/momentum schedule (reference section 4)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from pgi_detect.training.optim import (
    AccumulationSchedule,
    RecipeSchedule,
    accumulate_steps,
    build_optimizer,
    lr_factor,
    parameter_groups,
    scaled_weight_decay,
    warmup_iterations,
)


@pytest.mark.parametrize(("batch", "expected"), [(8, 8), (16, 4), (32, 2), (48, 1), (64, 1), (96, 1), (128, 1)])
def test_accumulate_steps(batch, expected):
    assert accumulate_steps(batch) == expected


def test_weight_decay_scaling_matches_reference():
    assert scaled_weight_decay(5e-4, 16, accumulate_steps(16)) == pytest.approx(5e-4)
    assert scaled_weight_decay(5e-4, 32, accumulate_steps(32)) == pytest.approx(5e-4)
    # The reference quirk: batch 128 -> accumulate 1 -> weight decay doubles.
    assert scaled_weight_decay(5e-4, 128, accumulate_steps(128)) == pytest.approx(1e-3)
    assert scaled_weight_decay(5e-4, 48, accumulate_steps(48)) == pytest.approx(5e-4 * 48 / 64)


def test_parameter_groups_small_model():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1), nn.GroupNorm(2, 4),
        nn.Flatten(), nn.LayerNorm(4), nn.Linear(4, 2),
    )
    biases, decayed, norms = parameter_groups(model)
    assert len(biases) == 5  # bn, conv2, groupnorm, layernorm, linear
    assert [p.shape for p in decayed] == [torch.Size([4, 3, 3, 3]), torch.Size([4, 4, 1, 1]), torch.Size([2, 4])]
    assert len(norms) == 3
    assert len(biases) + len(decayed) + len(norms) == len(list(model.parameters()))


@pytest.mark.parametrize(("name", "counts"), [("gelan-c", (160, 161, 154)), ("yolov9-c", (253, 255, 238))])
def test_parameter_group_counts_match_reference(name, counts):
    from pgi_detect.models import build_model

    groups = parameter_groups(build_model(name, num_classes=80))
    assert tuple(len(g) for g in groups) == counts


def test_build_optimizer_groups_and_settings():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    sgd = build_optimizer(model, "sgd", lr=0.01, momentum=0.937, weight_decay=1e-3)
    assert isinstance(sgd, torch.optim.SGD)
    assert [g["weight_decay"] for g in sgd.param_groups] == [0.0, 1e-3, 0.0]
    assert all(g["nesterov"] and g["momentum"] == 0.937 for g in sgd.param_groups)
    adamw = build_optimizer(model, "adamw", lr=1e-3, momentum=0.9, weight_decay=0.05)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.param_groups[0]["betas"][0] == 0.9
    with pytest.raises(ValueError):
        build_optimizer(model, "lamb")  # type: ignore[arg-type]


def test_lr_factor_curves():
    assert lr_factor(0, 500, 0.01) == 1.0
    assert lr_factor(250, 500, 0.01) == pytest.approx(0.505)
    assert lr_factor(500, 500, 0.01) == pytest.approx(0.01)
    assert lr_factor(0, 100, 0.01, "cosine") == pytest.approx(1.0)
    assert lr_factor(50, 100, 0.01, "cosine") == pytest.approx(0.505)
    assert lr_factor(100, 100, 0.01, "cosine") == pytest.approx(0.01)
    assert lr_factor(37, 100, 0.01, "flat") == 1.0


def test_warmup_iterations():
    assert warmup_iterations(3.0, 7393) == 22179  # COCO at batch 16
    assert warmup_iterations(3.0, 10) == 100  # never fewer than 100
    assert warmup_iterations(0.0, 10) == 0


def test_schedule_values_during_and_after_warmup():
    schedule = RecipeSchedule(lr0=0.01, lrf=0.01, epochs=10, warmup_iters=200, batches_per_epoch=150)
    # Iteration 0: bias lr starts at 0.1, the others at 0, momentum at 0.8.
    assert schedule.lr(0, 0, 0) == pytest.approx(0.1)
    assert schedule.lr(1, 0, 0) == 0.0 and schedule.lr(2, 0, 0) == 0.0
    assert schedule.momentum_at(0) == pytest.approx(0.8)
    # Iteration 50 of 200 in epoch 0 (lf = 1): a quarter of the way.
    assert schedule.lr(0, 50, 0) == pytest.approx(0.1 + 0.25 * (0.01 - 0.1))
    assert schedule.lr(1, 50, 0) == pytest.approx(0.0025)
    assert schedule.momentum_at(50) == pytest.approx(0.8 + 0.25 * 0.137)
    # Warmup crossing into epoch 1 interpolates towards that epoch's lr: 0.01 * ((1 - 0.1) * 0.99 + 0.01).
    epoch1 = 0.01 * (0.9 * 0.99 + 0.01)
    assert schedule.lr(1, 150, 1) == pytest.approx(0.75 * epoch1)
    # After warmup: every group at lr0 * lf(epoch) in the epoch where warmup ends, one epoch behind afterwards (the
    # official lag), momentum back to 0.937.
    for group in range(3):
        assert schedule.lr(group, 201, 1) == pytest.approx(epoch1)
        assert schedule.lr(group, 5000, 9) == pytest.approx(0.01 * (0.2 * 0.99 + 0.01))
    assert schedule.momentum_at(201) == 0.937


def test_schedule_apply_writes_groups():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    optimizer = build_optimizer(model, "sgd")
    RecipeSchedule(epochs=10, warmup_iters=100).apply(optimizer, 25, 0)
    lrs = [g["lr"] for g in optimizer.param_groups]
    assert lrs == pytest.approx([0.1 - 0.25 * 0.09, 0.0025, 0.0025])
    assert optimizer.param_groups[1]["momentum"] == pytest.approx(0.8 + 0.25 * 0.137)
    adamw = build_optimizer(model, "adamw", lr=1e-3)
    RecipeSchedule(lr0=1e-3, epochs=10, warmup_iters=0, decay="cosine", lr_decay_lag=False).apply(adamw, 0, 5)
    assert adamw.param_groups[1]["lr"] == pytest.approx(1e-3 * (0.01 + 0.99 * (1 + math.cos(math.pi / 2)) / 2))
    assert adamw.param_groups[1]["betas"] == (0.937, 0.999)


def test_lr_decay_lags_one_epoch_after_warmup_like_the_official_loop():
    # The official loop resets its LambdaLR to last_epoch -1, so each epoch's end re-applies that epoch's factor.
    schedule = RecipeSchedule(lr0=0.01, lrf=0.01, epochs=40, warmup_iters=15, batches_per_epoch=10)
    lf = [lr_factor(e, 40, 0.01) for e in range(40)]
    assert schedule.lr(1, 15, 1) == pytest.approx(0.01 * lf[1])  # the last warmup batch reaches lr0 * lf(1)
    assert schedule.lr(1, 16, 1) == pytest.approx(0.01 * lf[1])  # the rest of that epoch stays there
    assert schedule.lr(1, 25, 2) == pytest.approx(0.01 * lf[1])  # the next epoch still runs at lf(1)
    assert schedule.lr(1, 35, 3) == pytest.approx(0.01 * lf[2])
    assert schedule.lr(0, 395, 39) == pytest.approx(0.01 * lf[38])
    as_written = RecipeSchedule(lr0=0.01, lrf=0.01, epochs=40, warmup_iters=15, batches_per_epoch=10,
                                lr_decay_lag=False)
    assert as_written.lr(1, 25, 2) == pytest.approx(0.01 * lf[2])
    # Without warmup: epochs 0 and 1 both at lf(0), then one behind.
    no_warmup = RecipeSchedule(lr0=0.01, lrf=0.01, epochs=40, warmup_iters=0, batches_per_epoch=10)
    assert [no_warmup.lr(1, 10 * e, e) for e in range(3)] == pytest.approx([0.01 * lf[0], 0.01 * lf[0], 0.01 * lf[1]])


def official_steps(ratio: float, warmup: int, batches: int) -> list[int]:
    """The official loop's rule written out: `accumulate` re-set during warmup, a step when ni - last >= it."""
    steps, last, accumulate = [], -1, max(round(ratio), 1)
    for ni in range(batches):
        if ni <= warmup:
            accumulate = max(1, np.interp(ni, [0, warmup], [1, ratio]).round())
        if ni - last >= accumulate:
            steps.append(ni)
            last = ni
    return steps


@pytest.mark.parametrize(("ratio", "warmup"), [(4.0, 300), (64 / 24, 100), (0.5, 100), (8.0, 0), (1.0, 50)])
def test_accumulation_schedule_steps_where_the_official_loop_does(ratio, warmup):
    schedule = AccumulationSchedule(ratio, warmup)
    expected = official_steps(ratio, warmup, 1000)
    last, steps = -1, []
    for ni in range(1000):
        if schedule.steps_at(ni, last):
            steps.append(ni)
            last = ni
    assert steps == expected
    # A resume without the saved position recovers it from the iteration alone.
    for ni in (0, 1, 7, warmup, warmup + 1, warmup + 2, 999):
        assert schedule.last_step_before(ni) == max([s for s in expected if s < ni], default=-1)
