"""The letterbox: how an image sits inside a network input (resized keeping its aspect ratio, padded centred).

One value object, `Letterbox`, computes the placement once and applies or inverts it for images and boxes; the data
pipeline, the evaluation and the predictor all go through it. A point maps as `input = source * gain + pad`.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import Tensor

PAD_VALUE = 114  # grey of the padding (and of the mosaic canvas)


@dataclass(frozen=True)
class Letterbox:
    """Placement of a `source_shape` (h, w) image in a `shape` (h, w) input: per-axis `gain` (x, y) and the offset
    `pad` (left, top) of the resized content."""

    source_shape: tuple[int, int]
    shape: tuple[int, int]
    gain: tuple[float, float]
    pad: tuple[float, float]

    @classmethod
    def fit(cls, source_shape: Sequence[int], shape: Sequence[int], scaleup: bool = True) -> Letterbox:
        """Largest aspect-preserving resize into `shape` (only shrinking when `scaleup` is False), padded centred; the
        odd pixel of padding goes bottom/right."""
        (height, width), ratio, (new_h, new_w) = _fit(source_shape, shape, scaleup)
        left, top = round((shape[1] - new_w) / 2 - 0.1), round((shape[0] - new_h) / 2 - 0.1)
        return cls((height, width), (int(shape[0]), int(shape[1])), (new_w / width, new_h / height), (left, top))

    @classmethod
    def fit_unrounded(cls, source_shape: Sequence[int], shape: Sequence[int], scaleup: bool = True) -> Letterbox:
        """`fit` before any rounding: the gain is the exact ratio and the pad half the padding (x.5 when it is odd).
        The official loader places labels this way while its image sits at fit's whole-pixel placement, so its
        boxes are up to half a pixel right of / below the objects (data.official_rounding reproduces it)."""
        (height, width), ratio, (new_h, new_w) = _fit(source_shape, shape, scaleup)
        pad = ((shape[1] - new_w) / 2, (shape[0] - new_h) / 2)
        return cls((height, width), (int(shape[0]), int(shape[1])), (ratio, ratio), pad)

    @classmethod
    def stretch(cls, source_shape: Sequence[int], shape: Sequence[int]) -> Letterbox:
        """A plain resize to `shape` (no padding), e.g. the long-side resize of the data loader."""
        height, width = int(source_shape[0]), int(source_shape[1])
        return cls((height, width), (int(shape[0]), int(shape[1])), (shape[1] / width, shape[0] / height), (0, 0))

    @property
    def content_shape(self) -> tuple[int, int]:
        """(h, w) of the resized image inside the padding."""
        return (max(1, round(self.source_shape[0] * self.gain[1])), max(1, round(self.source_shape[1] * self.gain[0])))

    @property
    def content_box(self) -> tuple[int, int, int, int]:
        """(x1, y1, x2, y2) input pixels covered by the resized image; the rest of the input is padding."""
        new_h, new_w = self.content_shape
        left, top = int(self.pad[0]), int(self.pad[1])
        return left, top, left + new_w, top + new_h

    def then(self, other: Letterbox) -> Letterbox:
        """This placement followed by `other` (whose source is this one's output), as one placement."""
        gain = (self.gain[0] * other.gain[0], self.gain[1] * other.gain[1])
        pad = (self.pad[0] * other.gain[0] + other.pad[0], self.pad[1] * other.gain[1] + other.pad[1])
        return Letterbox(self.source_shape, other.shape, gain, pad)

    def apply(self, image: np.ndarray, pad_value: int = PAD_VALUE) -> np.ndarray:
        """Resize (bilinear) and pad an (h, w, C) image of `source_shape` to `shape`."""
        left, top, right_edge, bottom_edge = self.content_box
        new_h, new_w = bottom_edge - top, right_edge - left
        if (new_h, new_w) != image.shape[:2]:
            image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        bottom, right = self.shape[0] - bottom_edge, self.shape[1] - right_edge
        if top or bottom or left or right:
            image = cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(pad_value,) * 3)
        return image

    def boxes_to_input(self, boxes: np.ndarray) -> np.ndarray:
        """xyxy boxes in source pixels -> input pixels (not clipped)."""
        gain = np.asarray([self.gain[0], self.gain[1], self.gain[0], self.gain[1]], np.float32)
        pad = np.asarray([self.pad[0], self.pad[1], self.pad[0], self.pad[1]], np.float32)
        return boxes * gain + pad

    def boxes_to_source(self, rows: Tensor) -> Tensor:
        """Rows whose first 4 columns are xyxy input pixels -> source pixels, clipped to the source image."""
        gains, pads, shapes = stack_letterboxes([self], rows.device, rows.dtype)
        return _undo(rows, gains.repeat(1, 2), pads.repeat(1, 2), shapes.flip(-1).repeat(1, 2))


def _fit(source_shape: Sequence[int], shape: Sequence[int],
         scaleup: bool) -> tuple[tuple[int, int], float, tuple[int, int]]:
    """(source (h, w), the aspect-preserving ratio into `shape`, the resized (h, w) it rounds to)."""
    height, width = int(source_shape[0]), int(source_shape[1])
    ratio = min(shape[0] / height, shape[1] / width)
    if not scaleup:
        ratio = min(ratio, 1.0)
    return (height, width), ratio, (max(1, round(height * ratio)), max(1, round(width * ratio)))


def stack_letterboxes(
    letterboxes: Sequence[Letterbox], device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor, Tensor]:
    """(gains (B, 2) as (x, y), pads (B, 2) as (x, y), source shapes (B, 2) as (h, w)): the batch form that
    `to_source_pixels` takes, and that the data loader's batches carry as `scales`, `pads`, `orig_shapes`."""
    gains = torch.tensor([lb.gain for lb in letterboxes], dtype=dtype, device=device).reshape(-1, 2)
    pads = torch.tensor([lb.pad for lb in letterboxes], dtype=dtype, device=device).reshape(-1, 2)
    shapes = torch.tensor([lb.source_shape for lb in letterboxes], dtype=dtype, device=device).reshape(-1, 2)
    return gains, pads, shapes


def to_source_pixels(detections: Sequence[Tensor], gains: Tensor, pads: Tensor, source_shapes: Tensor) -> list[Tensor]:
    """Undo a batch of letterboxes on per-image rows (first 4 columns xyxy input pixels), with one concatenation and
    no per-image arithmetic. gains/pads `(B, 2)` as (x, y); source_shapes `(B, 2)` as (h, w)."""
    if not detections:
        return []
    counts = [d.shape[0] for d in detections]
    rows = torch.cat(list(detections))
    device, dtype = rows.device, rows.dtype
    image_of_row = torch.repeat_interleave(torch.arange(len(detections), device=device),
                                           torch.tensor(counts, device=device))
    gain = gains.to(device, dtype)[image_of_row].repeat(1, 2)
    offset = pads.to(device, dtype)[image_of_row].repeat(1, 2)
    limits = source_shapes.to(device, dtype)[image_of_row].flip(-1).repeat(1, 2)  # (w, h, w, h)
    return list(_undo(rows, gain, offset, limits).split(counts))


def _undo(rows: Tensor, gain: Tensor, offset: Tensor, limits: Tensor) -> Tensor:
    """(input - pad) / gain on the first 4 columns, clipped to [0, source size]; other columns are copied."""
    out = rows.clone()
    out[..., :4] = torch.minimum(((rows[..., :4] - offset) / gain).clamp(min=0), limits)
    return out
