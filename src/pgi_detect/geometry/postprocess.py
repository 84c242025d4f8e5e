"""Decoded predictions -> final detections in source-image pixels: NMS, then the letterbox undone. Evaluation,
`predict` and the `Predictor` all call this one function."""
from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from pgi_detect.geometry.letterbox import to_source_pixels
from pgi_detect.geometry.nms import NMSSettings, non_max_suppression


def postprocess(
    pred: Tensor, nms: NMSSettings, gains: Tensor, pads: Tensor, source_shapes: Tensor,
    classes: Sequence[int] | None = None,
) -> list[Tensor]:
    """Per image `(n, 6)` rows `[x1, y1, x2, y2, score, class]` in source pixels (clipped), by decreasing score.

    `pred` is the decoded `(B, 4 + nc, N)` output (`Detector.predict_raw`); gains/pads/source_shapes describe each
    image's letterbox (`stack_letterboxes`, or a batch's `scales`/`pads`/`orig_shapes`)."""
    detections = non_max_suppression(pred, **nms, classes=classes)
    return to_source_pixels(detections, gains, pads, source_shapes)
