"""`DetectorSpec`: the one record of a detector's architecture, set where it is built and stored in every file.

A spec names a zoo model (`gelan-{t,s,m,c,e}`, `yolov9-{t,s,m,c,e}`), or a custom backbone as a jsonargparse
`{class_path, init_args}` dict (any `Backbone`, e.g. `TimmBackbone`) under a free label, plus the class count, the
class-branch width and the PGI auxiliary branch (`auxiliary`: None, "fpn", "reversible" or "deep_supervision"; the
yolov9 names carry their official form). `architecture_of` turns it into the assembled rows; models/build.py builds
the Detector.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from torch import nn

from pgi_detect.models.auxiliary import AUX_WEIGHT, AUXILIARY_FORMS, Architecture, auxiliary_part
from pgi_detect.models.backbones import NeckSpec, gelan_neck_table
from pgi_detect.models.zoo_tables import YOLOV9_MODELS, ZOO_MODELS, inference_name, zoo_parts

# Options that change which tensors a detector has (a checkpoint's cannot be changed by a config); `aux_weight`
# is a loss weight, not one of them.
ARCHITECTURE_FIELDS = ("model", "num_classes", "cls_width", "backbone", "neck", "auxiliary", "aux_widths")


@dataclass(frozen=True)
class DetectorSpec:
    """What rebuilds an (untrained) detector.

    model: zoo name, or a free label when `backbone` is given.
    num_classes: class count of the detect head(s).
    cls_width: class-branch width override (None: the official `max(ch0, min(2 nc, 128))`).
    backbone: a custom backbone as `{"class_path": ..., "init_args": {...}}` (portable), or a module object (only
        picklable files can hold it); None for zoo models.
    neck: GELAN neck of a custom backbone ("gelan-t", "gelan-s" or a `NeckSpec`).
    auxiliary: the PGI auxiliary branch trained beside the main one and removed for inference: None, "fpn",
        "reversible" or "deep_supervision" (models/auxiliary.py). The yolov9 names imply theirs.
    aux_weight: loss weight of the auxiliary branch (official 0.25; the main branch weighs 1).
    aux_widths: P3/P4/P5 widths of the reversible form's auxiliary backbone on a custom backbone (default: the
        neck's widths).
    """

    model: str = "gelan-c"
    num_classes: int = 80
    cls_width: int | None = None
    backbone: Mapping[str, Any] | nn.Module | None = None
    neck: str | NeckSpec = "gelan-s"
    auxiliary: str | None = None
    aux_weight: float = AUX_WEIGHT
    aux_widths: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        if self.auxiliary is not None and self.auxiliary not in AUXILIARY_FORMS:
            raise ValueError(f"auxiliary={self.auxiliary!r}: use None or one of {', '.join(AUXILIARY_FORMS)}")
        if self.backbone is None:
            if self.model not in ZOO_MODELS:
                raise KeyError(f"unknown model {self.model!r}; available: {', '.join(ZOO_MODELS)} (or give a "
                               "backbone)")
            implied = YOLOV9_MODELS.get(self.model, (None, None))[1]
            if implied is not None and self.auxiliary not in (None, implied):
                raise ValueError(f"{self.model} carries the {implied!r} auxiliary branch; for another form build "
                                 f"{inference_name(self.model)} with auxiliary={self.auxiliary!r}")
        if isinstance(self.neck, Mapping):
            object.__setattr__(self, "neck", NeckSpec(tuple(int(w) for w in self.neck["widths"]),
                                                      int(self.neck.get("depth", 3))))
        if self.aux_widths is not None:
            object.__setattr__(self, "aux_widths", tuple(int(w) for w in self.aux_widths))
            if len(self.aux_widths) != 3:
                raise ValueError(f"aux_widths needs the P3, P4, P5 widths, got {self.aux_widths}")

    @property
    def auxiliary_form(self) -> str | None:
        """The auxiliary form this spec builds (a yolov9 name's own, or `auxiliary`)."""
        if self.backbone is None and self.model in YOLOV9_MODELS:
            return YOLOV9_MODELS[self.model][1]
        return self.auxiliary

    def main_spec(self) -> DetectorSpec:
        """The inference form's spec: the same main network without the auxiliary branch (yolov9-x -> gelan-x)."""
        model = inference_name(self.model) if self.backbone is None else self.model
        return replace(self, model=model, auxiliary=None, aux_widths=None)

    def architecture_key(self) -> dict[str, Any]:
        """What decides the tensors a built detector has, in a comparable form (yolov9-t == gelan-t + "fpn"; a
        backbone's `pretrained` flag does not count)."""
        model = inference_name(self.model) if self.backbone is None else None
        return {"model": model, "num_classes": int(self.num_classes), "cls_width": self.cls_width,
                "backbone": backbone_key(self.backbone), "neck": None if self.backbone is None else _neck_key(self.neck),
                "auxiliary": self.auxiliary_form, "aux_widths": self.aux_widths}

    def architecture_difference(self, other: DetectorSpec) -> list[str]:
        """`key: ours vs theirs` for every architecture value that differs (empty: the same tensors)."""
        mine, theirs = self.architecture_key(), other.architecture_key()
        return [f"{key} {mine[key]!r} vs {theirs[key]!r}" for key in mine if mine[key] != theirs[key]]

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["backbone"] = copy.deepcopy(dict(self.backbone)) if isinstance(self.backbone, Mapping) else self.backbone
        data["neck"] = _neck_key(self.neck)
        data["aux_widths"] = None if self.aux_widths is None else list(self.aux_widths)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DetectorSpec:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown detector spec keys {unknown}; known: {sorted(known)}")
        values = dict(data)
        for key in ("cls_width", "num_classes"):
            if values.get(key) is not None:
                values[key] = int(values[key])
        if isinstance(values.get("backbone"), Mapping):
            values["backbone"] = as_plain_dict(values["backbone"])
        return cls(**values)


def as_plain_dict(value: Any) -> Any:
    """Nested mappings (a jsonargparse Namespace included) as plain dicts."""
    if hasattr(value, "as_dict") and callable(value.as_dict):
        value = value.as_dict()
    if isinstance(value, Mapping):
        return {key: as_plain_dict(item) for key, item in value.items()}
    return value


def backbone_key(backbone: Any) -> Any:
    """A backbone spec in a comparable form: its class path and init args without `pretrained` (the weights come
    from the file), a module by its class."""
    if backbone is None:
        return None
    if isinstance(backbone, nn.Module):
        return f"{type(backbone).__module__}.{type(backbone).__qualname__}"
    plain = as_plain_dict(backbone)
    init_args = {k: v for k, v in (plain.get("init_args") or {}).items() if k != "pretrained"}
    return {"class_path": plain.get("class_path"), "init_args": init_args}


def _neck_key(neck: str | NeckSpec | Mapping) -> Any:
    if isinstance(neck, NeckSpec):
        return {"widths": list(neck.widths), "depth": neck.depth}
    return as_plain_dict(neck) if isinstance(neck, Mapping) else neck


def architecture_of(spec: DetectorSpec, backbone: nn.Module | None = None) -> Architecture:
    """The assembled rows of `spec`; `backbone` is the built module of a custom-backbone spec."""
    if spec.backbone is None:
        main, _ = zoo_parts(spec.model)
    else:
        if backbone is None:
            raise ValueError("a custom-backbone spec needs its built backbone module")
        main = gelan_neck_table(backbone, spec.neck)
    form = spec.auxiliary_form
    part = None if form is None else auxiliary_part(form, main, spec.aux_weight, spec.aux_widths)
    return Architecture.assemble(main, part)
