"""Freezing layers for fine-tuning, with the official `train.py --freeze` semantics: an integer N freezes the first N
rows of the layer table (official `model.0` … `model.N-1`), a list freezes the rows it names, and `"backbone"` the
rows ahead of the neck.

"backbone" is read from the table: every row that is not an SPPELAN, not a head, and reads no SPPELAN output directly
or indirectly. That is the official yaml's `backbone:` section (gelan/yolov9-t/s/m/c rows 0-8, yolov9-m/c 0-9 with
the Silence, gelan-e/yolov9-e 0-28 with both CBNet backbones) plus, for yolov9-m/c, the auxiliary reversible
backbone (rows 23-37: CBLinear, its convs and CBFuse); the auxiliary FPNs of yolov9-t/s/e read an SPPELAN and stay
trainable. For a custom backbone it is the backbone row (0) and its output picks.

As in the reference, a frozen parameter only gets `requires_grad=False`: it stays in the optimizer's parameter
groups but receives no gradient, so SGD/AdamW neither move nor decay it, and BatchNorm layers of frozen rows keep
updating their running statistics in training mode.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Union

from pgi_detect.models.blocks import SPPELAN
from pgi_detect.models.detector import Detector
from pgi_detect.models.graph import IMAGE, is_head, resolve
from pgi_detect.settings import SettingError

FreezeSpec = Union[int, str, Sequence[Union[int, str]], None]
PARTS = ("backbone",)


def backbone_rows(detector: Detector) -> list[int]:
    """Rows of the feature extractor(s) ahead of the neck (see the module docstring)."""
    if not any(row.block is SPPELAN for row in detector.table):
        raise ValueError(f"{detector.name}: no SPPELAN row, so where the backbone ends is unknown; freeze a row "
                         "count instead")
    after_neck_start: set[int] = set()
    for index, row in enumerate(detector.table):
        sources = {resolve(source, index) for source in row.sources} - {IMAGE}
        if row.block is SPPELAN or is_head(row.block) or sources & after_neck_start:
            after_neck_start.add(index)
    return [index for index in range(len(detector.table)) if index not in after_neck_start]


def frozen_rows(detector: Detector, freeze: FreezeSpec) -> list[int]:
    """The row indices `freeze` names: N -> rows 0..N-1; a list -> those rows (and/or named parts); "backbone"."""
    rows = len(detector.table)
    if freeze is None:
        return []
    if isinstance(freeze, bool):
        raise SettingError(f"freeze must be a layer count, a list of layers or one of {PARTS}, not {freeze}")
    if isinstance(freeze, int):
        if not 0 <= freeze <= rows:
            raise SettingError(f"freeze {freeze}: {detector.name} has {rows} layers (0-{rows - 1})")
        return list(range(freeze))
    if isinstance(freeze, str):
        if freeze == "backbone":
            return backbone_rows(detector)
        raise SettingError(f"freeze {freeze!r}: unknown part; use a layer count, a list of layers or one of {PARTS}")
    selected: set[int] = set()
    for item in freeze:
        if isinstance(item, str):
            selected.update(frozen_rows(detector, item))
        elif isinstance(item, int) and not isinstance(item, bool) and 0 <= item < rows:
            selected.add(item)
        else:
            raise SettingError(f"freeze {list(freeze)}: {item!r} is not a layer of {detector.name} (0-{rows - 1}) "
                             f"or one of {PARTS}")
    return sorted(selected)


def freeze_layers(detector: Detector, freeze: FreezeSpec) -> str:
    """Set `requires_grad=False` on every parameter of the rows `freeze` names; returns a one-line report."""
    rows = frozen_rows(detector, freeze)
    tensors = values = 0
    for index in rows:
        for parameter in detector.layers[index].parameters():
            if parameter.requires_grad:
                parameter.requires_grad_(False)
                tensors += 1
                values += parameter.numel()
    trainable = sum(p.numel() for p in detector.parameters() if p.requires_grad)
    label = f" ({freeze})" if isinstance(freeze, str) else ""
    return (f"froze layers {format_rows(rows)}{label}: {tensors} tensors, {values:,} parameters; "
            f"{trainable:,} parameters stay trainable")


def format_rows(rows: Sequence[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> "0-2, 5, 7-8"."""
    spans: list[list[int]] = []
    for row in sorted(rows):
        if spans and row == spans[-1][1] + 1:
            spans[-1][1] = row
        else:
            spans.append([row, row])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans) or "none"
