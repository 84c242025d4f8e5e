"""`build_detector`: the one place a detector is built from its spec (like timm's `build_model_with_cfg`)."""
from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from jsonargparse import ArgumentParser
from torch import nn

from pgi_detect.models.backbones import Backbone
from pgi_detect.models.zoo_tables import ZOO_MODELS
from pgi_detect.models.detector import Detector
from pgi_detect.models.spec import DetectorSpec, architecture_of


def instantiate_backbone(backbone: Mapping[str, Any] | nn.Module) -> nn.Module:
    """A backbone module from its spec. Dicts go through jsonargparse's own instantiation (as in the CLI) with any
    `pretrained` download switched off: the weights come from the file being loaded. Modules are copied."""
    if isinstance(backbone, nn.Module):
        return copy.deepcopy(backbone)
    config = copy.deepcopy(dict(backbone))
    init_args = dict(config.get("init_args") or {})
    if "pretrained" in init_args:
        init_args["pretrained"] = False
    config["init_args"] = init_args
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--backbone", type=Backbone)
    parsed = parser.parse_object({"backbone": config})
    return parser.instantiate_classes(parsed).backbone


def build_detector(spec: DetectorSpec, backbone: nn.Module | None = None) -> Detector:
    """A freshly initialised detector for `spec`: a zoo table, or a GELAN neck + head on the custom backbone, with
    the auxiliary branch the spec asks for. `backbone`: an already built module for `spec.backbone`, used as is
    (the CLI instantiates it, e.g. with its pretrained weights); otherwise it is built from the spec."""
    if spec.backbone is not None and backbone is None:
        backbone = instantiate_backbone(spec.backbone)
    return Detector(architecture_of(spec, backbone), spec)


def build_model(name: str, num_classes: int = 80, cls_width: int | None = None,
                auxiliary: str | None = None) -> Detector:
    """A freshly initialised zoo model: gelan-{t,s,m,c,e} or yolov9-{t,s,m,c,e} (= the gelan model with its
    official `auxiliary` form), or a gelan model with any auxiliary form.

    `cls_width` overrides the detect heads' class-branch width (None: the official formula; 80 on the t models
    reproduces the official README's 2.0M params / 7.7 GFLOPs for the inference model)."""
    return build_detector(DetectorSpec(name, num_classes, cls_width, auxiliary=auxiliary))


def list_models() -> list[str]:
    """Names of the zoo models."""
    return list(ZOO_MODELS)
