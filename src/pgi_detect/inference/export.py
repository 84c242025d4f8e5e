"""ONNX export of the deployable detector (auxiliary branch stripped, BN folded, RepConvN merged).

Two output forms:

* raw (default): `predictions` (B, 4 + nc, N), xywh in input pixels + class probabilities, exactly
  `Detector.predict_raw`; NMS is left to the runtime (NMS-free graph, any backend runs it). The channel dimension
  4 + nc is always fixed in the graph, N too unless the image size is dynamic.
* `nms=True`: `detections` (K, 7) rows `[batch_index, x1, y1, x2, y2, score, class]` in input pixels, grouped by
  image and sorted by score, at most `max_det` per image; NMS is the standard ONNX `NonMaxSuppression` operator.

Input `images`: float32 (B, 3, H, W) RGB in [0, 1], letterboxed like `Predictor.preprocess`. The legacy TorchScript
exporter is used (`dynamo=False`): the torch.export one needs `onnxscript`, which is not a dependency.
"""
from __future__ import annotations

import importlib.util
import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from pgi_detect.geometry import NMS_DETECT, NMSSettings
from pgi_detect.models import inference_copy

DEFAULT_OPSET = 17
# --verify: the largest difference (pixels for boxes, probability for scores) accepted between onnxruntime and PyTorch.
VERIFY_TOLERANCE = 1e-2


class RawOutput(nn.Module):
    """Export wrapper: images -> decoded predictions (B, 4 + nc, N)."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, images: Tensor) -> Tensor:
        return self.detector.predict_raw(images)


class OnnxNonMaxSuppression(torch.autograd.Function):
    """ONNX `NonMaxSuppression` (center_point_box=1, xywh boxes) with an equivalent eager implementation, so the
    traced graph contains the standard operator and the eager result can be compared with onnxruntime.

    boxes (B, N, 4) xywh, scores (B, C, N) -> selected (K, 3) int64 `[batch, class, box]`, ordered by batch, then
    class, then decreasing score; per (batch, class) at most `max_per_class` boxes with score > `score_threshold`.
    """

    @staticmethod
    def forward(ctx, boxes: Tensor, scores: Tensor, max_per_class: int, iou_threshold: float,
                score_threshold: float) -> Tensor:
        from torchvision.ops import box_convert, nms  # on first use: torchvision.ops costs ~1.5 s to import

        selected = []
        xyxy = box_convert(boxes, "cxcywh", "xyxy")
        for b in range(scores.shape[0]):
            for c in range(scores.shape[1]):
                candidates = (scores[b, c] > score_threshold).nonzero().flatten()
                keep = candidates[nms(xyxy[b, candidates], scores[b, c, candidates], iou_threshold)][:max_per_class]
                index = torch.stack((torch.full_like(keep, b), torch.full_like(keep, c), keep), 1)
                selected.append(index)
        return torch.cat(selected) if selected else torch.zeros(0, 3, dtype=torch.long)

    @staticmethod
    def symbolic(g, boxes, scores, max_per_class: int, iou_threshold: float, score_threshold: float):
        def constant(value: Tensor):
            return g.op("Constant", value_t=value)

        return g.op(
            "NonMaxSuppression", boxes, scores,
            constant(torch.tensor([max_per_class], dtype=torch.long)),
            constant(torch.tensor([iou_threshold], dtype=torch.float32)),
            constant(torch.tensor([score_threshold], dtype=torch.float32)),
            center_point_box_i=1,
        )


class NMSOutput(nn.Module):
    """Export wrapper: images -> (K, 7) detections `[batch_index, x1, y1, x2, y2, score, class]`.

    Same selection rule as `postprocess.non_max_suppression`: single-label keeps each anchor's best class only,
    multi-label every (anchor, class) pair above `conf_thres`; per-class NMS at `iou_thres`; first `max_det` per
    image by score. Unlike it there is no `max_nms` pre-cap of 30000 candidates (irrelevant at detection thresholds).
    """

    def __init__(self, detector: nn.Module, settings: NMSSettings) -> None:
        super().__init__()
        self.detector = detector
        self.settings = settings

    def forward(self, images: Tensor) -> Tensor:
        pred = self.detector.predict_raw(images)
        boxes_xywh, scores = pred[:, :4].transpose(1, 2), pred[:, 4:]  # (B, N, 4), (B, C, N)
        settings = self.settings
        if not settings.multi_label:
            best = scores.argmax(1, keepdim=True)
            classes = torch.arange(scores.shape[1], device=scores.device)[None, :, None]
            scores = scores * (classes == best).to(scores.dtype)
        selected = OnnxNonMaxSuppression.apply(boxes_xywh.contiguous(), scores.contiguous(), int(settings.max_det),
                                               float(settings.iou_thres), float(settings.conf_thres))
        batch_index, class_index, box_index = selected[:, 0], selected[:, 1], selected[:, 2]
        score = scores[batch_index, class_index, box_index]
        xywh = boxes_xywh[batch_index, box_index]
        xyxy = torch.cat((xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2), 1)
        # Group by image, best score first (scores lie in [0, 1], so batch * 2 - score orders both at once).
        order = torch.argsort(batch_index.to(score.dtype) * 2 - score)
        batch_index, class_index, score, xyxy = batch_index[order], class_index[order], score[order], xyxy[order]
        # Rank within its image = position - number of rows of earlier images.
        images_in_batch = torch.arange(images.shape[0], device=images.device)
        per_image = (batch_index[:, None] == images_in_batch[None, :]).to(torch.long).sum(0)
        first_row = torch.cumsum(per_image, 0) - per_image
        rank = torch.arange(batch_index.shape[0], device=images.device) - first_row[batch_index]
        keep = rank < settings.max_det
        rows = torch.cat(
            (batch_index[:, None].to(score.dtype), xyxy, score[:, None], class_index[:, None].to(score.dtype)), 1
        )
        return rows[keep]


def _image_shape(img_size: int | Sequence[int], stride: int) -> tuple[int, int]:
    height, width = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    return math.ceil(height / stride) * stride, math.ceil(width / stride) * stride


def export_onnx(
    detector: nn.Module,
    path: str | Path,
    img_size: int | Sequence[int] = 640,
    *,
    dynamic_batch: bool = True,
    dynamic_shape: bool = False,
    batch_size: int = 1,
    opset: int = DEFAULT_OPSET,
    nms: bool = False,
    nms_settings: NMSSettings = NMS_DETECT,
    class_names: Sequence[str] | None = None,
    category_ids: Sequence[int] | None = None,
    prepare: bool = True,
) -> Path:
    """Write `detector` as ONNX to `path` and return it.

    `prepare=True` exports a stripped + fused eval copy (the caller's model is untouched). `img_size` is the traced
    input size (int or (h, w), rounded up to multiples of 32); `dynamic_batch` / `dynamic_shape` make the batch /
    height and width symbolic. Class names, the dataset's category ids (class index -> COCO category_id), strides and
    the output format are stored as ONNX metadata.
    """
    if opset < DEFAULT_OPSET:
        raise ValueError(f"opset {opset} is not supported; use {DEFAULT_OPSET} or newer")
    model = inference_copy(detector) if prepare else detector.eval()
    stride = int(max(getattr(model, "strides", (32,))))
    height, width = _image_shape(img_size, stride)
    if nms:
        # torchvision registers its ops when first imported, calling one of them (`_cuda_version`); the ONNX tracer
        # cannot record that call, so the import must not happen for the first time inside the traced forward.
        importlib.import_module("torchvision.ops")
    wrapper = (NMSOutput(model, nms_settings) if nms else RawOutput(model)).eval()
    output_name = "detections" if nms else "predictions"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # legacy-exporter deprecation and tracer warnings
        torch.onnx.export(
            wrapper, (torch.rand(batch_size, 3, height, width),), str(path), dynamo=False, opset_version=opset,
            input_names=["images"], output_names=[output_name], do_constant_folding=True,
            dynamic_axes=_dynamic_axes(output_name, nms, dynamic_batch, dynamic_shape),
        )
    num_classes = getattr(model, "num_classes", None)
    strides = tuple(getattr(model, "strides", (8, 16, 32)))
    _finish_graph(path, _static_output_shape(nms, num_classes, batch_size, (height, width), strides, dynamic_batch,
                                             dynamic_shape), {
        "format": "nms" if nms else "raw",
        "output": "(K, 7) [batch, x1, y1, x2, y2, score, class]" if nms else "(B, 4+nc, N) [cx, cy, w, h, scores...]",
        "stride": str(stride),
        "img_size": json.dumps([height, width]),
        "num_classes": "" if num_classes is None else str(num_classes),
        "names": json.dumps(list(class_names) if class_names is not None else None),
        "category_ids": json.dumps([int(c) for c in category_ids] if category_ids is not None else None),
    })
    return path


def _dynamic_axes(output_name: str, nms: bool, dynamic_batch: bool, dynamic_shape: bool) -> dict[str, dict[int, str]]:
    """Symbolic dimensions: the batch and/or the image size of the input, and the output dimensions they drive (an
    NMS output's row count is always symbolic)."""
    axes: dict[str, dict[int, str]] = {"images": {}, output_name: {}}
    if dynamic_batch:
        axes["images"][0] = "batch"
    if dynamic_shape:
        axes["images"].update({2: "height", 3: "width"})
    if nms:
        axes[output_name][0] = "detections"
    else:
        if dynamic_batch:
            axes[output_name][0] = "batch"
        if dynamic_shape:
            axes[output_name][2] = "anchors"
    return {name: dims for name, dims in axes.items() if dims}


def _static_output_shape(nms: bool, num_classes: int | None, batch_size: int, image_shape: tuple[int, int],
                         strides: Sequence[int], dynamic_batch: bool, dynamic_shape: bool) -> list[int | None]:
    """The output dimensions known at export time (None: symbolic). The tracer leaves even fixed ones symbolic."""
    if nms:
        return [None, 7]
    height, width = image_shape
    anchors = sum((height // s) * (width // s) for s in strides)
    return [None if dynamic_batch else batch_size, None if num_classes is None else 4 + int(num_classes),
            None if dynamic_shape else anchors]


def _finish_graph(path: Path, output_shape: Sequence[int | None], metadata: dict[str, str]) -> None:
    """Write the fixed output dimensions into the graph's declared output type (the traced graph computes them from
    runtime shapes, so ONNX shape inference cannot), and the metadata."""
    import onnx  # the optional `export` extra; imported only when exporting

    model = onnx.load(str(path))
    dims = model.graph.output[0].type.tensor_type.shape.dim
    for dim, size in zip(dims, output_shape):
        if size is not None:
            dim.Clear()
            dim.dim_value = size
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))


def run_onnx(path: str | Path, images: Tensor | np.ndarray) -> Tensor | np.ndarray:
    """Run an exported model with onnxruntime (CPU) on float images (B, 3, H, W) in [0, 1]; returns its single output,
    as a numpy array for numpy input and as a tensor for tensor input."""
    import onnxruntime  # the optional `export` extra; imported only when running an export

    options = onnxruntime.SessionOptions()
    # No busy-waiting between runs: spinning ORT threads would starve PyTorch's threads in the same process.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    as_numpy = isinstance(images, np.ndarray)
    floating = np.issubdtype(images.dtype, np.floating) if as_numpy else images.is_floating_point()
    if not floating:
        raise ValueError(f"run_onnx takes float images in [0, 1], got {images.dtype} (divide uint8 images by 255)")
    array = images.astype(np.float32, copy=False) if as_numpy else images.detach().cpu().float().numpy()
    (output,) = session.run(None, {"images": np.ascontiguousarray(array)})
    return output if as_numpy else torch.from_numpy(output)


def verify_onnx(path: str | Path, detector: nn.Module, images: Tensor, prepare: bool = True,
                nms_settings: NMSSettings | None = None) -> float:
    """Max absolute difference between onnxruntime and PyTorch on `images`: raw predictions for a raw export, the
    (K, 7) detections for an NMS export (`nms_settings` given; a different number of detections is infinite).

    NMS exports: a detection whose score several anchors of its class share exactly (an untrained model's flat
    scores) may come from another of those anchors in onnxruntime's NMS than in torchvision's; such ties are not
    counted as differences, every other box, score and class is."""
    model = inference_copy(detector) if prepare else detector.eval()
    with torch.no_grad():
        raw = model.predict_raw(images.float())
        expected = raw if nms_settings is None else NMSOutput(model, nms_settings).eval()(images.float())
    actual = run_onnx(path, images)
    if actual.shape != expected.shape:
        return float("inf")
    if nms_settings is None or not expected.numel():
        return float((actual - expected).abs().max()) if expected.numel() else 0.0
    actual, expected = _sorted_rows(actual), _sorted_rows(expected)
    worst = float((actual[:, [0, 5, 6]] - expected[:, [0, 5, 6]]).abs().max())
    box_differences = (actual[:, 1:5] - expected[:, 1:5]).abs().amax(dim=1)
    for row, difference in zip(expected, box_differences):
        if not _tied(raw, row):
            worst = max(worst, float(difference))
    return worst


def _sorted_rows(rows: Tensor) -> Tensor:
    order = sorted(range(len(rows)), key=lambda i: (float(rows[i, 0]), float(rows[i, 6]), -float(rows[i, 5])))
    return rows[order]


def _tied(raw: Tensor, row: Tensor) -> bool:
    """Whether several anchors of the row's image and class have its score (raw: (B, 4 + nc, N))."""
    scores = raw[int(row[0]), 4 + int(row[6])]
    return int((scores - row[5]).abs().le(1e-7).sum()) > 1
