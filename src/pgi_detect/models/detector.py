"""The Detector: an assembled layer table executed in order, plus decoding, auxiliary-branch removal and fusion."""
from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import Tensor, nn

from pgi_detect.geometry import anchor_grid
from pgi_detect.models.auxiliary import AUX_WEIGHT, Architecture
from pgi_detect.models.backbones import NeckSpec
from pgi_detect.models.blocks import Conv, RepConvN
from pgi_detect.models.graph import MainTable, Routing, build_layers, run_layers
from pgi_detect.models.heads import REG_MAX, STRIDES, DetectHead, DualDetectHead, decode_maps
from pgi_detect.models.spec import DetectorSpec, architecture_of


class Detector(nn.Module):
    """A GELAN / YOLOv9 detector (pure PyTorch), with or without the PGI auxiliary branch.

    `forward(images)` returns the raw per-level maps of every branch, main branch last (`[main]` or
    `[aux, main]`), in train and eval mode alike; `decode` turns one branch into `(B, 4 + nc, N)`.
    State-dict keys are `layers.<official idx>.<our submodule names>` (see models/official.py).

    `spec` is the detector's one record (what files store and loaders rebuild); `architecture` the assembled rows
    and where its main network sits in them; `branch_weights` the loss weight of each branch the head returns.
    When `layers` is given they must have been built from `architecture` and `spec` (`strip_auxiliary` does).
    """

    reg_max: int = REG_MAX
    strides: tuple[int, int, int] = STRIDES

    def __init__(self, architecture: Architecture, spec: DetectorSpec, layers: nn.ModuleList | None = None) -> None:
        super().__init__()
        if spec.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {spec.num_classes}")
        self.architecture = architecture
        self.spec = spec
        self.table = architecture.table
        self.layers = layers if layers is not None else build_layers(self.table, spec.num_classes,
                                                                     cls_width=spec.cls_width)
        if not isinstance(self.layers[-1], (DetectHead, DualDetectHead)):
            raise ValueError("the last layer of a detector table must be a DetectHead or DualDetectHead")
        self.routing = Routing(self.table)
        self.fused = False
        self._anchor_cache: dict = {}

    @property
    def name(self) -> str:
        return self.spec.model

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    @property
    def cls_width(self) -> int | None:
        return self.spec.cls_width

    @property
    def num_branches(self) -> int:
        return 2 if isinstance(self.layers[-1], DualDetectHead) else 1

    @property
    def branch_weights(self) -> tuple[float, ...]:
        """Loss weight per branch, in the order `forward` returns them: `(aux, main)` or `(main,)`."""
        return self.architecture.branch_weights

    # ------------------------------------------------------------------ forward / decode
    def forward(self, images: Tensor) -> list[list[Tensor]]:
        return run_layers(self.layers, self.routing, images)

    @property
    def main_head(self) -> DetectHead:
        head = self.layers[-1]
        return head.main if isinstance(head, DualDetectHead) else head

    def anchors(self, maps: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Anchor centres (2, N) in grid units and strides (1, N) for these map shapes, cached per shape."""
        shapes = tuple(tuple(m.shape[-2:]) for m in maps)
        reference = maps[0]
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return self._channel_first_grid(shapes, reference)
        key = (shapes, reference.device, reference.dtype)
        cached = self._anchor_cache.get(key)
        if cached is None:
            cached = self._channel_first_grid(shapes, reference)
            self._anchor_cache = {key: cached}  # keep one entry: shapes rarely change within a run
        return cached

    def _channel_first_grid(self, shapes: Sequence[tuple[int, int]], reference: Tensor) -> tuple[Tensor, Tensor]:
        points, strides = anchor_grid(shapes, self.strides, reference.device, reference.dtype)
        return points.T, strides.T

    def decode(self, maps: Sequence[Tensor]) -> Tensor:
        """One branch's raw maps -> `(B, 4 + nc, N)`: xywh in input pixels + sigmoid class scores."""
        points, strides = self.anchors(maps)
        return decode_maps(maps, points, strides, self.main_head.dfl)

    def predict_raw(self, images: Tensor) -> Tensor:
        return self.decode(self.forward(images)[-1])

    # ------------------------------------------------------------------ conversion to inference form
    def strip_auxiliary(self) -> Detector:
        """A new Detector with only the main network (yolov9-x -> gelan-x), sharing no tensors with this one.

        The kept rows are the main table's, wherever the assembly put them (`architecture.main_rows`); their modules
        are copied unchanged, the dual head's main half becomes the head, so main-branch outputs are bit-identical."""
        modules = nn.ModuleList()
        for position in self.architecture.main_rows:
            module = self.layers[position]
            modules.append(copy.deepcopy(module.main if isinstance(module, DualDetectHead) else module))
        main = _with_prebuilt(self.architecture.main, modules)
        spec = self.spec.main_spec()
        if isinstance(spec.backbone, nn.Module):  # the spec names the module this model holds
            spec = replace(spec, backbone=modules[0])
        stripped = Detector(Architecture.assemble(main), spec, layers=modules)
        stripped.fused = self.fused
        return stripped.train(self.training)

    def inference_copy(self) -> Detector:
        """The deployable form, leaving this model untouched: main branch only, BN folded, RepConvN merged,
        eval mode. strip_auxiliary already copies every module, so fusing its result in place is safe."""
        return self.strip_auxiliary().fuse().eval()

    @torch.no_grad()
    def fuse(self) -> Detector:
        """Fold every BN into its conv and merge RepConvN branches, in place (use in eval mode)."""
        for module in [m for m in self.modules() if isinstance(m, RepConvN)]:
            module.fuse()
        for module in [m for m in self.modules() if isinstance(m, Conv)]:
            module.fuse()
        self.fused = True
        return self

    # ------------------------------------------------------------------ custom backbones
    @classmethod
    def from_backbone(
        cls,
        backbone: nn.Module,
        num_classes: int = 80,
        neck: str | NeckSpec = "gelan-s",
        name: str = "custom",
        cls_width: int | None = None,
        auxiliary: str | None = None,
        aux_weight: float = AUX_WEIGHT,
        aux_widths: tuple[int, int, int] | None = None,
    ) -> Detector:
        """A detector on any backbone returning (P3, P4, P5) maps at strides 8/16/32 and exposing
        `out_channels`, with a GELAN neck (`neck`: "gelan-t", "gelan-s" or a `NeckSpec`), a DetectHead
        (`cls_width`: optional class-branch width override) and, with `auxiliary`, a PGI auxiliary branch ("fpn",
        "reversible" or "deep_supervision", models/auxiliary.py) that `strip_auxiliary` removes. The module is
        used as is (not copied); a spec with a `{class_path, init_args}` backbone (`build_detector`) gives files
        that rebuild without it."""
        spec = DetectorSpec(name, num_classes, cls_width, backbone, neck, auxiliary, aux_weight, aux_widths)
        return cls(architecture_of(spec, backbone), spec)


def _with_prebuilt(main: MainTable, modules: nn.ModuleList) -> MainTable:
    """`main` whose prebuilt rows (a custom backbone module) name the given copies."""
    rows = tuple(replace(row, block=modules[index]) if isinstance(row.block, nn.Module) else row
                 for index, row in enumerate(main.rows))
    return replace(main, rows=rows)


def inference_copy(model: nn.Module) -> nn.Module:
    """The deployable form of any model, never modifying `model`: `Detector.inference_copy()` (auxiliary branch
    removed, BN folded, RepConvN merged) for our detectors, an eval-mode deep copy for other modules."""
    if isinstance(model, Detector):
        return model.inference_copy()
    return copy.deepcopy(model).eval()
