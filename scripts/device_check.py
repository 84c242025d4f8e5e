"""GPU device check: the figures docs/benchmarks.md lacks, in one run of a few minutes on a CUDA machine.

What it measures (gelan-c and yolov9-c at 640 px unless `--models` / `--img-size` say otherwise):

1. training: images/s and peak memory (`torch.cuda.max_memory_allocated`) of the package's real training step
   (`DetectionTask` under a short `lightning.pytorch.Trainer` fit with the recipe's ModelEMA, on a synthetic batch
   already on the device) at precision 32-true, 16-mixed and bf16-mixed, batch 16 and the largest batch that fits
   (doubling from 16 until CUDA runs out of memory), cuDNN's autotuner off as in the shipped configs, plus one
   16-mixed run with it on;
2. data loader: images/s of `DetectionDataModule`'s training loader with N workers (`--workers`) and the shipped
   recipe's augmentation (mosaic, copy-paste, mixup) on a generated dataset, against each model's training images/s,
   and which of the two bounds training;
3. DDP over every local GPU (more than one only): training images/s with `strategy="ddp"` (+ SyncBatchNorm, as
   experiments/base/ddp.yaml), in a subprocess running this script's `--ddp-worker` mode;
4. inference: latency at batch 1 and throughput at batch 32 of the model as trained (eager), stripped + fused,
   fused + channels_last, fused fp16 (CUDA), torch.compile, and ONNX Runtime with the CUDA / TensorRT execution
   providers when importable (the package's `export_onnx`);
5. validation: `Trainer.validate` with the DetectionTask and datamodule (what `pgi-detect validate` runs: rect
   batches, 16-mixed, COCO scoring with faster-coco-eval) on a COCO-val-sized synthetic set (5000 images). The
   untrained detector's class biases are raised so that every candidate passes conf 0.001 and NMS keeps its
   300-box cap per image (a trained model's worst case); untrained scores would leave NMS and COCO scoring idle.

Every section records `{"error": ...}` when it fails and the run goes on; `--budget-s` (default 450) is shared out so
that a slow section leaves time for the later ones, which skip with a reason when time is short. Results go to
`--output DIR`: device_check.json (every figure, the machine, the command line; rewritten after each section) and
device_check.md (tables to paste into docs/benchmarks.md).

On the GPU machine (one H200; the default `--budget-s 450` keeps the whole run under 8 minutes with start-up):

    OMP_NUM_THREADS=8 .venv/bin/python scripts/device_check.py --output device_check_out

`--device cpu --quick` runs the same code paths tiny (gelan-t and yolov9-t at 64 px, batch 2, 1-2 timed steps, a
handful of images, ONNX Runtime on the CPU provider) in well under two minutes on one core; the test suite runs it
(tests/e2e/test_device_check.py), so the GPU code paths cannot rot unnoticed between GPU runs.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import gc
import importlib.util
import json
import logging
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
JSON_NAME = "device_check.json"
MD_NAME = "device_check.md"
NUM_CLASSES = 80
BOXES_PER_IMAGE = 7  # COCO train2017 averages 7.3 objects per image
RECIPE_PRECISION = "16-mixed"  # experiments/base/coco.yaml
PRECISIONS = ("32-true", "16-mixed", "bf16-mixed")
SECTIONS = ("training", "data_loader", "ddp", "inference", "validation")
# Class-logit bias that puts every class score of an untrained detector (whose logits barely vary) near 0.01, above
# NMS_EVAL's conf 0.001: NMS then meets its 30000-candidate and 300-box caps, as with a trained model at conf 0.001.
DENSE_CLASS_BIAS = math.log(0.01 / 0.99)


def load_script(name: str) -> ModuleType:
    """scripts/<name>.py as a module (scripts are not a package)."""
    module_name = f"scripts_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


bench_train_step = load_script("bench_train_step")  # random_batch, synchronize
bench_inference = load_script("bench_inference")  # measure


# ------------------------------------------------------------------------------------------------ plan and budget


@dataclass
class Plan:
    """Every size and count of a run, from the command line (`make_plan`); quick mode shrinks them all."""

    device: str
    quick: bool
    models: list[str]
    img_size: int
    workers: int
    budget_s: float
    precisions: list[str]
    base_batch: int = 16
    warmup: int = 3
    timed: int = 8
    search_warmup: int = 1  # the first step of a fit pays the allocator's and the kernels' start-up
    search_timed: int = 3
    search_largest: bool = True
    max_batch: int = 1024
    pool_images: int = 256  # unique generated images; the splits below link them repeatedly
    train_entries: int = 2048
    loader_batches: int = 60
    loader_min_s: float = 4.0
    val_entries: int = 5000
    val_precision: str = RECIPE_PRECISION
    latency_runs: int = 50
    throughput_batch: int = 32
    throughput_runs: int = 10
    inference_warmup: int = 5
    compile_backend: str = "inductor"
    onnx_providers: list[str] = field(default_factory=lambda: ["CUDAExecutionProvider", "TensorrtExecutionProvider"])
    # Seconds kept for each later section while an earlier one runs, and the least a section needs to start.
    reserve_s: dict[str, float] = field(default_factory=lambda: {
        "training": 0.0, "data_loader": 25.0, "ddp": 60.0, "inference": 150.0, "validation": 70.0})
    min_section_s: float = 15.0
    compile_estimate_s: float = 75.0
    validation_estimate_s: float = 45.0  # the first model's; later ones use the first's time
    tensorrt_estimate_s: float = 150.0

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"


def make_plan(args: argparse.Namespace) -> Plan:
    cuda = args.device == "cuda"
    quick = args.quick
    models = args.models or (["gelan-t", "yolov9-t"] if quick else ["gelan-c", "yolov9-c"])
    img_size = args.img_size or (64 if quick else 640)
    workers = args.workers if args.workers is not None else min(8, os.cpu_count() or 1)
    precisions = list(PRECISIONS)
    plan = Plan(args.device, quick, models, img_size, workers, args.budget_s, precisions)
    if not cuda:
        plan.onnx_providers = ["CPUExecutionProvider"]
        plan.search_largest = False
        plan.val_precision = "32-true"
        plan.compile_backend = "eager"  # dynamo's capture and guards without inductor's C++ build (minutes on CPU)
        plan.reserve_s = {"training": 0.0, "data_loader": 5.0, "ddp": 15.0, "inference": 15.0, "validation": 10.0}
        plan.min_section_s = 2.0
        plan.validation_estimate_s = 2.0
    elif torch.cuda.device_count() < 2:
        plan.reserve_s["ddp"] = 0.0
    if quick:
        plan.base_batch = 2
        plan.warmup, plan.timed = 1, 2
        plan.search_largest = False
        plan.pool_images, plan.train_entries, plan.val_entries = 6, 16, 8
        plan.loader_batches, plan.loader_min_s = 6, 0.0
        plan.latency_runs, plan.throughput_runs, plan.inference_warmup = 3, 2, 1
        plan.throughput_batch = 2
    return plan


class Budget:
    """The run's time budget, shared out so each section leaves the later ones their reserve."""

    def __init__(self, total_s: float, reserve_s: dict[str, float], min_section_s: float) -> None:
        self.start = time.monotonic()
        self.total_s = total_s
        self.reserve_s = reserve_s
        self.min_section_s = min_section_s

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def deadline(self, section: str) -> float:
        """Seconds since start by which `section` must end: the total less the reserves of the sections after it."""
        later = SECTIONS[SECTIONS.index(section) + 1:]
        return self.total_s - sum(self.reserve_s.get(name, 0.0) for name in later)

    def left(self, section: str) -> float:
        return self.deadline(section) - self.elapsed()

    def skip_reason(self, section: str) -> str | None:
        left = self.left(section)
        if left < self.min_section_s:
            return (f"budget: {max(left, 0.0):.0f} s left for this section at {self.elapsed():.0f} s of "
                    f"--budget-s {self.total_s:.0f} (needs {self.min_section_s:.0f} s)")
        return None


def same_network_as(name: str, models: list[str]) -> str | None:
    """The earlier model of `models` whose deployable (stripped) network is `name`'s: yolov9-c evaluates and exports
    as gelan-c, so its compiled, ONNX and validation figures would repeat gelan-c's."""
    from pgi_detect.models import inference_name

    for other in models[:models.index(name)]:
        if inference_name(other) == inference_name(name):
            return (f"the deployable network of {name} (auxiliary branch stripped) is {other}'s: see {other}")
    return None


def log(message: str) -> None:
    print(f"[device_check {time.strftime('%H:%M:%S')}] {message}", flush=True)


def error_record(error: BaseException) -> dict[str, str]:
    return {"error": f"{type(error).__name__}: {error}".strip()[:2000],
            "traceback": "".join(traceback.format_exception(error))[-4000:]}


def is_oom(error: BaseException) -> bool:
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("out of memory" in text or "CUBLAS_STATUS_ALLOC_FAILED" in text
                                                 or "CUDNN_STATUS_ALLOC_FAILED" in text)


def free_device_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def sync_of(device: torch.device) -> Callable[[], None]:
    return bench_train_step.synchronize(device)


def quiet_lightning() -> None:
    """Lightning's start-up banners and tips, and our own rank-zero info lines, would bury the progress lines."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")


# ------------------------------------------------------------------------------------------------ machine


def python_name() -> str:
    """The interpreter as the command was typed from the repository root (`.venv/bin/python`), else its name."""
    executable = Path(sys.executable)
    with contextlib.suppress(ValueError):
        return str(executable.relative_to(REPO))
    return executable.name


def machine_info(plan: Plan, argv: list[str]) -> dict[str, Any]:
    import lightning

    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([python_name(), *argv]),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "cuda_build": torch.version.cuda,
        "device": plan.device,
        "quick": plan.quick,
    }
    with contextlib.suppress(ImportError):
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
        info["onnxruntime_providers"] = onnxruntime.get_available_providers()
    with contextlib.suppress(Exception):
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                timeout=10)
        if commit.returncode == 0:
            info["git_commit"] = commit.stdout.strip()
    if plan.cuda and torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        info.update({
            "gpu": torch.cuda.get_device_name(0),
            "gpu_count": torch.cuda.device_count(),
            "gpu_memory_gib": round(properties.total_memory / 2**30, 1),
            "gpu_capability": f"{properties.major}.{properties.minor}",
            "cudnn": torch.backends.cudnn.version(),
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "tf32_cudnn": torch.backends.cudnn.allow_tf32,
            "bf16_supported": torch.cuda.is_bf16_supported(),
        })
        with contextlib.suppress(Exception):
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            if smi.returncode == 0:
                info["driver"] = smi.stdout.strip().splitlines()[0]
    return info


# ------------------------------------------------------------------------------------------------ synthetic data


def training_batch(batch: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images and `[image, class, cx, cy, w, h]` targets: bench_train_step's random batch of up to 16 images,
    tiled to `batch` (drawing hundreds of 640 px images takes seconds; their content does not change the speed)."""
    base = min(batch, 16)
    images, targets = bench_train_step.random_batch(base, size, BOXES_PER_IMAGE, NUM_CLASSES, seed)
    copies = math.ceil(batch / base)
    images = images.repeat(copies, 1, 1, 1)[:batch]
    tiled = []
    for k in range(copies):
        shifted = targets.clone()
        shifted[:, 0] += k * base
        tiled.append(shifted)
    targets = torch.cat(tiled)
    return images.contiguous(), targets[targets[:, 0] < batch]


class Workspace:
    """A temporary folder with the generated datasets, made once on first use and removed at the end."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.root = Path(tempfile.mkdtemp(prefix="device_check_"))
        os.environ.setdefault("PGI_DETECT_CACHE_DIR", str(self.root / "index_cache"))  # no litter in ~/.cache
        self._pool: dict[str, Any] | None = None
        self._splits: dict[str, tuple[Path, Path]] = {}

    def pool(self) -> dict[str, Any]:
        """`pool_images` synthetic shape images at the run's size (make_synthetic_coco), as a COCO dict."""
        if self._pool is None:
            from pgi_detect.data import make_synthetic_coco

            start = time.perf_counter()
            split = make_synthetic_coco(self.root / "pool", num_train=self.plan.pool_images, num_val=0,
                                        img_size=self.plan.img_size, seed=0)["train"]
            coco = json.loads(split.annotation_file.read_text())
            coco["images_dir"] = str(split.images_dir)
            self._pool = coco
            log(f"generated {self.plan.pool_images} images at {self.plan.img_size} px in "
                f"{time.perf_counter() - start:.1f} s")
        return self._pool

    def split(self, name: str, entries: int) -> tuple[Path, Path]:
        """(annotation json, image folder) of `entries` images linking the pool's files in turn, with the classes
        spread over 80 COCO-like categories so the detectors keep their 80-class heads."""
        if name in self._splits:
            return self._splits[name]
        pool = self.pool()
        rng = np.random.default_rng(1)
        images_dir = self.root / name / "images"
        images_dir.mkdir(parents=True)
        by_image: dict[int, list[dict]] = {}
        for annotation in pool["annotations"]:
            by_image.setdefault(annotation["image_id"], []).append(annotation)
        images, annotations = [], []
        for index in range(entries):
            source = pool["images"][index % len(pool["images"])]
            file_name = f"{index:06d}.jpg"
            link(Path(pool["images_dir"]) / source["file_name"], images_dir / file_name)
            image_id = index + 1
            images.append({**source, "id": image_id, "file_name": file_name})
            for annotation in by_image.get(source["id"], []):
                annotations.append({**annotation, "id": len(annotations) + 1, "image_id": image_id,
                                    "category_id": int(rng.integers(1, NUM_CLASSES + 1))})
        categories = [{"id": c, "name": f"class{c}", "supercategory": "synthetic"}
                      for c in range(1, NUM_CLASSES + 1)]
        path = self.root / name / "annotations.json"
        path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
        self._splits[name] = (path, images_dir)
        return path, images_dir

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def link(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


# ------------------------------------------------------------------------------------------------ 1. training


class StepTimer(pl.Callback):
    """Marks the end of every training batch (after a device synchronisation) and the start of the first."""

    def __init__(self) -> None:
        self.start: float | None = None
        self.marks: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.start is None:
            sync_of(pl_module.device)()
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        sync_of(pl_module.device)()
        self.marks.append(time.perf_counter())


class Repeat(Dataset):
    def __init__(self, item: dict[str, torch.Tensor], count: int) -> None:
        self.item, self.count = item, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.item


class FixedBatches(pl.LightningDataModule):
    """A training loader that yields the same batch `steps` times, already on the device (made in `setup`, on each
    rank's own device under DDP): the model's throughput without the input pipeline."""

    def __init__(self, batch: int, size: int, steps: int, seed: int = 0) -> None:
        super().__init__()
        self.batch_size, self.size, self.steps, self.seed = batch, size, steps, seed
        self.item: dict[str, torch.Tensor] | None = None

    def setup(self, stage: str) -> None:
        device = self.trainer.strategy.root_device
        images, targets = training_batch(self.batch_size, self.size, self.seed)
        self.item = {"images": images.to(device), "targets": targets.to(device)}

    def train_dataloader(self) -> DataLoader:
        return DataLoader(Repeat(self.item, self.steps), batch_size=None, shuffle=False)


def fit_throughput(name: str, precision: str, batch: int, plan: Plan, workdir: Path, warmup: int, timed: int,
                   strategy: str = "auto", devices: int = 1, benchmark: bool = False) -> dict[str, Any]:
    """Training images/s of `DetectionTask` (recipe optimizer, accumulation, clipping, ModelEMA) at `batch` per
    device, over `timed` steps after `warmup`; peak memory of the whole fit on CUDA. `benchmark`: cuDNN's autotuner,
    off as under the shipped configs (they leave `trainer.benchmark` unset)."""
    from pgi_detect.training import DetectionTask, ModelEMA

    torch.manual_seed(0)
    task = DetectionTask(model=name, num_classes=NUM_CLASSES, batch_size=batch)
    timer = StepTimer()
    trainer = pl.Trainer(
        accelerator="gpu" if plan.cuda else "cpu", devices=devices, strategy=strategy, precision=precision,
        max_epochs=1, limit_train_batches=warmup + timed, limit_val_batches=0, num_sanity_val_steps=0,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        benchmark=benchmark, callbacks=[ModelEMA(), timer], default_root_dir=workdir,
        use_distributed_sampler=False, sync_batchnorm=plan.cuda and strategy == "ddp",
    )
    if plan.cuda:
        free_device_memory()
    start = time.perf_counter()
    trainer.fit(task, datamodule=FixedBatches(batch, plan.img_size, warmup + timed))
    fit_s = time.perf_counter() - start
    marks = timer.marks
    if len(marks) != warmup + timed:
        raise RuntimeError(f"the fit ran {len(marks)} batches, expected {warmup + timed}")
    steps = [b - a for a, b in zip(marks[warmup - 1:], marks[warmup:])]
    world = trainer.world_size
    result = {
        "batch": batch,
        "img_s": world * batch * timed / (marks[-1] - marks[warmup - 1]),
        "step_ms": statistics.median(steps) * 1000,
        "first_step_s": marks[0] - timer.start,
        "fit_s": fit_s,
        "timed_steps": timed,
        "peak_mib": torch.cuda.max_memory_allocated() / 2**20 if plan.cuda else None,
        "world_size": world,
        "cudnn_benchmark": benchmark,
    }
    del trainer, task
    free_device_memory()
    return result


def precision_skip(precision: str, plan: Plan) -> str | None:
    if not plan.cuda and precision == "16-mixed":
        return "16-mixed (float16 autocast + GradScaler) is the CUDA recipe; on CPU only bf16-mixed is measured"
    if plan.cuda and precision == "bf16-mixed" and not torch.cuda.is_bf16_supported():
        return "this GPU does not support bfloat16"
    return None


def training_section(plan: Plan, budget: Budget, workdir: Path, results: dict, save: Callable[[], None]) -> dict:
    section: dict[str, Any] = {}
    results["training"] = section
    # Batch `base_batch` for every model and precision first; then the largest-batch searches, while time lasts.
    for name in plan.models:
        section[name] = {}
        for precision in plan.precisions:
            entry: dict[str, Any] = {}
            section[name][precision] = entry
            reason = precision_skip(precision, plan)
            if reason is None and budget.left("training") < 0:
                reason = f"budget: the training share ended at {budget.deadline('training'):.0f} s"
            if reason is not None:
                entry["skipped"] = reason
                continue
            try:
                entry["base"] = fit_throughput(name, precision, plan.base_batch, plan, workdir, plan.warmup,
                                               plan.timed)
                log(f"training {name} {precision} batch {plan.base_batch}: {entry['base']['img_s']:.1f} img/s, "
                    f"peak {format_mib(entry['base']['peak_mib'])}")
            except Exception as error:  # noqa: BLE001 - one configuration failing must not stop the others
                entry["base"] = error_record(error)
                log(f"training {name} {precision}: {entry['base']['error']}")
            free_device_memory()  # after the except block: the traceback held the failed fit's tensors
            save()
        if plan.cuda and budget.left("training") > 0:
            # The shipped configs leave cuDNN's autotuner off; one run says what turning it on would give.
            key = f"{RECIPE_PRECISION}+cudnn.benchmark"
            try:
                section[name][key] = {"base": fit_throughput(name, RECIPE_PRECISION, plan.base_batch, plan, workdir,
                                                             plan.warmup, plan.timed, benchmark=True)}
                log(f"training {name} {key} batch {plan.base_batch}: {section[name][key]['base']['img_s']:.1f} img/s")
            except Exception as error:  # noqa: BLE001
                section[name][key] = {"base": error_record(error)}
            free_device_memory()
            save()
    search_order = [RECIPE_PRECISION] + [p for p in plan.precisions if p != RECIPE_PRECISION]
    for precision in (p for p in search_order if p in plan.precisions):
        for name in plan.models:  # the recipe's precision first: the figure a budget cut must not lose
            entry = section[name][precision]
            if "base" not in entry or "img_s" not in entry["base"]:
                continue
            if not plan.search_largest:
                entry["largest"] = {"skipped": "quick mode / CPU: no largest-batch search"}
                continue
            entry["largest"] = largest_batch(name, precision, plan, budget, workdir, entry["base"])
            save()
    return section


def largest_batch(name: str, precision: str, plan: Plan, budget: Budget, workdir: Path,
                  base: dict[str, Any]) -> dict[str, Any]:
    """Double the batch from the base run's until CUDA runs out of memory; the last batch that fitted, its figures,
    and what stopped the search (oom, budget, cap)."""
    fitted, tried = base, []
    batch = base["batch"] * 2
    last_fit_s = base["fit_s"]
    stop = "cap"
    while batch <= plan.max_batch:
        if budget.left("training") < 2.5 * last_fit_s:
            stop = f"budget (next: batch {batch})"
            break
        try:
            result = fit_throughput(name, precision, batch, plan, workdir, plan.search_warmup, plan.search_timed)
        except Exception as error:  # noqa: BLE001
            if not is_oom(error):
                tried.append({"batch": batch, **error_record(error)})
                stop = f"error at batch {batch}"
                break
            message = str(error).splitlines()[0][:200]
            del error
            free_device_memory()
            tried.append({"batch": batch, "oom": message})
            stop = f"oom at batch {batch}"
            log(f"training {name} {precision} batch {batch}: out of memory")
            break
        tried.append(result)
        fitted, last_fit_s = result, result["fit_s"]
        log(f"training {name} {precision} batch {batch}: {result['img_s']:.1f} img/s, "
            f"peak {format_mib(result['peak_mib'])}")
        batch *= 2
    return {**fitted, "stopped_by": stop, "tried": tried}


# ------------------------------------------------------------------------------------------------ 2. data loader


def model_training_rate(results: dict, name: str) -> tuple[str, dict] | None:
    """(precision, base run) of a model's training figure to set against the loader: the recipe's 16-mixed when
    measured, else the first precision measured."""
    runs = results.get("training", {}).get(name, {})
    order = [RECIPE_PRECISION] + [p for p in runs if p != RECIPE_PRECISION]
    for precision in order:
        base = runs.get(precision, {}).get("base", {})
        if isinstance(base.get("img_s"), (int, float)):
            return precision, base
    return None


def bound_line(name: str, loader_img_s: float, workers: int, precision: str, base: dict) -> str:
    model_img_s = base["img_s"]
    with_workers = f"{workers} worker{'' if workers == 1 else 's'}"
    where = f"{name} trains at {model_img_s:.1f} img/s ({precision}, batch {base['batch']})"
    if loader_img_s < model_img_s:
        needed = math.ceil(workers * model_img_s / loader_img_s) if workers else None
        more = f"; about {needed} workers would keep up" if needed else ""
        return f"{name}: the data loader bounds training: {loader_img_s:.1f} img/s with {with_workers}, {where}{more}"
    return (f"{name}: the model bounds training: {where}, the loader gives {loader_img_s:.1f} img/s with "
            f"{with_workers} ({loader_img_s / model_img_s:.1f}x)")


def data_loader_section(plan: Plan, budget: Budget, workspace: Workspace, results: dict) -> dict:
    from pgi_detect.data import DetectionDataModule

    annotations, images = workspace.split("train", plan.train_entries)
    datamodule = DetectionDataModule(train=str(annotations), train_images=str(images), img_size=plan.img_size,
                                     batch_size=plan.base_batch, num_workers=plan.workers, persistent_workers=True,
                                     pin_memory=plan.cuda, seed=0)  # augmentation: the recipe's defaults
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    workers = loader.num_workers  # the datamodule may cut the request to the CPUs it may use
    start = time.perf_counter()
    iterator = iter(loader)
    next(iterator)
    first_batch_s = time.perf_counter() - start
    for _ in range(min(workers, len(loader) // 4)):  # every worker's first batch includes its start
        next(iterator)
    deadline = time.perf_counter() + max(budget.left("data_loader") - 5.0, 1.0)
    count, start = 0, time.perf_counter()
    for _ in iterator:
        count += 1
        elapsed = time.perf_counter() - start
        if (count >= plan.loader_batches and elapsed >= plan.loader_min_s) or time.perf_counter() > deadline:
            break
    elapsed = time.perf_counter() - start
    with contextlib.suppress(Exception):
        iterator._shutdown_workers()
    del iterator, loader
    if count == 0:
        raise RuntimeError(f"the loader ran out after its warm-up batches ({plan.train_entries} images)")
    img_s = count * plan.base_batch / elapsed
    augmentation = datamodule.augmentation
    section: dict[str, Any] = {
        "workers": workers, "workers_requested": plan.workers, "batch": plan.base_batch, "img_size": plan.img_size, "img_s": img_s,
        "timed_batches": count, "timed_s": elapsed, "first_batch_s": first_batch_s,
        "dataset_images": plan.train_entries, "unique_images": plan.pool_images,
        "augmentation": {"mosaic": augmentation.mosaic, "mixup": augmentation.mixup,
                         "copy_paste": augmentation.copy_paste},
        "bound": {},
    }
    log(f"data loader, {workers} workers, batch {plan.base_batch}: {img_s:.1f} img/s")
    for name in plan.models:
        rate = model_training_rate(results, name)
        if rate is None:
            section["bound"][name] = f"{name}: no training figure to compare with (see the training section)"
        else:
            section["bound"][name] = bound_line(name, img_s, workers, *rate)
        log(section["bound"][name])
    return section


# ------------------------------------------------------------------------------------------------ 3. DDP


def ddp_section(plan: Plan, budget: Budget, workdir: Path, results: dict) -> dict:
    gpus = torch.cuda.device_count() if plan.cuda else 0
    if not plan.cuda:
        # The worker still runs, as one CPU process with strategy ddp (gloo), so its code path is exercised.
        section = {"skipped": "CPU run: DDP is measured over the GPUs of a CUDA machine"}
        try:
            section["smoke_one_process"] = run_ddp_worker(plan.models[0], plan, workdir,
                                                          timeout=max(budget.left("ddp"), 30.0), devices=1)
            log(f"DDP worker smoke run, one CPU process: {section['smoke_one_process']['img_s']:.1f} img/s")
        except Exception as error:  # noqa: BLE001
            section["smoke_one_process"] = error_record(error)
            log(f"DDP worker smoke run: {section['smoke_one_process']['error'][:500]}")
        return section
    if gpus < 2:
        return {"skipped": f"{gpus} GPU"}
    section: dict[str, Any] = {"gpus": gpus, "precision": RECIPE_PRECISION, "batch_per_gpu": plan.base_batch}
    for name in plan.models:
        left = budget.left("ddp")
        if left < plan.min_section_s:
            section[name] = {"skipped": f"budget: {max(left, 0):.0f} s left"}
            continue
        try:
            section[name] = run_ddp_worker(name, plan, workdir, timeout=left)
            single = results.get("training", {}).get(name, {}).get(RECIPE_PRECISION, {}).get("base", {})
            if isinstance(single.get("img_s"), (int, float)):
                section[name]["scaling"] = section[name]["img_s"] / single["img_s"]
            log(f"DDP {name} over {gpus} GPUs: {section[name]['img_s']:.1f} img/s")
        except Exception as error:  # noqa: BLE001
            section[name] = error_record(error)
            log(f"DDP {name}: {section[name]['error']}")
    return section


def run_ddp_worker(name: str, plan: Plan, workdir: Path, timeout: float, devices: int | None = None) -> dict:
    """This script's `--ddp-worker` mode in a subprocess (Lightning's DDP launcher re-runs the command line for the
    other ranks, so it must not be the main check's); rank 0 writes the result file."""
    out = workdir / f"ddp_{name}.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--ddp-worker", str(out), "--device", plan.device,
               "--models", name, "--img-size", str(plan.img_size)]
    if plan.quick:
        command.append("--quick")
    if devices is not None:
        command += ["--ddp-devices", str(devices)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # A session of its own: on a timeout the whole group goes, the ranks Lightning started included.
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        raise RuntimeError(f"ddp worker timed out after {timeout:.0f} s: {output[-3000:]}") from None
    if process.returncode != 0 or not out.exists():
        raise RuntimeError(f"ddp worker exit {process.returncode}: {output[-3000:]}")
    return json.loads(out.read_text())


def ddp_worker(args: argparse.Namespace) -> int:
    quiet_lightning()
    plan = make_plan(args)
    devices = args.ddp_devices or (torch.cuda.device_count() if plan.cuda else 1)
    precision = RECIPE_PRECISION if plan.cuda else "32-true"
    workdir = Path(args.ddp_worker).parent
    result = fit_throughput(plan.models[0], precision, plan.base_batch, plan, workdir, plan.warmup, plan.timed,
                            strategy="ddp", devices=devices)
    if int(os.environ.get("LOCAL_RANK", "0")) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0:
        result["precision"] = precision
        Path(args.ddp_worker).write_text(json.dumps(result))
    return 0


# ------------------------------------------------------------------------------------------------ 4. inference


def timed_forward(run: Callable[[], Any], runs: int, warmup: int, device: torch.device) -> list[float]:
    with torch.inference_mode():
        return bench_inference.measure(run, runs, warmup, sync_of(device))


def latency_and_throughput(predict: Callable[[torch.Tensor], Any], make_input: Callable[[int], torch.Tensor],
                           plan: Plan, device: torch.device) -> dict[str, Any]:
    one, many = make_input(1), make_input(plan.throughput_batch)
    latency = timed_forward(lambda: predict(one), plan.latency_runs, plan.inference_warmup, device)
    throughput = timed_forward(lambda: predict(many), plan.throughput_runs, plan.inference_warmup, device)
    return {"latency_ms": statistics.median(latency) * 1000, "latency_min_ms": min(latency) * 1000,
            "throughput_img_s": plan.throughput_batch / statistics.median(throughput),
            "throughput_batch": plan.throughput_batch}


def inputs_for(plan: Plan, device: torch.device, dtype: torch.dtype = torch.float32,
               memory_format: torch.memory_format = torch.contiguous_format) -> Callable[[int], torch.Tensor]:
    def make(batch: int) -> torch.Tensor:
        images = torch.rand(batch, 3, plan.img_size, plan.img_size, generator=torch.Generator().manual_seed(0))
        return images.to(device, dtype).contiguous(memory_format=memory_format)

    return make


def inference_section(plan: Plan, budget: Budget, workdir: Path, results: dict, save: Callable[[], None]) -> dict:
    device = torch.device(plan.device)
    torch.backends.cudnn.benchmark = plan.cuda  # fixed shapes, as a deployment would run them
    section: dict[str, Any] = {"img_size": plan.img_size, "cudnn_benchmark": plan.cuda}
    results["inference"] = section
    for index, name in enumerate(plan.models):
        left = budget.left("inference")
        if left < plan.min_section_s:
            section[name] = {"skipped": f"budget: {max(left, 0):.0f} s left"}
            continue
        section[name] = {}
        try:
            model_inference(name, index, plan, budget, workdir, device, section[name], save)
        except Exception as error:  # noqa: BLE001 - e.g. the model does not build; the next one may
            section[name].update(error_record(error))
            log(f"inference {name}: {section[name]['error']}")
        free_device_memory()
        save()
    return section


def model_inference(name: str, index: int, plan: Plan, budget: Budget, workdir: Path, device: torch.device,
                    forms: dict[str, Any], save: Callable[[], None]) -> None:
    """Fill `forms` with the figures of one model: the torch forms, onnxruntime, then torch.compile."""
    from pgi_detect.models import build_model, inference_copy

    torch.manual_seed(0)
    trained = build_model(name, num_classes=NUM_CLASSES).to(device).eval()
    fused = inference_copy(trained)
    channels_last = copy.deepcopy(fused).to(memory_format=torch.channels_last)
    torch_forms: list[tuple[str, Callable, Callable[[int], torch.Tensor]]] = [
        ("eager", trained.predict_raw, inputs_for(plan, device)),
        ("fused", fused.predict_raw, inputs_for(plan, device)),
        ("channels_last", channels_last.predict_raw, inputs_for(plan, device, memory_format=torch.channels_last)),
    ]
    if plan.cuda:
        half = copy.deepcopy(channels_last).half()
        torch_forms.append(("fp16_channels_last", half.predict_raw,
                            inputs_for(plan, device, torch.float16, torch.channels_last)))
    for form, predict, make_input in torch_forms:
        try:
            forms[form] = latency_and_throughput(predict, make_input, plan, device)
            log(f"inference {name} {form}: {forms[form]['latency_ms']:.2f} ms at batch 1, "
                f"{forms[form]['throughput_img_s']:.1f} img/s at batch {plan.throughput_batch}")
        except Exception as error:  # noqa: BLE001
            forms[form] = error_record(error)
            log(f"inference {name} {form}: {forms[form]['error']}")
    same = same_network_as(name, plan.models)
    forms["onnxruntime"] = {"skipped": same} if same else onnx_forms(name, fused, plan, budget, workdir)
    save()
    forms["compile"] = compiled_form(fused, plan, budget, device, index)  # last: the slowest, budget-guarded


def compiled_form(fused: torch.nn.Module, plan: Plan, budget: Budget, device: torch.device,
                  index: int) -> dict[str, Any]:
    """torch.compile of the fused model's `predict_raw` (one compilation per batch size, `dynamic=False`)."""
    same = same_network_as(plan.models[index], plan.models)
    if same:
        return {"skipped": same}
    if budget.left("inference") < plan.compile_estimate_s:
        return {"skipped": f"budget: {max(budget.left('inference'), 0):.0f} s left, compiling takes about "
                           f"{plan.compile_estimate_s:.0f} s"}
    try:
        import torch._dynamo

        torch._dynamo.reset()
        model = copy.deepcopy(fused).to(memory_format=torch.channels_last)
        compiled = torch.compile(model.predict_raw, backend=plan.compile_backend, dynamic=False)
        make_input = inputs_for(plan, device, memory_format=torch.channels_last)
        compile_s = {}
        for batch in (1, plan.throughput_batch):
            images = make_input(batch)
            start = time.perf_counter()
            with torch.inference_mode():
                compiled(images)
            sync_of(device)()
            compile_s[str(batch)] = time.perf_counter() - start
        result = latency_and_throughput(compiled, make_input, plan, device)
        result.update(backend=plan.compile_backend, memory_format="channels_last", compile_s=compile_s)
        if plan.compile_backend != "inductor":
            result["note"] = (f"backend={plan.compile_backend}: dynamo capture and guards only, no generated "
                              "kernels (inductor's C++ build takes minutes on one CPU core)")
        log(f"inference {plan.models[index]} compile ({plan.compile_backend}): {result['latency_ms']:.2f} ms at "
            f"batch 1, {result['throughput_img_s']:.1f} img/s, compiled in {sum(compile_s.values()):.1f} s")
        return result
    except Exception as error:  # noqa: BLE001 - a compiler failure is a finding, not a reason to stop
        record = error_record(error)
        log(f"inference {plan.models[index]} compile: {record['error'][:300]}")
        return record


def onnx_forms(name: str, fused: torch.nn.Module, plan: Plan, budget: Budget, workdir: Path) -> dict[str, Any]:
    try:
        import onnxruntime
    except ImportError as error:
        return {"skipped": f"onnxruntime not importable ({error})"}
    from pgi_detect.inference.export import export_onnx

    available = onnxruntime.get_available_providers()
    runs: dict[str, Any] = {}
    missing = [p for p in plan.onnx_providers if p not in available]
    for provider in missing:
        runs[provider] = {"skipped": f"onnxruntime {onnxruntime.__version__} lacks {provider} (has "
                                     f"{', '.join(available)}; the GPU providers come with onnxruntime-gpu)"}
    wanted = [p for p in plan.onnx_providers if p in available]
    if not wanted:
        return runs
    try:
        start = time.perf_counter()
        model = copy.deepcopy(fused).float().cpu()
        path = export_onnx(model, workdir / f"{name}.onnx", plan.img_size, prepare=False, dynamic_batch=True)
        runs["export_s"] = time.perf_counter() - start
    except Exception as error:  # noqa: BLE001
        runs["export"] = error_record(error)
        return runs
    for provider in wanted:
        if provider == "TensorrtExecutionProvider" and budget.left("inference") < plan.tensorrt_estimate_s:
            runs[provider] = {"skipped": f"budget: building TensorRT engines takes about "
                                         f"{plan.tensorrt_estimate_s:.0f} s"}
            continue
        try:
            runs[provider] = onnx_run(path, provider, plan, onnxruntime)
            log(f"inference {name} onnxruntime {provider}: {runs[provider]['latency_ms']:.2f} ms at batch 1, "
                f"{runs[provider]['throughput_img_s']:.1f} img/s")
        except Exception as error:  # noqa: BLE001
            runs[provider] = error_record(error)
            log(f"inference {name} onnxruntime {provider}: {runs[provider]['error'][:300]}")
    return runs


def onnx_run(path: Path, provider: str, plan: Plan, onnxruntime: ModuleType) -> dict[str, Any]:
    """Latency / throughput of an exported model under one execution provider, with inputs and outputs bound on
    the provider's device (no host copies in the timed runs)."""
    options = onnxruntime.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if provider == "CPUExecutionProvider":
        options.intra_op_num_threads = torch.get_num_threads()
    start = time.perf_counter()
    # TensorRT hands the nodes it cannot build to the CUDA provider.
    providers = [provider, "CUDAExecutionProvider"] if provider == "TensorrtExecutionProvider" else [provider]
    session = onnxruntime.InferenceSession(str(path), options, providers=providers)
    session_s = time.perf_counter() - start
    if session.get_providers()[0] != provider:
        raise RuntimeError(f"onnxruntime fell back to {session.get_providers()} instead of {provider}")
    device_type = "cpu" if provider == "CPUExecutionProvider" else "cuda"

    def runner(batch: int) -> Callable[[], None]:
        images = np.random.default_rng(0).random((batch, 3, plan.img_size, plan.img_size), dtype=np.float32)
        value = onnxruntime.OrtValue.ortvalue_from_numpy(images, device_type, 0)  # on the CPU it wraps `images`
        binding = session.io_binding()
        binding.bind_ortvalue_input("images", value)
        binding.bind_output("predictions", device_type)

        def run() -> None:
            session.run_with_iobinding(binding)
            binding.synchronize_outputs()
            assert value is not None and images is not None  # both must outlive the binding

        return run

    none = torch.device("cpu")  # onnxruntime synchronises itself (synchronize_outputs)
    latency = timed_forward(runner(1), plan.latency_runs, plan.inference_warmup + 1, none)
    throughput = timed_forward(runner(plan.throughput_batch), plan.throughput_runs, plan.inference_warmup + 1, none)
    return {"latency_ms": statistics.median(latency) * 1000, "latency_min_ms": min(latency) * 1000,
            "throughput_img_s": plan.throughput_batch / statistics.median(throughput),
            "throughput_batch": plan.throughput_batch, "session_s": session_s}


# ------------------------------------------------------------------------------------------------ 5. validation


class EvalTimer(pl.Callback):
    """Times of a validate call: the first batch, the end of the loop (callbacks' on_validation_epoch_end runs
    before the task's, which scores) and the end."""

    def __init__(self) -> None:
        self.marks: dict[str, float] = {}

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self.marks.setdefault("first_batch", time.perf_counter())

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        sync_of(pl_module.device)()
        self.marks["loop_end"] = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        self.marks["end"] = time.perf_counter()


@torch.no_grad()
def raise_class_biases(detector: torch.nn.Module, bias: float = DENSE_CLASS_BIAS) -> None:
    """Make an untrained detector at least as talkative as a trained one at conf 0.001 (every candidate above it,
    so NMS and COCO scoring work on a full 300 boxes per image: the worst case)."""
    from pgi_detect.models.heads import DetectHead

    for head in (m for m in detector.modules() if isinstance(m, DetectHead)):
        for branch in head.cls:
            branch[-1].bias.fill_(bias)


def validation_section(plan: Plan, budget: Budget, workspace: Workspace, workdir: Path, results: dict,
                       save: Callable[[], None]) -> dict:
    from pgi_detect.data import DetectionDataModule
    from pgi_detect.training import DetectionTask

    start = time.perf_counter()
    annotations, images = workspace.split("val", plan.val_entries)
    section: dict[str, Any] = {"images": plan.val_entries, "unique_images": plan.pool_images,
                               "img_size": plan.img_size, "precision": plan.val_precision,
                               "val_batch": 2 * plan.base_batch, "workers": plan.workers, "rect_val": True,
                               "dataset_s": time.perf_counter() - start}
    results["validation"] = section
    last_s = plan.validation_estimate_s / 1.2
    for name in plan.models:
        same = same_network_as(name, plan.models)
        if same:
            section[name] = {"skipped": same}
            continue
        left = budget.left("validation")
        if left < max(plan.min_section_s, 1.2 * last_s):
            section[name] = {"skipped": f"budget: {max(left, 0):.0f} s left"}
            continue
        try:
            datamodule = DetectionDataModule(val=str(annotations), val_images=str(images), img_size=plan.img_size,
                                             batch_size=plan.base_batch, num_workers=plan.workers,
                                             pin_memory=plan.cuda, rect_val=True, seed=0)
            task = DetectionTask(model=name, num_classes=datamodule.num_classes, class_names=datamodule.class_names,
                                 category_ids=datamodule.category_ids, batch_size=plan.base_batch)
            raise_class_biases(task.detector)
            timer = EvalTimer()
            trainer = pl.Trainer(accelerator="gpu" if plan.cuda else "cpu", devices=1, precision=plan.val_precision,
                                 logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                 enable_model_summary=False, benchmark=False, callbacks=[timer],
                                 default_root_dir=workdir)
            begin = time.perf_counter()
            trainer.validate(task, datamodule=datamodule, verbose=False)
            total = time.perf_counter() - begin
            marks = timer.marks
            evaluation = task.last_eval.get("evaluation")
            detections = len(evaluation.detections) if evaluation is not None else None
            section[name] = {
                "total_s": total, "img_s": plan.val_entries / total,
                "setup_s": marks["first_batch"] - begin, "loop_s": marks["loop_end"] - marks["first_batch"],
                "scoring_s": marks["end"] - marks["loop_end"],
                "detections": detections,
                "detections_per_image": None if detections is None else detections / plan.val_entries,
                "mAP": task.last_eval.get("metrics", {}).get("AP"),
            }
            last_s = total
            log(f"validation {name}: {total:.1f} s for {plan.val_entries} images ({section[name]['loop_s']:.1f} s "
                f"loop, {section[name]['scoring_s']:.1f} s scoring, "
                f"{cell(section[name]['detections_per_image'], 0)} detections per image)")
            del trainer, task, datamodule
        except Exception as error:  # noqa: BLE001
            section[name] = error_record(error)
            log(f"validation {name}: {section[name]['error']}")
        free_device_memory()
        save()
    return section


# ------------------------------------------------------------------------------------------------ report


def format_mib(value: Any) -> str:
    return f"{value:,.0f} MiB" if isinstance(value, (int, float)) else "n/a"


def cell(value: Any, digits: int = 1, suffix: str = "") -> str:
    if isinstance(value, bool) or value is None:
        return "–"
    if isinstance(value, (int, float)):
        return f"{value:,.{digits}f}{suffix}"
    return str(value)


def why_not(entry: Any) -> str:
    """The skip reason or the error of a result entry, short enough for a table cell."""
    if not isinstance(entry, dict):
        return "–"
    if "skipped" in entry:
        return f"skipped: {entry['skipped']}"
    if "error" in entry:
        return f"error: {entry['error'].splitlines()[0][:120]}"
    return "–"


def markdown_report(results: dict) -> str:
    machine = results.get("machine", {})
    lines = ["# Device check", ""]
    gpu = machine.get("gpu")
    where = (f"{gpu} ({machine.get('gpu_memory_gib')} GiB, {machine.get('gpu_count')} GPU(s), driver "
             f"{machine.get('driver', '?')}, CUDA {machine.get('cuda_build')}, cuDNN {machine.get('cudnn')})"
             if gpu else f"CPU only ({machine.get('cpu')})")
    lines += [f"`{machine.get('command', '')}` on {machine.get('date', '?')}: {where}; {machine.get('cpu_count')} "
              f"CPUs, torch {machine.get('torch')}, Lightning {machine.get('lightning')}, onnxruntime "
              f"{machine.get('onnxruntime', 'n/a')}, commit {machine.get('git_commit', '?')}"
              f"{', quick mode' if machine.get('quick') else ''}. Total {cell(results.get('total_s'), 0)} s.", ""]
    lines += training_table(results.get("training"))
    lines += data_loader_table(results.get("data_loader"))
    lines += ddp_table(results.get("ddp"))
    lines += inference_table(results.get("inference"))
    lines += validation_table(results.get("validation"))
    return "\n".join(lines) + "\n"


def section_problem(title: str, section: Any) -> list[str] | None:
    if not isinstance(section, dict):
        return [f"## {title}", "", "Not run.", ""]
    if "skipped" in section or "error" in section:
        return [f"## {title}", "", why_not(section), ""]
    return None


def training_table(section: Any) -> list[str]:
    title = "Training (DetectionTask fit, synthetic batch on the device)"
    problem = section_problem(title, section)
    if problem:
        return problem
    lines = [f"## {title}", "",
             "DetectionTask's own step (recipe SGD, accumulation, clipping) with ModelEMA; peak MiB = "
             "`torch.cuda.max_memory_allocated` over the fit; cuDNN autotuner off unless the precision says "
             "`+cudnn.benchmark`. The largest batch doubles from the first until CUDA runs out of memory.", "",
             "| model | precision | batch | img/s | step ms | peak MiB | largest batch | img/s | peak MiB | "
             "search stopped by |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, runs in section.items():
        for precision, entry in runs.items():
            base = entry.get("base", entry)
            if "img_s" not in base:
                lines.append(f"| {name} | {precision} | | {why_not(base)} | | | | | | |")
                continue
            largest = entry.get("largest", {})
            if "img_s" in largest:
                big = (f"{largest['batch']} | {cell(largest['img_s'])} | {cell(largest['peak_mib'], 0)} | "
                       f"{largest.get('stopped_by', '')}")
            else:
                big = f"| | | {why_not(largest)}"
            lines.append(f"| {name} | {precision} | {base['batch']} | {cell(base['img_s'])} | "
                         f"{cell(base['step_ms'])} | {cell(base['peak_mib'], 0)} | {big} |")
    return lines + [""]


def data_loader_table(section: Any) -> list[str]:
    title = "Data loader against training (DetectionDataModule, recipe augmentation)"
    problem = section_problem(title, section)
    if problem:
        return problem
    augmentation = section.get("augmentation", {})
    lines = [f"## {title}", "",
             f"{section['dataset_images']} generated {section['img_size']} px images ({section['unique_images']} "
             f"unique), mosaic {augmentation.get('mosaic')}, mixup {augmentation.get('mixup')}, copy-paste "
             f"{augmentation.get('copy_paste')}; batch {section['batch']}, {section['timed_batches']} batches timed "
             f"after every worker's first.", "",
             "| workers | loader img/s | first batch s |", "|---|---|---|",
             f"| {section['workers']} | {cell(section['img_s'])} | {cell(section['first_batch_s'], 2)} |", ""]
    lines += [f"- {line}" for line in section.get("bound", {}).values()]
    return lines + [""]


def ddp_table(section: Any) -> list[str]:
    title = "DDP"
    problem = section_problem(title, section)
    if problem:
        smoke = section.get("smoke_one_process") if isinstance(section, dict) else None
        if isinstance(smoke, dict):
            problem.insert(-1, f"(The DDP worker's one-process smoke run: "
                               f"{cell(smoke.get('img_s'))} img/s{'; ' + why_not(smoke) if 'error' in smoke else ''}.)")
        return problem
    lines = [f"## {title}", "", f"{section.get('gpus')} GPUs, {section.get('precision')}, batch "
             f"{section.get('batch_per_gpu')} per GPU, SyncBatchNorm.", "",
             "| model | img/s | per GPU | vs 1 GPU | peak MiB (rank 0) |", "|---|---|---|---|---|"]
    for name, entry in section.items():
        if not isinstance(entry, dict):
            continue
        if "img_s" in entry:
            world = entry.get("world_size") or section.get("gpus") or 1
            lines.append(f"| {name} | {cell(entry['img_s'])} | {cell(entry['img_s'] / world)} | "
                         f"{cell(entry.get('scaling'), 2, 'x')} | {cell(entry.get('peak_mib'), 0)} |")
        else:
            lines.append(f"| {name} | {why_not(entry)} | | | |")
    return lines + [""]


def inference_table(section: Any) -> list[str]:
    title = "Inference (predict_raw: forward + decode, no NMS)"
    problem = section_problem(title, section)
    if problem:
        return problem
    lines = [f"## {title}", "", f"{section.get('img_size')} px, random input; latency = median at batch 1.", "",
             "| model | form | latency ms | throughput img/s | batch | note |", "|---|---|---|---|---|---|"]
    for name, forms in section.items():
        if not isinstance(forms, dict):
            continue
        if "skipped" in forms or "error" in forms:
            lines.append(f"| {name} | | | | | {why_not(forms)} |")
        rows = [(form, entry) for form, entry in forms.items() if form != "onnxruntime" and isinstance(entry, dict)]
        rows += [(f"onnxruntime {provider}", entry) for provider, entry in forms.get("onnxruntime", {}).items()
                 if isinstance(entry, dict) and provider != "export"]
        if "export" in forms.get("onnxruntime", {}):
            rows.append(("onnx export", forms["onnxruntime"]["export"]))
        for form, entry in rows:
            if "latency_ms" in entry:
                note = []
                if "compile_s" in entry:
                    note.append(f"{entry.get('backend')}, compiled in "
                                f"{sum(entry['compile_s'].values()):.1f} s")
                if "session_s" in entry:
                    note.append(f"session {entry['session_s']:.1f} s")
                lines.append(f"| {name} | {form} | {cell(entry['latency_ms'], 2)} | "
                             f"{cell(entry['throughput_img_s'])} | {entry['throughput_batch']} | {'; '.join(note)} |")
            else:
                lines.append(f"| {name} | {form} | | | | {why_not(entry)} |")
    return lines + [""]


def validation_table(section: Any) -> list[str]:
    title = "Validation (Trainer.validate, COCO-val-sized synthetic set)"
    problem = section_problem(title, section)
    if problem:
        return problem
    lines = [f"## {title}", "",
             f"{section.get('images')} images at {section.get('img_size')} px ({section.get('unique_images')} unique), "
             f"{section.get('precision')}, rect batches of {section.get('val_batch')}, {section.get('workers')} "
             "workers, faster-coco-eval; untrained detectors with class biases raised to about 300 boxes per "
             "image.", "",
             "| model | total s | img/s | setup s | loop s | scoring s | detections/image |",
             "|---|---|---|---|---|---|---|"]
    for name, entry in section.items():
        if not isinstance(entry, dict):
            continue
        if "total_s" in entry:
            lines.append(f"| {name} | {cell(entry['total_s'])} | {cell(entry['img_s'])} | {cell(entry['setup_s'])} | "
                         f"{cell(entry['loop_s'])} | {cell(entry['scoring_s'])} | "
                         f"{cell(entry['detections_per_image'], 0)} |")
        else:
            lines.append(f"| {name} | {why_not(entry)} | | | | | |")
    return lines + [""]


# ------------------------------------------------------------------------------------------------ main


def write_outputs(results: dict, output: Path) -> None:
    output.mkdir(parents=True, exist_ok=True)
    (output / JSON_NAME).write_text(json.dumps(results, indent=2, default=str))
    try:
        report = markdown_report(results)
    except Exception as error:  # noqa: BLE001 - the JSON holds the figures; the tables must not stop the run
        report = f"# Device check\n\nThe tables could not be written: {type(error).__name__}: {error}\n"
    (output / MD_NAME).write_text(report)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and counts (the test suite's CPU run)")
    parser.add_argument("--output", default="device_check_out", help="folder for device_check.json / .md")
    parser.add_argument("--models", nargs="+", default=None,
                        help="zoo names (default gelan-c yolov9-c; quick: gelan-t yolov9-t)")
    parser.add_argument("--img-size", type=int, default=None, help="default 640; quick: 64")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default min(8, CPUs))")
    parser.add_argument("--budget-s", type=float, default=450.0, help="time budget shared by the sections")
    parser.add_argument("--ddp-worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--ddp-devices", type=int, default=None, help=argparse.SUPPRESS)
    return parser


def run_section(name: str, results: dict, budget: Budget, body: Callable[[], dict], save: Callable[[], None]) -> None:
    reason = budget.skip_reason(name)
    if reason is not None:
        results[name] = {"skipped": reason}
        log(f"{name}: skipped ({reason})")
        save()
        return
    log(f"--- {name} (deadline {budget.deadline(name):.0f} s, at {budget.elapsed():.0f} s)")
    start = time.perf_counter()
    try:
        results[name] = body()
    except Exception as error:  # noqa: BLE001 - a failed section is recorded, the next one runs
        results[name] = error_record(error)
        log(f"{name}: {results[name]['error']}")
    results.setdefault("section_s", {})[name] = time.perf_counter() - start
    free_device_memory()
    save()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.ddp_worker:
        return ddp_worker(args)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("device_check: --device cuda but torch sees no GPU (use --device cpu --quick for the CPU run)",
              file=sys.stderr)
        return 2
    quiet_lightning()
    plan = make_plan(args)
    budget = Budget(plan.budget_s, plan.reserve_s, plan.min_section_s)
    output = Path(args.output)
    results: dict[str, Any] = {"machine": machine_info(plan, ["scripts/device_check.py", *argv]),
                               "plan": asdict(plan)}
    save = lambda: write_outputs(results, output)  # noqa: E731
    log(f"{plan.device}, models {' '.join(plan.models)}, {plan.img_size} px, budget {plan.budget_s:.0f} s, "
        f"output {output}")
    workspace = Workspace(plan)
    workdir = workspace.root / "runs"
    workdir.mkdir()
    try:
        run_section("training", results, budget, lambda: training_section(plan, budget, workdir, results, save), save)
        run_section("data_loader", results, budget, lambda: data_loader_section(plan, budget, workspace, results),
                    save)
        run_section("ddp", results, budget, lambda: ddp_section(plan, budget, workdir, results), save)
        run_section("inference", results, budget, lambda: inference_section(plan, budget, workdir, results, save),
                    save)
        run_section("validation", results, budget,
                    lambda: validation_section(plan, budget, workspace, workdir, results, save), save)
    finally:
        results["total_s"] = budget.elapsed()
        try:
            save()
        finally:
            workspace.cleanup()
    log(f"done in {budget.elapsed():.0f} s: {output / JSON_NAME}, {output / MD_NAME}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
