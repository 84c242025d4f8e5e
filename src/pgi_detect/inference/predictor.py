"""`Predictor`: the Python inference API. Letterbox a batch, run the stripped + fused detector once, NMS, and map
boxes back to original pixels."""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from pgi_detect.data.images.decode import channels_first
from pgi_detect.geometry import NMS_DETECT, Letterbox, NMSSettings, postprocess, stack_letterboxes
from pgi_detect.inference.detections import Detections
from pgi_detect.inference.inputs import (ErrorHandler, Frame, Source, batched, is_image_file, iter_frames,
                                        to_rgb_array)
from pgi_detect.models import inference_copy
from pgi_detect.weights import PRETRAINED, WeightsError, read_weights


class Predictor:
    """Run a detector on images and return `Detections` in original-image pixels.

    Args:
        detector: a `pgi_detect` Detector (any branch count). With `prepare=True` (default) a stripped, fused,
            eval-mode copy is made, so the caller's (training) model is untouched.
        class_names: names indexed by class id (optional).
        category_ids: class index -> dataset category id (checkpoints carry it); the `Detections` carry it, so
            their COCO records hold dataset category ids.
        img_size: square network input side; rounded up to a multiple of the largest stride (32).
        nms: the NMS settings (`geometry.NMSSettings`: conf_thres, iou_thres, multi_label, max_det); the default
            is detect.py's (`NMS_DETECT`: 0.25 / 0.45 / single label), with at most 300 boxes per image.
        classes: keep only these class ids.
        batch_size: images per forward pass when a list or a folder is predicted.
        device: where the model runs ("cpu", "cuda", "cuda:1", ...).
        half: run the network in float16 (CUDA only); NMS always runs in float32.
        channels_last: NHWC memory format for weights and inputs; about 20 % faster on CPU (oneDNN) in our
            measurement (gelan-t, 640), same results up to float rounding.
    """

    def __init__(
        self,
        detector: nn.Module,
        class_names: Sequence[str] | None = None,
        *,
        category_ids: Sequence[int] | None = None,
        img_size: int = 640,
        nms: NMSSettings = NMS_DETECT,
        classes: Sequence[int] | None = None,
        batch_size: int = 8,
        device: str | torch.device = "cpu",
        half: bool = False,
        channels_last: bool = False,
        prepare: bool = True,
    ) -> None:
        self.device = torch.device(device)
        self.half = bool(half) and self.device.type == "cuda"
        model = inference_copy(detector) if prepare else detector.eval()
        model = model.to(self.device)
        model = model.half() if self.half else model
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(memory_format=self.memory_format)
        self.stride = int(max(getattr(detector, "strides", (32,))))
        self.img_size = math.ceil(img_size / self.stride) * self.stride
        self.class_names = list(class_names) if class_names is not None else None
        self.category_ids = [int(c) for c in category_ids] if category_ids is not None else None
        self.nms = nms
        self.classes = list(classes) if classes is not None else None
        self.batch_size = int(batch_size)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu", **kwargs) -> "Predictor":
        """Load a `DetectionTask` Lightning checkpoint (EMA weights, class names from its record), a detector file, an
        official YOLOv9 / GELAN `.pt` (its model read from the weights) or a pretrained name (`from_pretrained`);
        keyword arguments go to the constructor (nms, img_size, ...)."""
        loaded = read_weights(path)
        kwargs.setdefault("class_names", loaded.class_names)
        kwargs.setdefault("category_ids", loaded.category_ids)
        return cls(loaded.detector, device=device, **kwargs)

    @classmethod
    def from_pretrained(cls, name: str, device: str | torch.device = "cpu", **kwargs) -> "Predictor":
        """A Predictor on official pretrained weights by name (gelan-c, yolov9-c, yolov9-c-converted, ...;
        `pgi_detect.weights.list_pretrained()`), downloaded once into the cache (`pgi_detect.weights.hub`)."""
        if name not in PRETRAINED:
            raise WeightsError(f"{name!r} is not a pretrained name; available: {', '.join(PRETRAINED)}")
        return cls.from_checkpoint(name, device=device, **kwargs)

    # ------------------------------------------------------------------ pipeline stages

    def preprocess(self, images: Sequence[np.ndarray]) -> tuple[Tensor, list[Letterbox]]:
        """Letterbox RGB arrays (uint8, or float32 in [0, 255]) to (img_size, img_size) and stack them as a float
        batch in [0, 1]."""
        tensors, letterboxes = [], []
        for image in images:
            letterbox = Letterbox.fit(image.shape[:2], (self.img_size, self.img_size))
            tensors.append(torch.from_numpy(channels_first(letterbox.apply(image))))
            letterboxes.append(letterbox)
        batch = torch.stack(tensors).to(self.device, non_blocking=True)
        batch = batch.half() if self.half else batch.float()
        return batch / 255.0, letterboxes

    @torch.no_grad()  # not inference_mode: its tensors (e.g. cached anchors) would break a later training forward
    def raw_predictions(self, batch: Tensor) -> Tensor:
        """Decoded network output (B, 4 + nc, N): xywh input pixels + class probabilities (float32)."""
        return self.model.predict_raw(batch.contiguous(memory_format=self.memory_format)).float()

    def postprocess(self, pred: Tensor, letterboxes: Sequence[Letterbox]) -> list[Detections]:
        """NMS and the letterbox undone: `Detections` in original pixels."""
        rows = postprocess(pred, self.nms, *stack_letterboxes(letterboxes, pred.device), classes=self.classes)
        return [Detections.from_rows(r, lb.source_shape, self.class_names, self.category_ids)
                for r, lb in zip(rows, letterboxes)]

    def predict_arrays(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Detections for RGB arrays (uint8, or float32 in [0, 255]), `batch_size` images per forward pass."""
        results: list[Detections] = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            batch, letterboxes = self.preprocess(chunk)
            results.extend(self.postprocess(self.raw_predictions(batch), letterboxes))
        return results

    # ------------------------------------------------------------------ public entry points

    def __call__(self, images: Source | Tensor) -> Detections | list[Detections]:
        """One image (path, RGB array, PIL image or (3, H, W) tensor) -> `Detections`; a list, folder, video or a
        (B, 3, H, W) tensor -> a list of `Detections` in source order (one per image / frame).

        Tensors are RGB, uint8 in [0, 255] or floating point in [0, 1] (torchvision's convention; other float ranges
        are an error), on any device; they are letterboxed like arrays, on the CPU."""
        if isinstance(images, Tensor):
            results = numbered(self.predict_arrays(tensor_to_arrays(images)))
            return results[0] if images.ndim == 3 else results
        if isinstance(images, (np.ndarray, Image.Image)):
            return numbered(self.predict_arrays([to_rgb_array(images)]))[0]
        if isinstance(images, (str, Path)) and is_image_file(Path(images)) and Path(images).is_file():
            return next(self.stream(images))[1]
        return [detections for _, detections in self.stream(images)]

    def stream(self, source: Source, on_error: ErrorHandler | None = None) -> Iterator[tuple[Frame, Detections]]:
        """(frame, detections) pairs for any source, reading and predicting `batch_size` frames at a time, so
        long videos and large folders never sit in memory. An unreadable input raises `UnreadableInput`, or is
        passed to `on_error` and skipped (iter_frames)."""
        for frames in batched(iter_frames(source, on_error), self.batch_size):
            for frame, detections in zip(frames, self.predict_arrays([f.image for f in frames])):
                detections.image_id = frame.image_id
                yield frame, detections


def numbered(results: list[Detections]) -> list[Detections]:
    """In-memory images get the image ids 0, 1, ... in the order given (as `iter_frames` numbers a list of arrays),
    so `to_coco()` works without arguments for them too."""
    for index, detections in enumerate(results):
        if detections.image_id is None:
            detections.image_id = index
    return results


def tensor_to_arrays(images: Tensor) -> list[np.ndarray]:
    """(3, H, W) or (B, 3, H, W) RGB tensors -> (H, W, 3) arrays for the letterbox: uint8 as is, floating point
    tensors (which must lie in [0, 1]) as float32 in [0, 255], so no precision is lost to rounding."""
    if images.ndim not in (3, 4) or images.shape[-3] != 3:
        hint = "; permute (H, W, 3) images with .permute(2, 0, 1)" if images.ndim and images.shape[-1] == 3 else ""
        raise ValueError(f"image tensors must be RGB (3, H, W) or (B, 3, H, W), got shape {tuple(images.shape)}{hint}")
    batch = images.detach().cpu()
    batch = batch[None] if batch.ndim == 3 else batch
    if batch.dtype == torch.uint8:
        arrays = batch.permute(0, 2, 3, 1).numpy()
    elif batch.is_floating_point():
        batch = batch.float()
        low, high = (float(batch.min()), float(batch.max())) if batch.numel() else (0.0, 0.0)
        if low < 0.0 or high > 1.0:
            raise ValueError(f"floating-point image tensors must lie in [0, 1] (got {low:g} to {high:g}); divide by "
                             "255, or pass uint8")
        arrays = (batch * 255.0).permute(0, 2, 3, 1).numpy()
    else:
        raise ValueError(f"image tensors must be uint8 or floating point, got {batch.dtype}")
    return [np.ascontiguousarray(array) for array in arrays]
