"""Load a detector for inference from either file kind we produce: a `DetectionTask` Lightning checkpoint or an
official checkpoint converted by `scripts/convert_official.py`. Prediction and export share this one loader."""
from __future__ import annotations

import copy
import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

STATE_PREFIX = "detector."


@dataclass
class LoadedModel:
    detector: nn.Module
    class_names: list[str] | None
    category_ids: list[int] | None
    model_name: str | None


def is_lightning_checkpoint(payload: Any) -> bool:
    return isinstance(payload, dict) and "state_dict" in payload and "hyper_parameters" in payload


def build_from_hparams(hparams: dict) -> nn.Module:
    """Rebuild the (untrained) detector a DetectionTask built from its saved hyperparameters: a zoo name, or a
    custom backbone (`backbone` as an nn.Module or a LightningCLI `{class_path, init_args}` dict, plus `neck`).
    `cls_width` (class-branch width override) is absent from older checkpoints: None, the official formula."""
    from pgi_detect.models import Detector, build_model

    num_classes = int(hparams.get("num_classes", 80))
    cls_width = hparams.get("cls_width")
    cls_width = None if cls_width is None else int(cls_width)
    backbone = hparams.get("backbone")
    if backbone is None:
        return build_model(hparams["model"], num_classes=num_classes, cls_width=cls_width)
    if isinstance(backbone, Mapping):
        backbone = instantiate_spec(backbone)
    else:
        backbone = copy.deepcopy(backbone)
    return Detector.from_backbone(backbone, num_classes, neck=hparams.get("neck", "gelan-s"),
                                  name=str(hparams.get("model") or "custom"), cls_width=cls_width)


def instantiate_spec(spec: Mapping) -> nn.Module:
    """`{class_path, init_args}` -> object. Pretrained downloads are switched off: the checkpoint holds the weights."""
    module_name, _, class_name = spec["class_path"].rpartition(".")
    init_args = dict(spec.get("init_args") or {})
    if "pretrained" in init_args:
        init_args["pretrained"] = False
    return getattr(importlib.import_module(module_name), class_name)(**init_args)


def detector_state(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The detector's weights from a LightningModule state dict (keys `detector.*`; loss buffers etc. dropped)."""
    return {k[len(STATE_PREFIX):]: v for k, v in state_dict.items() if k.startswith(STATE_PREFIX)}


def load_lightning_checkpoint(payload: dict) -> LoadedModel:
    hparams = dict(payload["hyper_parameters"])
    detector = build_from_hparams(hparams)
    detector.load_state_dict(detector_state(payload["state_dict"]), strict=True)
    return LoadedModel(
        detector=detector,
        class_names=_optional_list(hparams.get("class_names")),
        category_ids=_optional_list(hparams.get("category_ids")),
        model_name=str(hparams.get("model")),
    )


def load_for_inference(path: str | Path) -> LoadedModel:
    """A trained detector (still unstripped and unfused) and its class names from a checkpoint file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    payload = torch.load(path, map_location="cpu", weights_only=False)
    if is_lightning_checkpoint(payload):
        return load_lightning_checkpoint(payload)
    from pgi_detect.models.convert import detector_from_converted

    # Converted files carry no class names: the Predictor falls back to class indices.
    detector = detector_from_converted(payload, source=str(path)).eval()
    return LoadedModel(detector=detector, class_names=None, category_ids=None, model_name=None)


def inference_copy(detector: nn.Module) -> nn.Module:
    """The deployable form of any model, never modifying `detector`: `Detector.inference_copy()` (auxiliary branch
    removed, BN folded, RepConvN merged) for our detectors, an eval-mode deep copy for other modules."""
    if hasattr(detector, "inference_copy"):
        return detector.inference_copy()
    return copy.deepcopy(detector).eval()


def _optional_list(value: Any) -> list | None:
    if value is None:
        return None
    if isinstance(value, dict):  # {index: name}, the official / ultralytics style
        return [value[k] for k in sorted(value)]
    return list(value)
