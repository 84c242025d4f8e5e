"""The refactoring guard, in two parts that each hold on any CPU (tests/unit/training/test_training_trajectory.py):

* **Data guard**: the first batches of two epochs of the shipped recipe (experiments/yolov9-t-coco.yaml through the
  CLI, its persistent DataLoader workers, on the shared coco128 images at 160 px: mosaic, copy-paste, mixup, affine,
  HSV, flips), reduced to image ids, pipelines, exact targets and 8x8-block sums of every image. OpenCV picks its
  resize/warp/colour kernels by the CPU's instruction set, so a pixel may differ by a level or two between CPUs; the
  comparison passes that and fails a changed augmentation (see `compare_batches`).
* **Loop guard**: 24 optimizer steps of gelan-t and yolov9-t through the CLI with their shipped configs (warmup and
  its end, the ramped gradient accumulation, clipping, weight decay, EMA, an epoch boundary), in float64
  (`64-true`), from initial weights drawn with numpy, on rectangles drawn with numpy and stored as PNG at the
  training size with augmentation off, so no OpenCV kernel shapes a pixel (the guard checks that the batches equal
  the files). Both learning rates of the recipe are scaled by LR_SCALE: at the recipe's own rates training is so
  chaotic that float64 kernel noise (1e-16) grows 100x per batch and reaches 1e-2 by batch 9 (a flipped top-k choice
  of the assigner makes the loss jump), while at 1/1000 of them it stays below 1e-12 over all 40 batches on any
  kernels (measured under `make test-cpu-baseline`). The guard compares the exact step schedule (which batches
  step, every group's lr and momentum), the loss items, and checksums of the weight updates (final - initial, raw
  and EMA), so a changed update shows at its own scale rather than beside the weights.

Re-record only for a deliberate change of the training numbers or of the augmentation, and say why in the commit
message (both guards are written; the CPU does not matter):

    OMP_NUM_THREADS=1 .venv/bin/python tests/helpers/trajectory.py --write
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
DATA_RECORD = REPO / "tests" / "data" / "data_guard.npz"
LOOP_RECORD = REPO / "tests" / "data" / "trajectory.json"
MODELS = ("gelan-t", "yolov9-t")
BATCH_SIZE = 4
CHECKSUM_SEED = 1234

# ---------------------------------------------------------------------------------------------------- data guard
DATA_CONFIG = "yolov9-t"  # every shipped COCO config takes its data section from experiments/base/coco.yaml
DATA_IMG_SIZE = 160
DATA_EPOCHS = (0, 1)
DATA_BATCHES_PER_EPOCH = 8
BLOCK = 8
# A block sum may move by one level per pixel of its 8x8 block (64): kernel differences between CPUs move a few
# scattered pixels by 1-3 levels (measured: at most 13 per block, 0.9 % of blocks touched). Over a whole image the
# mean may move by 0.05 levels per pixel. A one-pixel shift moves blocks by up to ~1400 and the mean by ~1.6 levels,
# a 1 % brightness change blocks by ~130 and the mean by ~0.9: both fail.
BLOCK_TOLERANCE = 64
MEAN_TOLERANCE = 0.05
# Targets are float32 boxes normalised to the image: float64 geometry whose last bit a libm/SIMD ULP may move rounds
# to the same float32 or its neighbour (6e-8); a real change of a box moves it by far more than 1e-6 (0.16 px).
BOX_TOLERANCE = 1e-6
# What the recorded augmented pixels depend on besides our code (pinned in constraints.txt); a mismatch names them.
DATA_PACKAGES = ("opencv-python-headless", "numpy", "albumentations")

# ---------------------------------------------------------------------------------------------------- loop guard
LOOP_IMG_SIZE = 128
LOOP_IMAGES = 128  # 32 batches per epoch
OPTIMIZER_STEPS = 24
# Accumulate 2, ramped from 1 over the 16 warmup batches (the official rule): steps after batches 0-7, then after
# every second batch; 24 steps take 40 batches, across the 32-batch epoch boundary.
NOMINAL_BATCH = 8
# lr0 0.01 -> 1e-5 and warmup_bias_lr 0.1 -> 1e-4: every schedule, ratio and code path as shipped, without the chaos.
LR_SCALE = 1e-3
# Kernel noise on the loss items and update checksums after 40 batches: at most 3.4e-12 relative between the native
# and the baseline-kernel profile. A real change of the loop moves them by far more: weight decay +2 % moves the
# update by 3e-4, momentum 0.937 -> 0.9371 by 1e-3, clipping at 9 instead of 10 by 1e-4; a step one batch late
# changes step_batches (docs/development.md).
LOOP_RELATIVE_TOLERANCE = 1e-9
# The lr / momentum schedule is plain float64 arithmetic of the recipe: equal to rounding.
SCHEDULE_TOLERANCE = 1e-12
LOOP_PACKAGES = ("torch", "lightning")
NO_AUGMENTATION = {name: 0.0 for name in ("mosaic", "copy_paste", "mixup", "degrees", "translate", "scale", "shear",
                                          "perspective", "hsv_h", "hsv_s", "hsv_v", "fliplr", "flipud", "blur",
                                          "median_blur", "to_gray", "clahe")}


def package_versions(names: tuple[str, ...]) -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in names}


def changed_versions(recorded: dict[str, str], names: tuple[str, ...]) -> dict[str, str]:
    """Packages whose installed version differs from the recorded one, with both versions."""
    return {name: f"recorded with {recorded.get(name)}, now {now}" for name, now in package_versions(names).items()
            if recorded.get(name) != now}


def shipped_config_arguments(model: str, train: Path, images: Path, img_size: int, output: Path) -> list[str]:
    """The user's command line: the shipped experiment config, pointed at a small set and shrunk to a CPU run (its
    DataLoader workers, persistent workers and callbacks as shipped)."""
    return [
        "--config", str(REPO / "experiments" / f"{model}-coco.yaml"),
        f"--data.train={train}", f"--data.train_images={images}",
        f"--data.val={train}", f"--data.val_images={images}",
        f"--data.img_size={img_size}", f"--data.batch_size={BATCH_SIZE}",
        f"--trainer.default_root_dir={output}",
        "--trainer.logger=" + json.dumps({"class_path": "lightning.pytorch.loggers.CSVLogger",
                                          "init_args": {"save_dir": str(output)}}),
    ]


# ---------------------------------------------------------------------------------------------------- data guard


def block_sums(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) uint8 -> (B, 3, H/BLOCK, W/BLOCK) uint16 sums of each BLOCK x BLOCK block."""
    b, c, h, w = images.shape
    sums = images.numpy().astype(np.int64).reshape(b, c, h // BLOCK, BLOCK, w // BLOCK, BLOCK).sum((3, 5))
    return sums.astype(np.uint16)


def draw_recipe_batches(coco128: Path, output: Path) -> list[dict]:
    """The first DATA_BATCHES_PER_EPOCH batches of each epoch in DATA_EPOCHS, drawn through the shipped config's
    training loader (the data guard's input; `batches_record` reduces them)."""
    from pgi_detect.cli.main import build_cli

    annotations = coco128 / "annotations" / "instances_train2017.json"
    args = shipped_config_arguments(DATA_CONFIG, annotations, coco128 / "images" / "train2017", DATA_IMG_SIZE, output)
    cli = build_cli(args, run=False)
    cli.datamodule.setup("fit")
    loader = cli.datamodule.train_dataloader()
    assert loader.num_workers > 0 and loader.persistent_workers, "the shipped config loads with persistent workers"
    batches = []
    for epoch in DATA_EPOCHS:
        loader.sampler.set_epoch(epoch)
        batches += list(itertools.islice(loader, DATA_BATCHES_PER_EPOCH))
    return batches


def batches_record(batches: list[dict]) -> dict[str, np.ndarray]:
    """Image ids, pipelines, targets (with the batch each row belongs to) and the images' block sums."""
    return {
        "image_ids": np.stack([batch["image_ids"].numpy() for batch in batches]),
        "pipelines": np.stack([np.asarray(batch["pipelines"]) for batch in batches]),
        "targets": np.concatenate([batch["targets"].numpy() for batch in batches]),
        "target_batch": np.concatenate([np.full(len(batch["targets"]), k, np.int64) for k, batch in enumerate(batches)]),
        "blocks": np.stack([block_sums(batch["images"]) for batch in batches]),
    }


def compare_batches(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> list[str]:
    """What differs beyond the tolerances above, one line per finding (empty: the recipe is reproduced)."""
    problems = []
    for key in ("image_ids", "pipelines", "target_batch"):
        if not np.array_equal(actual[key], expected[key]):
            problems.append(f"{key} differ: data order, augmentation choices or the boxes kept changed")
    if problems:
        return problems
    got, want = actual["targets"], expected["targets"]
    if not np.array_equal(got[:, :2], want[:, :2]):
        problems.append("target image indices or classes differ")
    box_error = float(np.abs(got[:, 2:] - want[:, 2:]).max(initial=0.0))
    if box_error > BOX_TOLERANCE:
        problems.append(f"target boxes differ by up to {box_error:.3g} of the image (tolerance {BOX_TOLERANCE})")
    difference = np.abs(actual["blocks"].astype(np.int64) - expected["blocks"].astype(np.int64))
    for batch, image in zip(*np.nonzero(difference.reshape(*difference.shape[:2], -1).max(-1) > BLOCK_TOLERANCE)):
        problems.append(f"batch {batch} image {image}: an 8x8 block sum moved by "
                        f"{int(difference[batch, image].max())} (tolerance {BLOCK_TOLERANCE})")
    mean_shift = difference.reshape(*difference.shape[:2], -1).mean(-1) / BLOCK ** 2
    for batch, image in zip(*np.nonzero(mean_shift > MEAN_TOLERANCE)):
        problems.append(f"batch {batch} image {image}: pixels moved by {mean_shift[batch, image]:.3f} levels on "
                        f"average (tolerance {MEAN_TOLERANCE})")
    return problems


def read_data_record(path: Path = DATA_RECORD) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    with np.load(path) as stored:
        arrays = {key: stored[key] for key in stored.files if key != "versions"}
        versions = json.loads(str(stored["versions"]))
    return arrays, versions


def write_data_record(arrays: dict[str, np.ndarray], path: Path = DATA_RECORD) -> None:
    np.savez_compressed(path, versions=np.asarray(json.dumps(package_versions(DATA_PACKAGES))), **arrays)


# ---------------------------------------------------------------------------------------------------- loop guard


def write_rectangles(root: Path, count: int = LOOP_IMAGES, size: int = LOOP_IMG_SIZE, seed: int = 0) -> Path:
    """COCO JSON + PNG images at exactly `size`: noisy grey backgrounds and 1-3 filled rectangles of three class
    colours, drawn with numpy integer operations only (lossless files, so every CPU reads the same pixels)."""
    from PIL import Image

    colours = ((220, 40, 40), (40, 190, 60), (50, 80, 230))
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(count):
        image = rng.integers(70, 186, (size, size, 3), dtype=np.uint8)
        for _ in range(int(rng.integers(1, 4))):
            w, h = (int(v) for v in rng.integers(size // 6, size // 2, 2))
            x, y = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
            cls = int(rng.integers(len(colours)))
            image[y:y + h, x:x + w] = colours[cls]
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1, "category_id": cls + 1,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
        Image.fromarray(image).save(root / "images" / f"{index:04d}.png")
        images.append({"id": index + 1, "file_name": f"{index:04d}.png", "width": size, "height": size})
    categories = [{"id": c + 1, "name": name} for c, name in enumerate(("red", "green", "blue"))]
    path = root / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def write_initial_weights(model: str, num_classes: int, path: Path, seed: int = 0) -> Path:
    """A state-dict file of `model` whose random tensors do not depend on the CPU: torch's own initialisation
    rounds differently on different kernels (192 of gelan-t's conv weights moved by a float32 ULP under the baseline
    profile), so every conv weight and conv bias is drawn with numpy from a generator keyed on its name, U(-b, b) with
    b = 1/sqrt(fan_in) as in torch's default; the detect heads' output biases keep the recipe's constants and
    BatchNorm its ones and zeros."""
    import zlib

    from pgi_detect.models import build_model

    detector = build_model(model, num_classes=num_classes)
    constant_biases = {id(branch[-1].bias) for module in detector.modules() if hasattr(module, "reset_biases")
                       for branch in (*module.box, *module.cls)}
    for name, module in detector.named_modules():
        if not isinstance(module, torch.nn.Conv2d):
            continue
        bound = 1.0 / float(np.sqrt(module.weight[0].numel()))
        for tensor_name in ("weight", "bias"):
            tensor = getattr(module, tensor_name)
            if tensor is None or id(tensor) in constant_biases:
                continue
            rng = np.random.default_rng((seed, zlib.crc32(f"{name}.{tensor_name}".encode())))
            values = (rng.random(tuple(tensor.shape)) * 2 - 1) * bound
            tensor.data.copy_(torch.from_numpy(values.astype(np.float32)))
    torch.save(detector.state_dict(), path)
    return path


def loop_arguments(model: str, data: Path, output: Path) -> list[str]:
    weights = write_initial_weights(model, 3, output.parent / f"{model}-initial.pt")
    return shipped_config_arguments(model, data / "annotations.json", data / "images", LOOP_IMG_SIZE, output) + [
        f"--model.weights={weights}",
        "--data.augmentation=" + json.dumps(NO_AUGMENTATION),
        f"--model.optim.lr0={0.01 * LR_SCALE}", f"--model.optim.warmup_bias_lr={0.1 * LR_SCALE}",
        f"--model.optim.nominal_batch_size={NOMINAL_BATCH}", "--model.optim.warmup_epochs=0.5",
        "--model.optim.min_warmup_iters=10",
        f"--trainer.max_steps={OPTIMIZER_STEPS}", "--trainer.limit_val_batches=0",
        "--trainer.accelerator=cpu", "--trainer.precision=64-true", "--trainer.deterministic=true",
    ]


def update_checksums(detector: torch.nn.Module, initial: dict[str, torch.Tensor]) -> dict[str, float]:
    """Of the update of every parameter (final - initial, float64; BatchNorm's running statistics, which follow the
    data, are left out): the sum of magnitudes, the sum of squares and a projection on fixed random weights in
    [-1, 1]."""
    delta = torch.cat([(value.detach().double() - initial[name].double()).flatten()
                       for name, value in sorted(detector.named_parameters())])
    generator = torch.Generator().manual_seed(CHECKSUM_SEED)
    projection = torch.rand(delta.numel(), generator=generator, dtype=torch.float64) * 2 - 1
    return {"abs_sum": float(delta.abs().sum()), "sum_sq": float(delta.square().sum()),
            "projection": float(delta @ projection)}


def checksum_error(got: dict[str, float], want: dict[str, float]) -> float:
    """Largest difference of two update_checksums, relative to the update's size (abs_sum; sum_sq to itself)."""
    scale = {"abs_sum": want["abs_sum"], "sum_sq": want["sum_sq"], "projection": want["abs_sum"]}
    return max(abs(got[key] - want[key]) / scale[key] for key in want)


class LoopRecorder(pl.Callback):
    """Per training batch: the loss items, whether an optimizer step followed, every group's lr and momentum, and
    whether the batch holds exactly the pixels of its PNG files; the raw weights after the last optimizer step."""

    def __init__(self) -> None:
        self.items: list[list[float]] = []
        self.step_batches: list[int] = []
        self.schedule: list[list[float]] = []
        self.initial: dict[str, torch.Tensor] | None = None
        self.raw: dict[str, float] | None = None
        self.batches_equal_files = True
        self._files: dict[str, torch.Tensor] = {}
        self._batches = 0

    def on_train_start(self, trainer, pl_module) -> None:
        self.initial = {name: value.detach().clone() for name, value in pl_module.detector.named_parameters()}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step_before = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        metrics = trainer.callback_metrics
        self.items.append([float(metrics[f"train/{name}_loss_step"]) for name in ("box", "cls", "dfl")])
        if trainer.global_step > self._step_before:
            self.step_batches.append(self._batches)
        self._batches += 1
        groups = pl_module.optimizers(use_pl_optimizer=False).param_groups
        self.schedule.append([value for group in groups for value in (group["lr"], group["momentum"])])
        self.batches_equal_files &= all(torch.equal(image.cpu(), self._pixels(path))
                                        for image, path in zip(batch["images"], batch["paths"]))
        if trainer.global_step == OPTIMIZER_STEPS:
            self.raw = update_checksums(pl_module.detector, self.initial)

    def _pixels(self, path: str) -> torch.Tensor:
        if path not in self._files:
            from PIL import Image

            self._files[path] = torch.from_numpy(np.asarray(Image.open(path).convert("RGB"))).permute(2, 0, 1)
        return self._files[path]


@dataclass
class LoopRun:
    accumulate: int
    step_batches: list[int]
    schedule: list[list[float]]
    items: list[list[float]]
    raw: dict[str, float]
    ema: dict[str, float]
    batches_equal_files: bool

    def record(self) -> dict:
        return {"accumulate": self.accumulate, "step_batches": self.step_batches, "schedule": self.schedule,
                "items": self.items, "raw": self.raw, "ema": self.ema}


def compare_loops(run: LoopRun, expected: dict) -> list[str]:
    """What differs beyond the tolerances above, one line per finding (empty: the loop is reproduced)."""
    if run.accumulate != expected["accumulate"] or run.step_batches != expected["step_batches"]:
        return [f"optimizer steps after batches {run.step_batches} (accumulate {run.accumulate}), recorded "
                f"{expected['step_batches']} (accumulate {expected['accumulate']})"]
    problems = []
    for batch, (got, want) in enumerate(zip(run.schedule, expected["schedule"], strict=True)):
        if max(abs(a - b) / max(abs(b), 1e-300) for a, b in zip(got, want)) > SCHEDULE_TOLERANCE:
            problems.append(f"batch {batch}: lr/momentum per group {got} != {want}")
    for batch, (got, want) in enumerate(zip(run.items, expected["items"], strict=True)):
        error = max(abs(a - b) / abs(b) for a, b in zip(got, want))
        if error > LOOP_RELATIVE_TOLERANCE:
            problems.append(f"batch {batch}: loss items {got} != {want} (relative {error:.2g})")
    for kind in ("raw", "ema"):
        error = checksum_error(getattr(run, kind), expected[kind])
        if error > LOOP_RELATIVE_TOLERANCE:
            problems.append(f"{kind} weight update differs by {error:.2g} of its size")
    return problems


def run_loop(model: str, data: Path, output: Path) -> LoopRun:
    """Train `model` for OPTIMIZER_STEPS steps through the CLI in float64 on `write_rectangles` data."""
    from pgi_detect.cli.main import build_cli

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cli = build_cli(loop_arguments(model, data, output), run=False)
        recorder = LoopRecorder()
        cli.trainer.callbacks.append(recorder)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    finally:
        torch.set_num_threads(threads)
    assert cli.trainer.global_step == OPTIMIZER_STEPS and recorder.raw is not None
    # The EMA callback copies the average into the detector when training ends.
    ema = update_checksums(cli.model.detector, recorder.initial)
    return LoopRun(cli.model.loop.accumulation.final, recorder.step_batches, recorder.schedule, recorder.items,
                   recorder.raw, ema, recorder.batches_equal_files)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    parser.add_argument("--write", action="store_true",
                        help=f"write {DATA_RECORD.relative_to(REPO)} and {LOOP_RECORD.relative_to(REPO)}")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        batches = batches_record(draw_recipe_batches(args.shared / "data" / "coco128", scratch / "data-run"))
        print(f"data guard: {len(batches['blocks'])} batches, pipelines {sorted(set(batches['pipelines'].flat))}")
        data = write_rectangles(scratch / "rectangles").parent
        loops: dict = {"versions": package_versions(LOOP_PACKAGES), "lr_scale": LR_SCALE}
        for model in MODELS:
            run = run_loop(model, data, scratch / f"{model}-run")
            assert run.batches_equal_files, "the loop guard's batches must be the PNG pixels"
            loops[model] = run.record()
            print(model, "first items", run.items[0], "ema", run.ema)
    if args.write:
        LOOP_RECORD.parent.mkdir(parents=True, exist_ok=True)
        write_data_record(batches)
        LOOP_RECORD.write_text(json.dumps(loops, indent=1) + "\n")
        print(f"wrote {DATA_RECORD} and {LOOP_RECORD}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "tests"))
    sys.exit(main())
