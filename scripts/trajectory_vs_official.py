"""Training trajectory, ours vs the official YOLOv9 loop, step by step from the same weights on the same batches.

Our side is what a user runs: `pgi-detect fit` with the shipped `experiments/<model>-coco.yaml` (its callbacks, EMA,
DataLoader workers), pointed at a COCO folder, without augmentation and shrunk to a short CPU run. A callback runs,
on every batch our Trainer trains on, one iteration of the official `train_dual.py` / `train.py` loop, driven from the
official package (never copied): its `smart_optimizer` groups, the warmup interpolation of lr / momentum / bias lr and
of `accumulate`, the LambdaLR schedule stepped once per epoch (with the loop's `scheduler.last_epoch = -1`), the dual
or single `ComputeLoss`, `clip_grad_norm_(max_norm=10)` and `ModelEMA`. Both start from the same weights: the
official model's own initialisation (`--init official`, pre-rounded to fp16 as the official loop does) or a
deterministic one keyed on the official parameter names (`--init keyed`, what the test golden uses).

Printed per optimizer step: the loss items (box, cls, dfl) of both, lr and momentum of each parameter group, the
gradient norm before clipping, and the largest relative difference of the raw and the EMA weights. Before training it
checks the parameter groups and the BatchNorm settings of every block. `--golden FILE` records the official side's
trajectory (loss items, group lr / momentum, gradient norms, weight checksums) so tests/unit/training/test_training_official.py can
check our training path against it without the official code.

    # the official code: the PyPI package `yolo9` (WongKinYiu/yolov9 as a package), in a scratch venv
    .venv/bin/pip download yolo9==1.0.18 --no-deps --no-binary :all: -d /tmp/y9 && tar xzf /tmp/y9/yolo9-1.0.18.tar.gz -C /tmp/y9
    python3.11 -m venv /tmp/official-venv
    .venv/bin/python -c "import site; print(site.getsitepackages()[0])" > /tmp/official-venv/lib/python3.11/site-packages/pgi.pth
    echo "$PWD/src" >> /tmp/official-venv/lib/python3.11/site-packages/pgi.pth
    /tmp/official-venv/bin/pip install pandas ipython matplotlib seaborn "setuptools<81" psutil thop gitpython tensorboard
    OMP_NUM_THREADS=1 /tmp/official-venv/bin/python scripts/trajectory_vs_official.py \
        --official-root /tmp/y9/yolo9-1.0.18/src/yolo9 --models gelan-t yolov9-t yolov9-m
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "coco128"
CHECKSUM_SEED = 1234
# The official loss reads these from model.hyp; box/cls/dfl gains are hard-coded in its ComputeLoss.
OFFICIAL_LOSS_HYP = {"cls_pw": 1.0, "fl_gamma": 0.0, "label_smoothing": 0.0}
NO_AUGMENTATION = {
    "mosaic": 0.0, "copy_paste": 0.0, "mixup": 0.0, "degrees": 0.0, "translate": 0.0, "scale": 0.0, "shear": 0.0,
    "perspective": 0.0, "hsv_h": 0.0, "hsv_s": 0.0, "hsv_v": 0.0, "fliplr": 0.0, "flipud": 0.0, "blur": 0.0,
    "median_blur": 0.0, "to_gray": 0.0, "clahe": 0.0,
}


@dataclass(frozen=True)
class Protocol:
    """What both loops share: the data, the batches and the recipe (the official SGD recipe, shortened)."""

    model: str = "yolov9-t"
    img_size: int = 160
    batch_size: int = 8
    nominal_batch_size: int = 8
    batches_per_epoch: int = 10  # limit_train_batches; the official loop's `nb`
    steps: int = 40  # optimizer steps
    epochs: int = 40  # the schedule's length (lf), longer than the steps run
    warmup_epochs: float = 1.5
    min_warmup_iters: int = 1
    lr0: float = 0.01
    lrf: float = 0.01
    momentum: float = 0.937
    weight_decay: float = 5e-4
    warmup_bias_lr: float = 0.1
    warmup_momentum: float = 0.8
    seed: int = 0
    num_workers: int = 1

    @property
    def warmup_iters(self) -> int:
        return max(round(self.warmup_epochs * self.batches_per_epoch), self.min_warmup_iters)


# ---------------------------------------------------------------------------------------------- the two sides

def import_official(root: Path) -> dict[str, ModuleType]:
    """The official modules, from a yolov9 checkout (`models/yolo.py` at the root) or the `yolo9` package folder."""
    import importlib
    import logging

    root = root.resolve()
    if not (root / "models" / "yolo.py").is_file():
        raise SystemExit(f"--official-root {root}: no models/yolo.py there (a yolov9 checkout or the yolo9 package)")
    packaged = (root / "__init__.py").is_file()
    sys.path.insert(0, str(root.parent if packaged else root))
    prefix = f"{root.name}." if packaged else ""
    names = ("models.yolo", "utils.loss_tal", "utils.loss_tal_dual", "utils.torch_utils")
    import cv2

    opencv = (cv2.imread, cv2.imwrite, cv2.imshow)
    modules = {name: importlib.import_module(prefix + name) for name in names}
    cv2.imread, cv2.imwrite, cv2.imshow = opencv  # the official utils replace them process-wide; ours run as shipped
    logging.getLogger("yolov5").setLevel(logging.WARNING)
    logging.getLogger("yolo9").setLevel(logging.WARNING)
    return modules


def official_model(official: dict[str, ModuleType], root: Path, name: str, num_classes: int) -> nn.Module:
    import yaml

    config = yaml.safe_load((root / "models" / "detect" / f"{name}.yaml").read_text())
    return official["models.yolo"].DetectionModel(config, ch=3, nc=num_classes)


def keyed_initial_state(detector: nn.Module, seed: int) -> dict[str, Tensor]:
    """Initial weights (official keys) that depend only on the official names and shapes, not on the order modules
    are built in: every conv weight and conv bias drawn like PyTorch's default init, U(-1/sqrt(fan_in), +), from a
    generator keyed on its official name; the detect heads' output biases at the recipe's constants and everything
    else (BatchNorm, the DFL bins) as built."""
    from pgi_detect.weights.official import official_key_map

    fan_in: dict[str, int] = {}
    head_biases: set[int] = set()
    for name, module in detector.named_modules():
        if isinstance(module, nn.Conv2d):
            for tensor_name in ("weight", "bias"):
                if getattr(module, tensor_name) is not None:
                    fan_in[f"{name}.{tensor_name}"] = int(module.weight[0].numel())
        if hasattr(module, "reset_biases"):  # a detect head: its output convs keep the recipe's bias constants
            head_biases |= {id(branch[-1].bias) for branch in (*module.box, *module.cls)}
    head_bias_keys = {name for name, p in detector.named_parameters() if id(p) in head_biases}
    mapping = official_key_map(detector)
    state = {}
    for key, tensor in detector.state_dict().items():
        official = mapping[key]
        if key in fan_in and key not in head_bias_keys:
            generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(official.encode()))
            bound = 1.0 / math.sqrt(fan_in[key])
            tensor = (torch.rand(tensor.shape, generator=generator, dtype=torch.float64) * 2 - 1) * bound
        state[official] = tensor.detach().clone().to(torch.float32 if tensor.is_floating_point() else tensor.dtype)
    return state


def official_group_names(optimizer: torch.optim.Optimizer, model: nn.Module) -> list[set[str]]:
    names = {id(p): n for n, p in model.named_parameters()}
    return [{names[id(p)] for p in group["params"]} for group in optimizer.param_groups]


def our_group_names(optimizer: torch.optim.Optimizer, detector: nn.Module) -> list[set[str]]:
    from pgi_detect.weights.official import official_key_map

    mapping = official_key_map(detector)
    names = {id(p): mapping[n] for n, p in detector.named_parameters()}
    return [{names[id(p)] for p in group["params"]} for group in optimizer.param_groups]


def batch_norm_settings(model: nn.Module) -> dict[tuple[float, float], int]:
    counts: dict[tuple[float, float], int] = {}
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            key = (float(module.eps), float(module.momentum))
            counts[key] = counts.get(key, 0) + 1
    return counts


def weight_checksums(state: dict[str, Tensor]) -> dict[str, float]:
    """Sum, sum of squares and a fixed random projection of every floating tensor (official keys, sorted)."""
    flat = torch.cat([v.detach().double().flatten() for k, v in sorted(state.items()) if v.is_floating_point()])
    projection = torch.rand(flat.numel(), generator=torch.Generator().manual_seed(CHECKSUM_SEED), dtype=torch.float64)
    return {"sum": float(flat.sum()), "sum_sq": float(flat.square().sum()), "projection": float(flat @ projection)}


def batch_checksum(batch: dict[str, Any]) -> float:
    """Mean pixel plus the sum of the target rows: which images and labels a batch held."""
    return float(batch["images"].double().mean() + batch["targets"].double().sum())


def names_digest(names: list[str]) -> str:
    import hashlib

    return hashlib.sha1("\n".join(sorted(names)).encode()).hexdigest()


def max_relative_difference(ours: dict[str, Tensor], theirs: dict[str, Tensor]) -> tuple[float, str]:
    """max over floating tensors of max|a - b| / max|b| (and the key where it is reached)."""
    worst, where = 0.0, ""
    for key, reference in theirs.items():
        if not reference.is_floating_point():
            continue
        scale = float(reference.abs().max()) or 1.0
        value = float((ours[key].double() - reference.double()).abs().max()) / scale
        if value > worst:
            worst, where = value, key
    return worst, where


class OfficialLoop:
    """One iteration of the official training loop per call, on a batch given from outside."""

    def __init__(self, official: dict[str, ModuleType], model: nn.Module, protocol: Protocol, dual: bool) -> None:
        torch_utils = official["utils.torch_utils"]
        self.protocol = protocol
        self.model = model.train()
        nbs, batch = protocol.nominal_batch_size, protocol.batch_size
        self.accumulate = max(round(nbs / batch), 1)
        weight_decay = protocol.weight_decay * batch * self.accumulate / nbs
        self.optimizer = torch_utils.smart_optimizer(model, "SGD", protocol.lr0, protocol.momentum, weight_decay)
        epochs, lrf = protocol.epochs, protocol.lrf
        self.lf = lambda x: (1 - x / epochs) * (1.0 - lrf) + lrf  # the loop's linear schedule
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda=self.lf)
        self.ema = torch_utils.ModelEMA(model)
        self.scheduler.last_epoch = -1  # the loop's `scheduler.last_epoch = start_epoch - 1`
        model.hyp = dict(OFFICIAL_LOSS_HYP)
        loss_module = official["utils.loss_tal_dual" if dual else "utils.loss_tal"]
        self.compute_loss = loss_module.ComputeLoss(model)
        self.nw = protocol.warmup_iters
        self.last_opt_step = -1

    def iteration(self, images: Tensor, targets: Tensor, ni: int, epoch: int) -> dict[str, Any] | None:
        """Warmup, forward, loss, backward and (when `accumulate` batches are in) the clipped step and EMA update.
        Returns the step's record when an optimizer step was taken."""
        p = self.protocol
        if ni <= self.nw:
            xi = [0, self.nw]
            self.accumulate = max(1, np.interp(ni, xi, [1, p.nominal_batch_size / p.batch_size]).round())
            for j, group in enumerate(self.optimizer.param_groups):
                group["lr"] = np.interp(ni, xi, [p.warmup_bias_lr if j == 0 else 0.0,
                                                 group["initial_lr"] * self.lf(epoch)])
                if "momentum" in group:
                    group["momentum"] = np.interp(ni, xi, [p.warmup_momentum, p.momentum])
        pred = self.model(images.to(next(self.model.parameters()).dtype) / 255)
        loss, items = self.compute_loss(pred, targets)
        loss.backward()
        if ni - self.last_opt_step < self.accumulate:
            return None
        groups = [(float(g["lr"]), float(g.get("momentum", 0.0))) for g in self.optimizer.param_groups]
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm=10.0))
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.ema.update(self.model)
        self.last_opt_step = ni
        return {"items": [float(v) for v in items], "groups": groups, "grad_norm": grad_norm}

    def start_epoch(self) -> None:
        self.optimizer.zero_grad()  # the loop's `optimizer.zero_grad()` before each epoch's batches

    def end_epoch(self) -> None:
        self.scheduler.step()


@dataclass
class StepRecord:
    step: int
    epoch: int
    ni: int
    ours: dict[str, Any]
    official: dict[str, Any] | None = None
    raw_difference: float | None = None
    raw_worst: str = ""
    ema_difference: float | None = None
    ema_worst: str = ""
    raw_checksums: dict[str, float] = field(default_factory=dict)
    ema_checksums: dict[str, float] = field(default_factory=dict)


class Lockstep(pl.Callback):
    """Records our step (loss items, group lr / momentum, gradient norm before clipping, weights) and, with an
    official loop, runs its iteration on the same batch and compares. Must come after ModelEMA in the callbacks."""

    def __init__(self, protocol: Protocol, official: OfficialLoop | None = None, sync: bool = False) -> None:
        self.protocol = protocol
        self.official = official
        self.sync = sync
        self.records: list[StepRecord] = []
        self.timing_mismatches: list[int] = []
        self.batch_checksums: list[float] = []
        self.group_names: list[list[str]] = []
        self.initial_checksums: dict[str, float] = {}
        self._pending: dict[str, Any] = {}

    def on_train_start(self, trainer, pl_module) -> None:
        from pgi_detect.weights import to_official_state_dict

        self.group_names = [sorted(names) for names in our_group_names(trainer.optimizers[0], pl_module.detector)]
        self.initial_checksums = weight_checksums(to_official_state_dict(pl_module.detector))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        grads = [p.grad for p in pl_module.detector.parameters() if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        self._pending = {"grad_norm": float(norm),
                         "groups": [(float(g["lr"]), float(g.get("momentum", g.get("betas", (0.0,))[0])))
                                    for g in optimizer.param_groups]}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        from pgi_detect.weights import to_official_state_dict

        ni = trainer.current_epoch * int(trainer.num_training_batches) + batch_idx
        self.batch_checksums.append(batch_checksum(batch))
        theirs = None
        if self.official is not None:
            theirs = self.official.iteration(batch["images"], batch["targets"], ni, trainer.current_epoch)
        if bool(self._pending) != (theirs is not None or self.official is None):
            self.timing_mismatches.append(ni)  # one loop stepped after this batch, the other did not
        if not self._pending:
            return  # our loop accumulated this batch (no optimizer step yet)
        metrics = trainer.callback_metrics
        ours = {"items": [float(metrics[f"train/{n}_loss_step"]) for n in ("box", "cls", "dfl")], **self._pending}
        self._pending = {}
        ema = next(c for c in trainer.callbacks if hasattr(c, "averaged_module")).averaged_module
        raw_state, ema_state = to_official_state_dict(pl_module.detector), to_official_state_dict(ema)
        record = StepRecord(trainer.global_step, trainer.current_epoch, ni, ours,
                            raw_checksums=weight_checksums(raw_state), ema_checksums=weight_checksums(ema_state))
        if theirs is not None:
            record.official = {**theirs, "raw_checksums": weight_checksums(self.official.model.state_dict()),
                               "ema_checksums": weight_checksums(self.official.ema.ema.state_dict())}
            record.raw_difference, record.raw_worst = max_relative_difference(raw_state, self.official.model.state_dict())
            record.ema_difference, record.ema_worst = max_relative_difference(ema_state,
                                                                            self.official.ema.ema.state_dict())
        self.records.append(record)
        if self.sync and self.official is not None:
            self.copy_official_state(trainer, pl_module, ema)

    def copy_official_state(self, trainer, pl_module, ema: nn.Module) -> None:
        """Teacher forcing: our weights, BatchNorm buffers, momentum buffers and EMA become the official ones, so
        the next step compares one step of each loop from the same state (training is chaotic: a 1e-7 relative
        perturbation of the official loop's own weights grows to O(1) differences within 5 steps)."""
        from pgi_detect.weights.official import load_official_state_dict, official_key_map

        loop = self.official
        load_official_state_dict(pl_module.detector, loop.model.state_dict(), source="official state")
        load_official_state_dict(ema, loop.ema.ema.state_dict(), source="official EMA")
        theirs = dict(loop.model.named_parameters())
        mapping = official_key_map(pl_module.detector)
        optimizer = trainer.optimizers[0]
        for name, parameter in pl_module.detector.named_parameters():
            state = loop.optimizer.state.get(theirs[mapping[name]], {})
            if "momentum_buffer" in state and state["momentum_buffer"] is not None:
                optimizer.state[parameter]["momentum_buffer"] = state["momentum_buffer"].clone()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self.official is not None:
            self.official.start_epoch()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.official is not None:
            self.official.end_epoch()


# ---------------------------------------------------------------------------------------------- the run

def cli_arguments(protocol: Protocol, data: Path, output: Path) -> list[str]:
    """`pgi-detect fit` with the shipped config of the model, on a COCO folder, no augmentation, a short CPU run."""
    annotations = next((data / "annotations").glob("instances_train*.json"))
    images = data / "images" / annotations.stem.replace("instances_", "")
    return [
        "--config", str(REPO / "experiments" / f"{protocol.model}-coco.yaml"),
        f"--data.train={annotations}", f"--data.train_images={images}",
        f"--data.val={annotations}", f"--data.val_images={images}",
        f"--data.img_size={protocol.img_size}", f"--data.batch_size={protocol.batch_size}",
        f"--data.num_workers={protocol.num_workers}", "--data.pin_memory=false",
        "--data.augmentation=" + json.dumps(NO_AUGMENTATION), f"--data.seed={protocol.seed}",
        f"--seed_everything={protocol.seed}",
        f"--model.optim.nominal_batch_size={protocol.nominal_batch_size}",
        f"--model.optim.warmup_epochs={protocol.warmup_epochs}",
        f"--model.optim.min_warmup_iters={protocol.min_warmup_iters}",
        f"--model.optim.lr0={protocol.lr0}", f"--model.optim.lrf={protocol.lrf}",
        f"--model.optim.momentum={protocol.momentum}", f"--model.optim.weight_decay={protocol.weight_decay}",
        f"--model.optim.warmup_bias_lr={protocol.warmup_bias_lr}",
        f"--model.optim.warmup_momentum={protocol.warmup_momentum}",
        f"--trainer.max_epochs={protocol.epochs}", f"--trainer.max_steps={protocol.steps}",
        f"--trainer.limit_train_batches={protocol.batches_per_epoch}", "--trainer.limit_val_batches=0",
        "--trainer.num_sanity_val_steps=0", "--trainer.accelerator=cpu", "--trainer.precision=32-true",
        "--trainer.deterministic=true", "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={output}",
        "--trainer.logger=" + json.dumps({"class_path": "lightning.pytorch.loggers.CSVLogger",
                                          "init_args": {"save_dir": str(output)}}),
    ]


def synthetic_data(root: Path, protocol: Protocol) -> Path:
    """The demo's shapes dataset, as many images as the protocol's epochs use, at its image size."""
    from pgi_detect.data.synthetic import make_synthetic_coco

    make_synthetic_coco(root, num_train=protocol.batch_size * protocol.batches_per_epoch, num_val=2,
                        img_size=protocol.img_size, seed=protocol.seed)
    return root


def run(protocol: Protocol, data: Path, official: dict[str, ModuleType] | None = None,
        official_root: Path | None = None, init: str = "keyed", sync: bool = False,
        save: Path | None = None) -> Lockstep:
    """Train `protocol.model` through the CLI (and the official loop beside it); returns one record per step."""
    from pgi_detect.cli.main import build_cli
    from pgi_detect.weights.official import load_official_state_dict

    with tempfile.TemporaryDirectory() as output:
        cli = build_cli(cli_arguments(protocol, data, Path(output)), run=False)
        detector = cli.model.detector
        if init == "official":
            if official is None:
                raise SystemExit("--init official needs the official code (--official-root)")
            torch.manual_seed(protocol.seed)
            initial = official_model(official, official_root, protocol.model, detector.num_classes).state_dict()
        else:
            initial = keyed_initial_state(detector, protocol.seed)
        initial = {k: v.half().float() if v.is_floating_point() else v for k, v in initial.items()}  # as the loop
        load_official_state_dict(detector, initial, source="initial weights")
        loop = None
        if official is not None:
            theirs = official_model(official, official_root, protocol.model, detector.num_classes)
            theirs.load_state_dict(initial)
            loop = OfficialLoop(official, theirs, protocol, dual=protocol.model.startswith("yolov9"))
        lockstep = Lockstep(protocol, loop, sync)
        cli.trainer.callbacks.append(lockstep)
        if loop is not None:
            report_setup(cli, loop)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        if save is not None:  # the final EMA weights of both loops (official keys), for `validate --model.weights`
            from pgi_detect.weights import to_official_state_dict

            save.mkdir(parents=True, exist_ok=True)
            torch.save(to_official_state_dict(cli.model.detector), save / "ours_ema.pt")  # fit ends on the EMA
            if loop is not None:
                torch.save({k: v.float() for k, v in loop.ema.ema.state_dict().items()}, save / "official_ema.pt")
    return lockstep


def score(protocol: Protocol, data: Path, weights: Path) -> tuple[float, float]:
    """Our `validate` of a weights file on the protocol's data (train = val): (mAP, mAP50)."""
    from pgi_detect.cli.main import build_cli

    annotations = next((data / "annotations").glob("instances_train*.json"))
    images = data / "images" / annotations.stem.replace("instances_", "")
    cli = build_cli(["validate", "--config", str(REPO / "experiments" / f"{protocol.model}-coco.yaml"),
                     f"--data.train={annotations}", f"--data.train_images={images}", f"--data.val={annotations}",
                     f"--data.val_images={images}", f"--data.img_size={protocol.img_size}", "--data.num_workers=0",
                     "--trainer.accelerator=cpu", "--trainer.precision=32-true", "--trainer.logger=false",
                     "--trainer.callbacks=[]", f"--model.weights={weights}",
                     f"--trainer.default_root_dir={weights.parent / 'score'}"])
    metrics = cli.trainer.callback_metrics
    return float(metrics["val/mAP"]), float(metrics["val/mAP50"])


def report_setup(cli, loop: OfficialLoop) -> None:
    """Parameter groups and BatchNorm settings, ours vs official, before any step."""
    ours_groups = our_group_names(cli.model.optim.build_optimizer(cli.model.detector, loop.protocol.batch_size, 1),
                                  cli.model.detector)
    theirs_groups = official_group_names(loop.optimizer, loop.model)
    for index, (ours, theirs) in enumerate(zip(ours_groups, theirs_groups)):
        verdict = "same" if ours == theirs else (f"DIFFER: only ours {sorted(ours - theirs)[:5]}, only official "
                                                 f"{sorted(theirs - ours)[:5]}")
        print(f"  group {index}: ours {len(ours)}, official {len(theirs)} tensors, weight decay "
              f"{loop.optimizer.param_groups[index]['weight_decay']:g}: {verdict}")
    print(f"  BatchNorm (eps, momentum): ours {batch_norm_settings(cli.model.detector)}, "
          f"official {batch_norm_settings(loop.model)}")


def relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def print_records(model: str, records: list[StepRecord]) -> None:
    print(f"\n{model}: step ep  ni | loss items ours (box cls dfl) | max rel diff items | lr g0/g1/g2 ours | "
          "lr rel diff | momentum ours / official | grad norm ours / official | raw rel diff | ema rel diff")
    for r in records:
        o = r.official
        if o is None:
            print(f"  {r.step:3d} {r.epoch:2d} {r.ni:3d} | " + " ".join(f"{v:.5f}" for v in r.ours["items"]))
            continue
        item_diff = max(relative(a, b) for a, b in zip(r.ours["items"], o["items"]))
        lr_diff = max(relative(a[0], b[0]) for a, b in zip(r.ours["groups"], o["groups"]))
        print(f"  {r.step:3d} {r.epoch:2d} {r.ni:3d} | " + " ".join(f"{v:.5f}" for v in r.ours["items"])
              + f" | {item_diff:.1e} | " + "/".join(f"{g[0]:.5f}" for g in r.ours["groups"])
              + f" | {lr_diff:.1e} | {r.ours['groups'][1][1]:.4f} / {o['groups'][1][1]:.4f}"
              + f" | {r.ours['grad_norm']:.4f} / {o['grad_norm']:.4f} | {r.raw_difference:.1e} | "
              + f"{r.ema_difference:.1e}")
    worst = max(records, key=lambda r: r.raw_difference or 0.0)
    if worst.official is not None:
        print(f"  largest raw difference {worst.raw_difference:.2e} at step {worst.step} ({worst.raw_worst}); "
              f"last step: raw {records[-1].raw_difference:.2e}, EMA {records[-1].ema_difference:.2e}")


def golden_record(protocol: Protocol, lockstep: Lockstep, source: str) -> dict[str, Any]:
    """The official side of a run: its parameter groups, the batches it stepped after, and per step the loss items,
    group lr / momentum, gradient norm and weight checksums; plus what fixes the inputs (initial weights, batches)."""
    loop = lockstep.official
    assert loop is not None
    return {
        "protocol": asdict(protocol),
        "source": source,
        "initial_checksums": lockstep.initial_checksums,
        "batch_checksums": lockstep.batch_checksums,
        "groups": [{"count": len(names), "sha1": names_digest(sorted(names))}
                   for names in official_group_names(loop.optimizer, loop.model)],
        "step_batches": [r.ni for r in lockstep.records if r.official is not None],
        "steps": [r.official for r in lockstep.records if r.official is not None],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official-root", type=Path, required=True,
                        help="the yolo9 package folder or a yolov9 checkout (holds models/yolo.py)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="COCO folder (annotations/, images/), or 'synthetic' for the demo's shapes")
    parser.add_argument("--models", nargs="+", default=["gelan-t", "yolov9-t"])
    parser.add_argument("--init", choices=["official", "keyed"], default="official")
    parser.add_argument("--free", action="store_true",
                        help="let both loops run free (no teacher forcing): shows how fast chaos separates them")
    parser.add_argument("--save", type=Path, help="write both loops' final EMA weights here and score them")
    parser.add_argument("--golden", type=Path, help="record the official trajectory of the (single) model here")
    for name, default in asdict(Protocol()).items():
        if name != "model":
            parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    args = parser.parse_args(argv)
    if args.golden and (args.init != "keyed" or len(args.models) != 1):
        parser.error("--golden records one model from the keyed initial weights (--init keyed, one --models)")
    torch.set_num_threads(1)
    official = import_official(args.official_root)
    settings = {k: getattr(args, k) for k in asdict(Protocol()) if k != "model"}
    for model in args.models:
        protocol = Protocol(model=model, **settings)
        print(f"{model}: {protocol.steps} steps, batch {protocol.batch_size}, {protocol.img_size} px, "
              f"{protocol.batches_per_epoch} batches/epoch, warmup {protocol.warmup_iters} iterations, "
              f"init {args.init}", flush=True)
        with tempfile.TemporaryDirectory() as scratch:
            data = synthetic_data(Path(scratch), protocol) if str(args.data) == "synthetic" else args.data
            lockstep = run(protocol, data, official, args.official_root.resolve(), args.init, sync=not args.free,
                           save=None if args.save is None else args.save / model)
            if args.save is not None:
                for side in ("official", "ours"):
                    mAP, mAP50 = score(protocol, data, args.save / model / f"{side}_ema.pt")
                    print(f"{model} {side} loop, final EMA: mAP {mAP:.4f} mAP50 {mAP50:.4f}", flush=True)
        records = lockstep.records
        print_records(model, records)
        print(f"  optimizer-step timing: {'the same after every batch' if not lockstep.timing_mismatches else 'DIFFERS after batches ' + str(lockstep.timing_mismatches)}")
        if args.golden:
            source = (f"official loop of {args.official_root.resolve().parent.parent.name or args.official_root} "
                      f"(scripts/trajectory_vs_official.py --data {args.data} --init {args.init})")
            args.golden.write_text(json.dumps(golden_record(protocol, lockstep, source), indent=1) + "\n")
            print(f"wrote {args.golden}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
