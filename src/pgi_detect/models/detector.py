"""The Detector: a layer table executed in order, plus decoding, auxiliary-branch removal and fusion."""
from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from pgi_detect.geometry import anchor_grid
from pgi_detect.models.backbones import gelan_neck_table
from pgi_detect.models.blocks import Conv, RepConvN, Silence
from pgi_detect.models.configs import MODEL_TABLES, inference_name
from pgi_detect.models.graph import IMAGE, Layer, Routing, build_layers, resolve, run_layers
from pgi_detect.models.heads import REG_MAX, STRIDES, DetectHead, DualDetectHead, decode_maps


class Detector(nn.Module):
    """A GELAN / YOLOv9 detector (pure PyTorch).

    `forward(images)` returns the raw per-level maps of every branch, main branch last (`[main]` or
    `[aux, main]`), in train and eval mode alike; `decode` turns one branch into `(B, 4 + nc, N)`.
    State-dict keys are `layers.<official idx>.<our submodule names>` (see `convert.py`).

    `cls_width` overrides the class-branch width of every detect head (None: the official
    `max(ch0, min(2 nc, 128))`); 80 on gelan-t / yolov9-t gives the official README's 2.0M / 7.7G
    (reference section 1.3). When `layers` is given it must already have been built with that width.
    """

    reg_max: int = REG_MAX
    strides: tuple[int, int, int] = STRIDES

    def __init__(
        self,
        table: Sequence[Layer],
        num_classes: int = 80,
        name: str = "custom",
        layers: nn.ModuleList | None = None,
        stripped: bool = False,
        source_name: str | None = None,
        cls_width: int | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.table: tuple[Layer, ...] = tuple(table)
        if layers is None:
            layers = build_layers(self.table, num_classes, cls_width=cls_width)
        self.layers = layers
        if not isinstance(self.layers[-1], (DetectHead, DualDetectHead)):
            raise ValueError("the last layer of a detector table must be a DetectHead or DualDetectHead")
        self.routing = Routing(self.table)
        self.num_classes = num_classes
        self.cls_width = cls_width  # class-branch width override (None: official formula)
        self.name = name
        self.source_name = source_name or name  # zoo name this model was built or stripped from
        self.stripped = stripped  # True when made by strip_auxiliary from a model that had an aux branch
        self.fused = False
        self.describe_backbone(None, "gelan-s")
        self.num_branches = 2 if isinstance(self.layers[-1], DualDetectHead) else 1
        self._anchor_cache: dict = {}

    def describe_backbone(self, backbone_spec: Any, neck: str) -> None:
        """Record how a custom backbone is specified (`{class_path, init_args}` dict, or the module itself) and its
        neck, for `spec_of`. Written into `__dict__`: a module here is `layers[0]` itself and must not be
        registered a second time."""
        self.__dict__["backbone_spec"] = backbone_spec
        self.__dict__["neck"] = neck

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
        """A new Detector with only the main branch (yolov9-x -> gelan-x), sharing no tensors with this one.

        Drops auxiliary rows, an unreferenced Silence and the aux head, and renumbers sources; the kept
        modules are copied unchanged, so main-branch outputs are bit-identical.
        """
        new_index = self._kept_rows()
        rows: list[Layer] = []
        modules = nn.ModuleList()
        for index, row in enumerate(self.table):
            if index not in new_index:
                continue
            sources, module, block = row.sources, self.layers[index], row.block
            if isinstance(module, DualDetectHead):
                sources, module, block = sources[module.num_levels :], module.main, DetectHead
            new_sources = [self._renumbered(source, index, new_index) for source in sources]
            source = new_sources[0] if isinstance(row.source, int) else tuple(new_sources)
            module = copy.deepcopy(module)
            if isinstance(block, nn.Module):  # a prebuilt row (custom backbone): the row names the copy
                block = module
            rows.append(Layer(source, block, row.args))
            modules.append(module)

        stripped = Detector(
            rows,
            self.num_classes,
            name=inference_name(self.name),
            layers=modules,
            stripped=self.stripped or self.num_branches == 2,
            source_name=self.source_name,
            cls_width=self.cls_width,
        )
        stripped.fused = self.fused
        stripped.describe_backbone(self.backbone_spec, self.neck)
        return stripped.train(self.training)

    def _kept_rows(self) -> dict[int, int]:
        """Old row index -> new row index of the rows `strip_auxiliary` keeps: main-branch rows, without a Silence
        that no kept row names explicitly."""
        dropped = [row.auxiliary for row in self.table]
        for index, row in enumerate(self.table):
            if row.block is Silence and not self._explicitly_referenced(index, dropped):
                dropped[index] = True
        kept = [index for index, gone in enumerate(dropped) if not gone]
        return {old: new for new, old in enumerate(kept)}

    def _renumbered(self, source: int, consumer: int, new_index: dict[int, int]) -> int:
        """A row's source after stripping: relative sources that still point at the same row stay relative."""
        absolute = self._kept_source(resolve(source, consumer), consumer, new_index)
        at = new_index[consumer]
        return source if source < 0 and absolute == at + source else absolute

    def _kept_source(self, absolute: int, consumer: int, new_index: dict[int, int]) -> int:
        """New index of the row that `absolute` resolves to once dropped rows are gone (a dropped Silence is an
        identity: it stands for what it read)."""
        if absolute == IMAGE:
            return IMAGE
        if absolute in new_index:
            return new_index[absolute]
        if self.table[absolute].block is Silence:
            return self._kept_source(resolve(self.table[absolute].sources[0], absolute), consumer, new_index)
        raise ValueError(f"cannot strip {self.name}: main layer {consumer} reads auxiliary layer {absolute}")

    def _explicitly_referenced(self, index: int, dropped: list[bool]) -> bool:
        """Whether a kept row names row `index` other than as its implicit previous layer (-1)."""
        for consumer, row in enumerate(self.table):
            if dropped[consumer]:
                continue
            for source in row.sources:
                if source != -1 and resolve(source, consumer) == index:
                    return True
        return False

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
        neck="gelan-s",
        name: str = "custom",
        cls_width: int | None = None,
    ) -> Detector:
        """A detector on any backbone returning (P3, P4, P5) maps at strides 8/16/32 and exposing
        `out_channels`, with a GELAN neck (`neck`: "gelan-t", "gelan-s" or a `NeckSpec`) and a DetectHead
        (`cls_width`: optional class-branch width override)."""
        detector = cls(gelan_neck_table(backbone, neck), num_classes, name=name, cls_width=cls_width)
        detector.describe_backbone(backbone, neck)
        return detector


def inference_copy(model: nn.Module) -> nn.Module:
    """The deployable form of any model, never modifying `model`: `Detector.inference_copy()` (auxiliary branch
    removed, BN folded, RepConvN merged) for our detectors, an eval-mode deep copy for other modules."""
    if isinstance(model, Detector):
        return model.inference_copy()
    return copy.deepcopy(model).eval()


def list_models() -> list[str]:
    """Names of the zoo models."""
    return list(MODEL_TABLES)
