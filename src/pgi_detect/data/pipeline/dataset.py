"""`DetectionDataset`: training and evaluation samples, composed of small parts with one job each:

* `ImageSource` (image_source.py): decoding, resizing, the image cache;
* `BadSamples` (bad_samples.py): the bad-sample policy and the shared skip counter;
* `Mosaic` (mosaic.py): mosaic-4 + copy-paste + its perspective warp; mixup, the letterbox + affine pipeline,
  HSV / pixel augmentation and flips below, each taking the sample's random generator explicitly.

Every training sample draws from its own generator, a function of (seed, epoch, index) only (`sample_rng`).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from pgi_detect.geometry import Letterbox

from pgi_detect.data.augment import transforms as aug
from pgi_detect.data.augment.transforms import AugmentationConfig
from pgi_detect.data.bad_samples import SKIP_COUNTER_SLOTS, BadSamples
from pgi_detect.data.images.heap import bound_heap_retention
from pgi_detect.data.images.cache import cache_kind
from pgi_detect.data.images.source import ImageSource
from pgi_detect.data.images.decode import channels_first
from pgi_detect.data.augment.mosaic import Mosaic
from pgi_detect.data.problems import DataError
from pgi_detect.data.records import DetectionSource, ImageRecord, RecordTable, clip_boxes_to_image

__all__ = ["DetectionDataset", "MIN_OUTPUT_BOX_SIZE", "SKIP_COUNTER_SLOTS"]

# Final validity rule, every pipeline: boxes are clipped to the output image and dropped when their width or height
# is below this many pixels (zero-area after clipping). Training boxes have already passed box_candidates (> 2 px).
MIN_OUTPUT_BOX_SIZE = 1e-3


class DetectionDataset(Dataset):
    """Samples are dicts: image (3,H,W) uint8 RGB tensor, boxes (n,4) xyxy pixels of that image, classes (n,),
    image_id, orig_shape (h, w), scale (gain_x, gain_y), pad (pad_x, pad_y), path, pipeline.

    scale/pad invert the letterbox of evaluation samples (original = (letterboxed − pad) / gain); for training
    samples they describe the main image's resize only. `pipeline` is 'mosaic', 'mosaic+mixup', 'letterbox'
    (training, mosaic off) or 'eval'.
    """

    def __init__(self, source: DetectionSource | RecordTable | list[ImageRecord], img_size: int = 640,
                 train: bool = False, augmentation: AugmentationConfig | dict | None = None,
                 cache_images: bool | str = False, on_bad_sample: str = "error", seed: int = 0,
                 decode_reduced: bool = False, official_rounding: bool = False) -> None:
        self.records = RecordTable.coerce(source.records if isinstance(source, DetectionSource) else source)
        if not len(self.records):
            raise DataError("dataset has no usable images")
        if img_size < 32:
            raise ValueError(f"img_size must be at least 32, got {img_size}")
        self.img_size = int(img_size)
        self.train = train
        self.config = AugmentationConfig.from_any(augmentation) if train else AugmentationConfig.disabled()
        self.official_rounding = bool(official_rounding)
        self.images = ImageSource(self.records, self.img_size, train, cache_kind(cache_images), decode_reduced,
                                  truncate=self.official_rounding)
        self.bad_samples = BadSamples(on_bad_sample)
        self.pixel_augmenter = aug.PixelAugmenter(self.config) if train else None
        self.rect_shapes: dict[int, tuple[int, int]] | None = None
        self._mosaic_flag = torch.ones(1, dtype=torch.uint8).share_memory_()
        # Polygons are only used by training mosaics (copy-paste, segment-aware warping); records loaded with
        # segments=False, or without polygon labels, keep the box-only pipeline.
        self.use_segments = train and self.records.any_segments
        self.mosaic = Mosaic(self.images, self.bad_samples, self.config, self.use_segments)
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.records)

    # ------------------------------------------------------------------------------------------------ switches

    def set_mosaic(self, enabled: bool) -> None:
        """close-mosaic: takes effect in worker processes too (shared-memory flag)."""
        self._mosaic_flag[0] = int(bool(enabled))

    @property
    def mosaic_enabled(self) -> bool:
        return bool(self._mosaic_flag.item())

    @property
    def skipped_samples(self) -> int:
        """Bad images skipped so far (replaced by another image, as a sample or a mosaic tile), summed over this
        process and its DataLoader workers (shared memory, like the mosaic flag)."""
        return self.bad_samples.skipped

    def sample_rng(self, epoch: int, index: int) -> np.random.Generator:
        """The augmentation randomness of one sample: a function of (seed, epoch, index) only, so a sample is the
        same whichever worker draws it, however many workers there are, and after a resume in the middle of an
        epoch."""
        return np.random.default_rng((self.seed, epoch, index))

    def set_rect_shapes(self, shapes: dict[int, tuple[int, int]] | None) -> None:
        """Per-index letterbox shapes for rectangular evaluation batches (see samplers.rect_batches)."""
        self.rect_shapes = shapes

    # ------------------------------------------------------------------------------------------------ loading

    def cache_all(self, threads: int = 2) -> None:
        """Fill the image cache (data.cache_images); call before the DataLoader workers start."""
        self.images.fill_cache(threads)

    # ------------------------------------------------------------------------------------------------ samples

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        """`key` is an index, or `(epoch, index)` as `EpochSampler` yields them (the epoch seeds the augmentation)."""
        epoch, index = key if isinstance(key, tuple) else (0, key)
        # Evaluation samples draw nothing; training ones draw everything from this one generator.
        rng = self.sample_rng(int(epoch), int(index)) if self.train else None
        bound_heap_retention()  # once per process: keeps worker memory flat without trimming (data/heap.py)
        for _ in range(len(self)):
            if index not in self.bad_samples.bad:
                try:
                    return self._sample(index, rng)
                except DataError as exc:
                    self.bad_samples.handle(index, exc)
            self.bad_samples.count_skip()
            index = (index + 1) % len(self)
        raise DataError("every image of the dataset failed to load")

    def _sample(self, index: int, rng: np.random.Generator | None) -> dict[str, Any]:
        content_rows = None  # rows outside which the image is padding grey only, when known
        if not self.train:
            image, boxes, classes, orig, gain, pad, _ = self._letterboxed(index, self._eval_shape(index), False)
            pipeline = "eval"
        elif self.mosaic_enabled and rng.random() < self.config.mosaic:
            image, boxes, classes, orig, content_rows = self.mosaic(index, rng)
            pipeline = "mosaic"
            if rng.random() < self.config.mixup:
                image, boxes, classes = self._mixup(image, boxes, classes, rng)
                content_rows = None  # the blend of two paddings need not be the padding grey
                pipeline = "mosaic+mixup"
            gain, pad = (self.img_size / max(orig), self.img_size / max(orig)), (0.0, 0.0)
        else:
            image, boxes, classes, orig, gain, pad, content_rows = self._letterbox_affine(index, rng)
            pipeline = "letterbox"
        if self.train:
            image, boxes = photometric_and_flips(image, boxes, content_rows, self.config, self.pixel_augmenter, rng)
        boxes, keep, _ = clip_boxes_to_image(boxes.reshape(-1, 4), image.shape[1], image.shape[0],
                                             min_size=MIN_OUTPUT_BOX_SIZE)
        return {
            "image": torch.from_numpy(channels_first(image)),
            "boxes": boxes[keep].astype(np.float32),
            "classes": np.asarray(classes)[keep].astype(np.int64),
            "image_id": self.records.image_id(index),
            "orig_shape": (int(orig[0]), int(orig[1])),
            "scale": (float(gain[0]), float(gain[1])),
            "pad": (float(pad[0]), float(pad[1])),
            "path": str(self.records.path(index)),
            "pipeline": pipeline,
        }

    def _mixup(self, image: np.ndarray, boxes: np.ndarray, classes: np.ndarray,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Blend with a second mosaic of a random image; the labels of both are kept."""
        other, other_boxes, other_classes, _, _ = self.mosaic(int(rng.integers(len(self))), rng)
        image = aug.mixup(image, other, rng, self.config.mixup_beta)
        return image, np.concatenate([boxes, other_boxes]), np.concatenate([classes, other_classes])

    def _letterbox_affine(self, index: int, rng: np.random.Generator):
        """Mosaic off (close-mosaic): the image letterboxed to img_size, then the recipe's random affine."""
        image, boxes, classes, orig, gain, pad, content = self._letterboxed(index, (self.img_size,) * 2, True)
        size = (image.shape[1], image.shape[0])
        transform = aug.affine_matrix(rng, self.config, size, size)
        image, boxes, classes = aug.random_perspective(image, boxes, classes, self.config, rng, border=0,
                                                       transform=transform)
        return image, boxes, classes, orig, gain, pad, aug.content_rows(content, transform[0], image.shape[0])

    def _eval_shape(self, index: int) -> tuple[int, int]:
        if self.rect_shapes is not None:
            return self.rect_shapes[index]
        return self.img_size, self.img_size

    def _letterboxed(self, index: int, shape: tuple[int, int], scaleup: bool):
        """The source image letterboxed to `shape`, with the placement relative to the original image and the
        box of the letterboxed image's non-padding pixels."""
        image, orig, boxes, classes = self.images.load(index)
        image_shape = image.shape[:2]
        letterbox = Letterbox.fit(image_shape, shape, scaleup=scaleup)
        total = Letterbox.stretch(orig, image_shape).then(letterbox)
        image = letterbox.apply(image)
        # official_rounding: labels at the official loader's unrounded placement, the image where fit puts it
        labels = Letterbox.fit_unrounded(image_shape, shape, scaleup) if self.official_rounding else letterbox
        boxes = labels.boxes_to_input(boxes) if len(boxes) else boxes
        return image, boxes, classes, orig, total.gain, total.pad, letterbox.content_box


def photometric_and_flips(image: np.ndarray, boxes: np.ndarray, content_rows: tuple[int, int] | None,
                          config: AugmentationConfig, pixel_augmenter: aug.PixelAugmenter | None,
                          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The pixel augmentations (albumentations' blur / gray / CLAHE), HSV and the flips, in the recipe's order."""
    if pixel_augmenter is not None:
        image, applied = pixel_augmenter(image, rng)
        if applied:  # blur and CLAHE reach into the padding rows
            content_rows = None
    image = aug.augment_hsv(image, rng, (config.hsv_h, config.hsv_s, config.hsv_v), content_rows)
    if rng.random() < config.flipud:
        image, boxes = aug.flip_up_down(image, boxes)
    if rng.random() < config.fliplr:
        image, boxes = aug.flip_left_right(image, boxes)
    return image, boxes
