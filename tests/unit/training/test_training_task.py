"""DetectionTask behaviour on a tiny deterministic in-memory dataset: recipe wiring (accumulation, weight decay,
schedule), float32 loss, non-finite guard, EMA validation, COCO evaluation and exact resume after a kill.

The fakes here (`SquaresDataModule`) are independent of pgi_detect.data so that these tests are deterministic;
tests/e2e/test_training_coco128.py and tests/unit/cli/test_cli.py cover the real data module.
"""
from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from helpers.squares import SquaresDataModule, SquaresDataset, collate, make_task, make_trainer
from pgi_detect.training import DetectionTask, ModelEMA
from pgi_detect.training.optim import parameter_groups, warmup_iterations


class StepLog(pl.Callback):
    """global_step and the group-1 lr after every training batch."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.lrs: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps.append(trainer.global_step)
        self.lrs.append(trainer.optimizers[0].param_groups[1]["lr"])


def test_recipe_wiring_accumulation_weight_decay_and_schedule(tmp_path):
    pl.seed_everything(0)
    task = make_task(optim={"nominal_batch_size": 8})  # the 64-image rule scaled down to keep the test small
    log = StepLog()
    trainer = make_trainer(tmp_path, [log], max_steps=6, limit_val_batches=0, enable_checkpointing=False)
    trainer.fit(task, datamodule=SquaresDataModule(train=16, batch_size=2))
    optimizer = trainer.optimizers[0]
    groups = optimizer.param_groups
    assert isinstance(optimizer, torch.optim.SGD) and groups[0]["nesterov"]
    assert [len(g["params"]) for g in groups] == [len(group) for group in parameter_groups(task.detector)]
    # Weight decay 5e-4 * batch 2 * accumulate max(round(8 / 2), 1) = 4 / nominal 8 = 5e-4, on group 1 only.
    assert [g["weight_decay"] for g in groups] == pytest.approx([0.0, 5e-4, 0.0])
    # The official accumulation: over the warmup of max(round(1 epoch * 8), 2) = 8 batches, batches per step ramp
    # round(interp(ni, [0, 8], [1, 4])) = 1 1 2 2 2 3 3 4 4, a step when ni - last step >= that: steps after
    # batches 0, 1, 3 and 6. Epoch 1 starts by clearing batch 7's gradients; then 4 per step: after 10 and 14.
    assert warmup_iterations(1.0, 8, 2) == 8
    assert log.steps == [1, 2, 2, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 6]
    # Per batch, the lrs rise from 0 to lr0 * lf(epoch) over the warmup: batch ni at ni/8 of the way.
    assert log.lrs[:8] == pytest.approx([ni / 8 * 0.01 for ni in range(8)])


class LossWrapper:
    """A criterion around the task's own one: `around(inner, branches, targets)` decides what it returns."""

    def __init__(self, inner, around) -> None:
        self.inner, self.around = inner, around
        self.item_names = inner.item_names

    def __call__(self, branches, targets):
        return self.around(self.inner, branches, targets)


def task_with_loss(around, **kwargs) -> DetectionTask:
    """A DetectionTask subclass whose `configure_losses` wraps the recipe loss (the hook a custom loss overrides)."""

    class WrappedLossTask(DetectionTask):
        def configure_losses(self) -> None:
            super().configure_losses()
            self.criterion = LossWrapper(self.criterion, around)

    return make_task(task_class=WrappedLossTask, **kwargs)


def test_loss_is_float32_under_bf16_autocast(tmp_path):
    pl.seed_everything(0)
    seen: list[torch.dtype] = []

    def recording(criterion, branches, targets):
        seen.extend(level.dtype for branch in branches for level in branch)
        assert not torch.is_autocast_enabled("cpu")
        return criterion(branches, targets)

    task = task_with_loss(recording, optim={"auto_accumulate": False})
    trainer = make_trainer(tmp_path, max_steps=2, limit_val_batches=0, enable_checkpointing=False,
                           precision="bf16-mixed")
    trainer.fit(task, datamodule=SquaresDataModule(train=8))
    assert seen and set(seen) == {torch.float32}


class SnapshotWeights(pl.Callback):
    def __init__(self) -> None:
        self.weights: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.weights.append(next(pl_module.detector.parameters()).detach().clone())


def test_nonfinite_loss_skips_step_then_stops(tmp_path):
    pl.seed_everything(0)
    calls = {"n": 0}

    def sometimes_nan(criterion, branches, targets):
        calls["n"] += 1
        loss, items = criterion(branches, targets)
        return (loss * float("nan"), items) if calls["n"] == 2 else (loss, items)

    task = task_with_loss(sometimes_nan, optim={"auto_accumulate": False}, guard={"max_nonfinite_steps": 3})
    snapshots = SnapshotWeights()
    trainer = make_trainer(tmp_path, [snapshots], max_steps=3, limit_val_batches=0, enable_checkpointing=False)
    trainer.fit(task, datamodule=SquaresDataModule(train=16))
    # The NaN batch (the 2nd) is not a step: three steps take four batches.
    assert calls["n"] == 4 and task.loop.nonfinite_guard.total_skipped == 1 and trainer.global_step == 3
    # The NaN batch left the weights untouched; the others changed them.
    first, second, third, fourth = snapshots.weights
    assert torch.equal(first, second) and not torch.equal(second, third) and not torch.equal(third, fourth)
    for parameter in task.parameters():
        assert torch.isfinite(parameter).all()

    task = task_with_loss(lambda criterion, b, t: (sum(level.sum() for level in b[-1]) * float("inf"),
                                                   torch.zeros(3)),
                          optim={"auto_accumulate": False}, guard={"max_nonfinite_steps": 3})
    trainer = make_trainer(tmp_path, max_steps=10, limit_val_batches=0, enable_checkpointing=False)
    with pytest.raises(FloatingPointError):
        trainer.fit(task, datamodule=SquaresDataModule(train=16))


def test_validation_scores_each_image_once_with_ema(tmp_path):
    pl.seed_everything(0)
    task = make_task(optim={"auto_accumulate": False})
    ema = ModelEMA()
    datamodule = SquaresDataModule(train=8, val=5, batch_size=2)
    trainer = make_trainer(tmp_path, [ema], max_epochs=1, enable_checkpointing=False)
    trainer.fit(task, datamodule=datamodule)
    assert task.last_eval["image_ids"] == [1000, 1001, 1002, 1003, 1004]
    metrics = trainer.callback_metrics
    for key in ("val/mAP", "val/mAP50", "val/mAP75", "val/mAP_small", "val/mAP_medium", "val/mAP_large",
                "val/fitness"):
        assert key in metrics and 0.0 <= float(metrics[key]) <= 1.0
    assert float(metrics["val/fitness"]) == pytest.approx(
        0.1 * float(metrics["val/mAP50"]) + 0.9 * float(metrics["val/mAP"]), abs=1e-6)


def _loss_and_gradient(task: DetectionTask, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    loss = task.compute_loss(batch).total
    loss.backward()
    grads = [p.grad.flatten() for p in task.detector.parameters() if p.grad is not None]
    return loss.detach(), torch.cat(grads)


def _squares_batch(count: int = 4) -> dict:
    dataset = SquaresDataset(count)
    return collate([dataset[i] for i in range(count)])


def test_channels_last_trains_the_same_model_and_evaluates(tmp_path):
    pl.seed_everything(0)
    batch = _squares_batch()
    reference = make_task()
    task = make_task(channels_last=True)
    task.load_state_dict(reference.state_dict())
    conv_weight = task.detector.layers[0].conv.weight
    assert conv_weight.is_contiguous(memory_format=torch.channels_last) and not conv_weight.is_contiguous()
    expected_loss, expected_grad = _loss_and_gradient(reference, batch)
    loss, grad = _loss_and_gradient(task, batch)
    # Same maths in another summation order: float32 rounding only.
    assert float(loss) == pytest.approx(float(expected_loss), rel=1e-4)
    assert float((grad - expected_grad).norm() / expected_grad.norm()) < 0.02
    # The layout survives a fit with validation (EMA copy, stripped + fused eval copy).
    trainer = make_trainer(tmp_path, [ModelEMA()], max_epochs=1, enable_checkpointing=False)
    trainer.fit(task, datamodule=SquaresDataModule(train=4, val=3, batch_size=2))
    assert task.last_eval["image_ids"] == [1000, 1001, 1002]
    assert task.detector.layers[0].conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert task.derived.eval_model.layers[0].conv.weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.slow
def test_compiled_training_forward_matches_eager_and_keeps_checkpoint_keys(tmp_path):
    pl.seed_everything(0)
    batch = _squares_batch()
    reference = make_task()
    # aot_eager traces forward and backward through dynamo + AOTAutograd like inductor, without compiling C++.
    task = make_task(compile={"backend": "aot_eager"})
    task.load_state_dict(reference.state_dict())
    expected_loss, expected_grad = _loss_and_gradient(reference, batch)
    loss, grad = _loss_and_gradient(task, batch)
    assert isinstance(task.training_detector(), torch._dynamo.eval_frame.OptimizedModule)
    assert task.training_detector()._orig_mod is task.detector
    torch.testing.assert_close(loss, expected_loss, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-6)
    assert list(task.state_dict()) == list(reference.state_dict())
    assert not any("_orig_mod" in name for name, _ in task.named_modules())
    # Fitting with EMA copies the detector after the compiled wrapper exists; the copy must stay plain.
    ema = ModelEMA()
    trainer = make_trainer(tmp_path, [ema], max_steps=1, limit_val_batches=0, enable_checkpointing=False)
    trainer.fit(task, datamodule=SquaresDataModule(train=4, batch_size=4))
    # The EMA averages the plain detector only, never the compiled wrapper.
    assert trainer.global_step == 1 and type(ema.averaged_module) is type(task.detector)


class KillAtEpoch(pl.Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated kill")


def _resume_run(tmp_path, kill: bool) -> tuple[DetectionTask, ModelEMA, pl.Trainer]:
    pl.seed_everything(0)
    checkpoint_dir = tmp_path / "ckpt"

    def callbacks(extra=()):
        return [ModelEMA(tau=5.0), pl.callbacks.ModelCheckpoint(dirpath=checkpoint_dir, save_last=True), *extra]

    datamodule = SquaresDataModule(train=8, val=3, batch_size=4)
    task = make_task(optim={"auto_accumulate": False})
    common = dict(max_epochs=3, limit_val_batches=0)
    if not kill:
        callbacks_ = callbacks()
        trainer = make_trainer(tmp_path, callbacks_, **common)
        trainer.fit(task, datamodule=datamodule)
        return task, callbacks_[0], trainer
    trainer = make_trainer(tmp_path, callbacks([KillAtEpoch(2)]), **common)
    with pytest.raises(RuntimeError, match="simulated kill"):
        trainer.fit(task, datamodule=datamodule)
    assert (checkpoint_dir / "last.ckpt").exists()
    pl.seed_everything(1)  # a different process state must not matter
    task = make_task(optim={"auto_accumulate": False})
    callbacks_ = callbacks()
    trainer = make_trainer(tmp_path, callbacks_, **common)
    trainer.fit(task, datamodule=SquaresDataModule(train=8, val=3, batch_size=4), ckpt_path="last")
    return task, callbacks_[0], trainer


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_state(tmp_path):
    reference_task, reference_ema, reference_trainer = _resume_run(tmp_path / "a", kill=False)
    resumed_task, resumed_ema, resumed_trainer = _resume_run(tmp_path / "b", kill=True)
    assert resumed_trainer.global_step == reference_trainer.global_step == 6
    assert resumed_ema.updates == reference_ema.updates == 6
    # After fit both modules hold the EMA weights; compare them and the raw weights kept by the optimizer state.
    for (name, a), b in zip(reference_task.state_dict().items(), resumed_task.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)
    reference_opt = reference_trainer.optimizers[0].state_dict()
    resumed_opt = resumed_trainer.optimizers[0].state_dict()
    for key, state in reference_opt["state"].items():
        torch.testing.assert_close(resumed_opt["state"][key]["momentum_buffer"], state["momentum_buffer"],
                                   rtol=1e-5, atol=1e-6)
    assert [g["lr"] for g in resumed_opt["param_groups"]] == pytest.approx(
        [g["lr"] for g in reference_opt["param_groups"]])
    # The raw (non-EMA) weights, saved in last.ckpt as current_model_state, match too.
    raw_a = torch.load(tmp_path / "a" / "ckpt" / "last.ckpt", weights_only=False)["current_model_state"]
    raw_b = torch.load(tmp_path / "b" / "ckpt" / "last.ckpt", weights_only=False)["current_model_state"]
    for name, value in raw_a.items():
        torch.testing.assert_close(raw_b[name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_float64_weights_train_with_the_model_summary_and_a_float64_ema(tmp_path):
    """64-true converts the weights: the images, the summary's example input and the EMA follow their dtype (the
    summary used to fail on a float32 example input, and the EMA stayed float32)."""
    pl.seed_everything(0)
    task = make_task(optim={"auto_accumulate": False}, img_size=64)
    ema = ModelEMA()
    trainer = make_trainer(tmp_path, [ema], max_steps=1, limit_val_batches=0, enable_checkpointing=False,
                           precision="64-true", enable_model_summary=True)
    trainer.fit(task, datamodule=SquaresDataModule(train=4, batch_size=2))
    assert trainer.global_step == 1
    assert next(task.detector.parameters()).dtype == torch.float64
    assert next(ema.averaged_module.parameters()).dtype == torch.float64
