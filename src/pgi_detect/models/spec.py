"""`DetectorSpec` and `build_detector`: the one place a detector architecture is described and built.

A spec names a zoo model (`gelan-{t,s,m,c,e}`, `yolov9-{t,s,m,c,e}`), or a custom backbone as a jsonargparse
`{class_path, init_args}` dict (any `Backbone`, e.g. `TimmBackbone`) under a free label, plus the class count and the
class-branch width. Every checkpoint and converted file stores the spec, so loaders rebuild the architecture from the
file alone.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from jsonargparse import ArgumentParser
from torch import nn

from pgi_detect.models.backbones import Backbone
from pgi_detect.models.configs import get_table
from pgi_detect.models.detector import Detector


@dataclass(frozen=True)
class DetectorSpec:
    """What `build_detector` needs to rebuild an (untrained) detector.

    model: zoo name, or a free label when `backbone` is given.
    num_classes: class count of the detect head(s).
    cls_width: class-branch width override (None: the official `max(ch0, min(2 nc, 128))`).
    backbone: a custom backbone as `{"class_path": ..., "init_args": {...}}` (portable), or a module object (only
        picklable files can hold it); None for zoo models.
    neck: GELAN neck of a custom backbone ("gelan-t" or "gelan-s").
    """

    model: str = "gelan-c"
    num_classes: int = 80
    cls_width: int | None = None
    backbone: Mapping[str, Any] | nn.Module | None = None
    neck: str = "gelan-s"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(replace(self, backbone=None))
        data["backbone"] = copy.deepcopy(dict(self.backbone)) if isinstance(self.backbone, Mapping) else self.backbone
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DetectorSpec:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown detector spec keys {unknown}; known: {sorted(known)}")
        values = dict(data)
        if values.get("cls_width") is not None:
            values["cls_width"] = int(values["cls_width"])
        if "num_classes" in values:
            values["num_classes"] = int(values["num_classes"])
        return cls(**values)


def instantiate_backbone(backbone: Mapping[str, Any] | nn.Module) -> nn.Module:
    """A backbone module from its spec. Dicts go through jsonargparse's own instantiation (as in the CLI) with any
    `pretrained` download switched off: the weights come from the file being loaded. Modules are copied."""
    if isinstance(backbone, nn.Module):
        return copy.deepcopy(backbone)
    config = copy.deepcopy(dict(backbone))
    init_args = config.setdefault("init_args", {}) or {}
    if "pretrained" in init_args:
        init_args["pretrained"] = False
    config["init_args"] = init_args
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--backbone", type=Backbone)
    parsed = parser.parse_object({"backbone": config})
    return parser.instantiate_classes(parsed).backbone


def build_detector(spec: DetectorSpec) -> Detector:
    """A freshly initialised detector for `spec` (zoo table, or GELAN neck + head on the custom backbone)."""
    if spec.backbone is None:
        detector = Detector(get_table(spec.model), spec.num_classes, name=spec.model, cls_width=spec.cls_width)
    else:
        detector = Detector.from_backbone(instantiate_backbone(spec.backbone), spec.num_classes, neck=spec.neck,
                                          name=spec.model, cls_width=spec.cls_width)
        detector.describe_backbone(spec.backbone, spec.neck)
    return detector


def spec_of(detector: Detector) -> DetectorSpec:
    """The spec that rebuilds `detector`'s architecture (its inference form's, for a stripped model)."""
    return DetectorSpec(detector.name, detector.num_classes, detector.cls_width, detector.backbone_spec,
                        detector.neck)


def build_model(name: str, num_classes: int = 80, cls_width: int | None = None) -> Detector:
    """A freshly initialised zoo model: gelan-{t,s,m,c,e} or yolov9-{t,s,m,c,e}.

    `cls_width` overrides the detect heads' class-branch width (None: the official formula; 80 on the t models
    reproduces the official README's 2.0M params / 7.7 GFLOPs for the inference model)."""
    return build_detector(DetectorSpec(name, num_classes, cls_width))
