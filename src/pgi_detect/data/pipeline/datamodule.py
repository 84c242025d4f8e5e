"""DetectionDataModule: the Lightning face of the data package (datasets, loaders, class table, ground truth).

Every init argument is a plain value so a LightningCLI YAML can set it (docs/data.md shows one).
"""
from __future__ import annotations

import os
from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch.utilities.rank_zero import rank_zero_info
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from pgi_detect.text import class_count
from pgi_detect.data.augment.transforms import AugmentationConfig
from pgi_detect.data.pipeline.collate import collate_detections, seed_worker
from pgi_detect.data.pipeline.dataset import DetectionDataset
from pgi_detect.data.formats.dataset_yaml import DatasetYaml, read_dataset_yaml
from pgi_detect.data.formats.ground_truth import ground_truth_coco
from pgi_detect.data.images.cache import cache_kind
from pgi_detect.data.formats.sources import load_source, require_objects
from pgi_detect.data.problems import DataError
from pgi_detect.data.records import DetectionSource
from pgi_detect.data.pipeline.resumable import EpochSampler, ResumableLoader
from pgi_detect.data.pipeline.samplers import RectShardSampler, rect_batches
from pgi_detect.settings import AT_LEAST_ONE, NON_NEGATIVE, Range, check_ranges, option_prefix


Split = Literal["train", "val", "test"]


class DetectionDataModule(pl.LightningDataModule):
    """COCO JSON, YOLO txt or dataset-YAML detection data with the official YOLOv9 training augmentation.

    Args:
        dataset: an ultralytics / official dataset YAML (`path`, `train`, `val`, `test`, `names`; see
            data/dataset_yaml.py). It gives every split and the class names; train/val/test and their *_images
            must then be left unset (an error names the ones that are set).
        train, val, test: COCO annotation .json file or YOLO dataset folder (images/ + labels/).
        train_images, val_images, test_images: image folder (COCO: guessed from the json path when omitted).
        format: 'auto' (json file → coco, folder → yolo), 'coco' or 'yolo'.
        class_names: overrides/provides class names (YOLO without classes.yaml).
        img_size: training/eval size, a multiple of 32.
        batch_size: training batch; val_batch_size defaults to 2·batch_size like the reference.
        augmentation: AugmentationConfig fields (dict in YAML); None = official defaults.
        cache_images: false, ram or disk (true = ram): decode every image once before the workers start. ram: one
            flat buffer per rank that its workers share; disk: a memory-mapped file every rank and worker of a node
            shares, keyed on the images and the decode settings, built by local rank 0 (data/image_cache.py).
        decode_reduced: decode JPEGs at least twice img_size on their long side at a reduced DCT scale (1/2, 1/4,
            1/8, the smallest that still covers img_size), then resize as usual: about 2x faster for large photos,
            pixels within a few levels of the full decode (docs/data.md). Off: the full decode, bit for bit.
        official_rounding: reproduce two rounding choices of the official loader that this one does not share (off
            by default): resized sides truncated (`int(w0 * r)`) instead of rounded, and letterboxed labels placed at
            the unrounded gain and half-pixel pad while the image sits at whole pixels (boxes up to 0.5 px right of /
            below their objects when the padding is odd). For comparisons with official runs (docs/training.md).
        rect_val: rectangular evaluation batches sorted by aspect ratio (rect_pad = 0.5 as in training-time val);
            under DDP each rank takes every world_size-th batch.
        on_bad_sample: 'error' (fail fast naming the file) or 'skip' (log each bad sample, drop it, summarise).
        segments: keep polygon labels of the train split (COCO `segmentation`, YOLO polygon lines) for copy-paste
            and segment-aware warping. False (or augmentation mosaic 0) does not load them: less memory, box-only
            augmentation. Val/test splits never load them.
        allow_empty_labels: accept a training set without any object (intentional background-only data);
            otherwise it is an error that says where labels were expected.
        seed: seeds shuffling and augmentation; identical seeds give identical batches.
    """

    def __init__(
        self,
        dataset: str | None = None,
        train: str | None = None,
        train_images: str | None = None,
        val: str | None = None,
        val_images: str | None = None,
        test: str | None = None,
        test_images: str | None = None,
        format: Literal["auto", "coco", "yolo"] = "auto",
        class_names: list[str] | None = None,
        img_size: int = 640,
        batch_size: int = 16,
        val_batch_size: int | None = None,
        num_workers: int = 8,
        persistent_workers: bool = True,
        pin_memory: bool = False,
        augmentation: AugmentationConfig | dict[str, Any] | None = None,
        cache_images: bool | Literal["ram", "disk"] = False,
        decode_reduced: bool = False,
        official_rounding: bool = False,
        rect_val: bool = False,
        rect_pad: float = 0.5,
        on_bad_sample: Literal["error", "skip"] = "error",
        segments: bool = True,
        allow_empty_labels: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        check_settings(img_size, batch_size, val_batch_size, num_workers)
        explicit = {"train": train, "train_images": train_images, "val": val, "val_images": val_images,
                    "test": test, "test_images": test_images}
        self.dataset_yaml: DatasetYaml | None = None
        if dataset is not None:
            given = [f"data.{key}" for key, value in explicit.items() if value is not None]
            if given:
                raise DataError(f"data.dataset ({dataset}) gives every split; {', '.join(given)} cannot be set "
                                 f"with it (set {' and '.join(given)} to null, e.g. --{given[0]} null, or drop "
                                 "data.dataset)")
            self.dataset_yaml = read_dataset_yaml(dataset)
            splits = self.dataset_yaml.splits
            train, val, test = (str(dataset) if s in splits else None for s in ("train", "val", "test"))
        if not (train or val or test):
            raise DataError("give data.dataset or at least one of data.train, data.val, data.test")
        self.paths = {"train": (train, train_images), "val": (val, val_images), "test": (test, test_images)}
        self.format = format
        self.img_size = img_size
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or 2 * batch_size
        self.num_workers = num_workers
        self.persistent_workers = persistent_workers and num_workers > 0
        self.pin_memory = pin_memory
        with option_prefix("data.augmentation."):
            self.augmentation = AugmentationConfig.from_any(augmentation)
        self.cache_images = cache_kind(cache_images)
        self.decode_reduced = decode_reduced
        self.official_rounding = official_rounding
        self.rect_val = rect_val
        self.rect_pad = rect_pad
        self.on_bad_sample = on_bad_sample
        self.segments = segments
        self.allow_empty_labels = allow_empty_labels
        self.seed = seed
        self._class_names_arg = list(class_names) if class_names is not None else None
        self._sources: dict[str, DetectionSource] = {}
        self._datasets: dict[str, DetectionDataset] = {}
        self._rect: dict[str, list[list[int]]] = {}
        self._ground_truths: dict[str, Any] = {}  # validation asks every epoch; sources never change once read
        self._mosaic = True

    # ------------------------------------------------------------------------------------------------ class table

    def source(self, split: Split) -> DetectionSource:
        """The parsed split (loaded once, bad-input policy applied)."""
        if split not in self._sources:
            path, images = self.paths[split]
            if path is None:
                raise DataError(f"no {split} dataset configured")
            segments = split == "train" and self.segments and self.augmentation.mosaic > 0
            source = load_source(self.dataset_yaml or path, images, self.format, self._class_names_arg,
                                 self.on_bad_sample, segments, split=split if self.dataset_yaml else None)
            if split == "train":
                require_objects(source, self.allow_empty_labels)
            self._sources[split] = source
            self._check_same_classes(split)
        return self._sources[split]

    def _first_split(self) -> Split:
        return next(s for s in ("train", "val", "test") if self.paths[s][0] is not None)  # type: ignore[return-value]

    def _check_same_classes(self, split: str) -> None:
        names = self._sources[split].class_names
        for other, source in self._sources.items():
            if other != split and source.class_names != names:
                raise DataError(f"{self.paths[split][0]}: classes differ from the {other} set "
                                f"({len(names)} vs {class_count(len(source.class_names))})")

    @property
    def class_names(self) -> list[str]:
        if self.dataset_yaml is not None:  # known without reading any split
            return list(self._class_names_arg or self.dataset_yaml.class_names)
        return list(self.source(self._first_split()).class_names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def category_ids(self) -> list[int]:
        """Contiguous class index → dataset category id (for COCO JSON results); taken from the val set when there
        is one, so it matches ground_truth("val")."""
        if self.dataset_yaml is not None:
            return list(range(len(self.dataset_yaml.class_names)))
        split = "val" if self.paths["val"][0] is not None else self._first_split()
        return list(self.source(split).category_ids)

    def ground_truth(self, stage: Literal["val", "test"]) -> Any:
        """pycocotools COCO ground truth (original pixels, dataset image and category ids) of the split that `stage`
        evaluates: the val set or the test set (`test` without a test set stops at setup)."""
        if stage not in self._ground_truths:
            self._ground_truths[stage] = ground_truth_coco(self.source(stage))
        return self._ground_truths[stage]

    # ------------------------------------------------------------------------------------------------ datasets

    def _predict_split(self) -> Split:
        """predict runs on the test set, or the val set when there is none."""
        return "test" if self.paths["test"][0] is not None else "val"

    def dataset(self, split: Split) -> DetectionDataset:
        if split not in self._datasets:
            train = split == "train"
            dataset = DetectionDataset(self.source(split), self.img_size, train=train,
                                       augmentation=self.augmentation, cache_images=self.cache_images,
                                       decode_reduced=self.decode_reduced, official_rounding=self.official_rounding,
                                       on_bad_sample=self.on_bad_sample, seed=self.seed)
            if train:
                dataset.set_mosaic(self._mosaic)
            elif self.rect_val:
                sizes = dataset.records.sizes_hw()
                batches, shapes = rect_batches(sizes, self.val_batch_size, self.img_size, pad=self.rect_pad)
                dataset.set_rect_shapes(shapes)
                self._rect[split] = batches
            dataset.cache_all()
            self._datasets[split] = dataset
        return self._datasets[split]

    def setup(self, stage: str | None = None) -> None:
        if stage == "test" and self.paths["test"][0] is None:
            raise DataError("`test` evaluates the test split, and none is configured: pass data.test (and "
                            "data.test_images), or run `validate` to evaluate the val split")
        if stage in (None, "fit"):
            self.dataset("train")
        if stage in (None, "fit", "validate") and self.paths["val"][0] is not None:
            self.dataset("val")
        if stage == "test":
            self.dataset("test")
        if stage == "predict":
            if self._predict_split() != "test":
                rank_zero_info(f"predict: no data.test configured; predicting the val split ({self.paths['val'][0]})")
            self.dataset(self._predict_split())

    @property
    def dropped_at_load(self) -> int:
        """Training images the dataset lists that were left out when it was read (on_bad_sample='skip'): never
        trained on, in every epoch (0 before the training set is read)."""
        return self._sources["train"].images_dropped if "train" in self._sources else 0

    @property
    def skipped_samples(self) -> int:
        """Bad training images skipped so far by this process and its DataLoader workers (0 before the training
        set is built); the training DataMonitor callback logs the increase per epoch."""
        return self._datasets["train"].skipped_samples if "train" in self._datasets else 0

    def set_mosaic(self, enabled: bool) -> None:
        """close-mosaic switch; reaches running persistent workers."""
        self._mosaic = bool(enabled)
        if "train" in self._datasets:
            self._datasets["train"].set_mosaic(enabled)

    # ------------------------------------------------------------------------------------------------ loaders

    def _loader_args(self) -> dict[str, Any]:
        workers = usable_workers(self.num_workers)
        # Pinned memory only speeds up copies to a GPU; without one torch warns and ignores it.
        return dict(num_workers=workers, persistent_workers=self.persistent_workers and workers > 0,
                    pin_memory=self.pin_memory and torch.cuda.is_available(), collate_fn=collate_detections,
                    worker_init_fn=seed_worker, generator=torch.Generator().manual_seed(self.seed))

    def train_dataloader(self) -> DataLoader:
        """Shuffled by (seed, epoch), resumable mid-epoch (see data/resumable.py)."""
        dataset = self.dataset("train")
        sampler = EpochSampler(dataset, *self._rank_and_world(), seed=self.seed)
        return ResumableLoader(dataset, sampler=sampler, batch_size=self.batch_size,
                               processed_batches=self._processed_training_batches,
                               training_epoch=self._training_epoch, **self._loader_args())

    def _processed_training_batches(self) -> int:
        """Batches of the current epoch the trainer has trained on (its progress counter survives a resume)."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0
        return int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)

    def _training_epoch(self) -> int | None:
        """The epoch the trainer trains next: the epochs it has fully processed (restored from a checkpoint)."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return None
        return int(trainer.fit_loop.epoch_progress.current.processed)

    def _rank_and_world(self) -> tuple[int, int]:
        """(global rank, world size) that rect eval batches are sharded over: the attached Trainer's, else an
        initialised torch.distributed group's (a script using the module without a Trainer), else one process."""
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return trainer.global_rank, trainer.world_size
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def _eval_loader(self, split: Split) -> DataLoader:
        dataset = self.dataset(split)
        if split in self._rect:
            # Already sharded by rank (a DistributedSampler), so Lightning keeps it under DDP; see RectShardSampler.
            sampler = RectShardSampler(dataset, self._rect[split], *self._rank_and_world())
            return DataLoader(dataset, batch_size=self.val_batch_size, sampler=sampler, **self._loader_args())
        return DataLoader(dataset, batch_size=self.val_batch_size, shuffle=False, **self._loader_args())

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader(self._predict_split())


def usable_workers(num_workers: int) -> int:
    """`num_workers`, at most the CPUs this process may run on (more workers only compete for them, and torch warns
    about each loader); the cut is said once. Samples do not depend on the worker count (each draws its own
    generator from the seed, epoch and index), so the numbers stay the same."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    if num_workers <= cpus:
        return num_workers
    if num_workers not in _REPORTED_WORKER_CUTS:
        _REPORTED_WORKER_CUTS.add(num_workers)
        rank_zero_info(f"data.num_workers {num_workers} -> {cpus} (the CPUs this process may use)")
    return cpus


_REPORTED_WORKER_CUTS: set[int] = set()


def check_settings(img_size: int, batch_size: int, val_batch_size: int | None, num_workers: int) -> None:
    """Reject settings that would fail later with an obscure error (OpenCV, torch)."""
    check_ranges({"img_size": img_size, "batch_size": batch_size, "val_batch_size": val_batch_size,
                  "num_workers": num_workers}, DATA_RANGES, prefix="data.")


# The DetectionDataModule arguments with a valid range (its settings groups check their own: AugmentationConfig).
DATA_RANGES = {"img_size": Range(32, step=32), "batch_size": AT_LEAST_ONE, "val_batch_size": Range(1, optional=True),
               "num_workers": NON_NEGATIVE}
