"""The record every `DetectionTask` checkpoint carries under `CHECKPOINT_RECORD`: the detector spec, the class table
and the state-dict prefix, so that loaders rebuild the detector from the file alone."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from pgi_detect.models import DetectorSpec

CHECKPOINT_RECORD = "pgi_detect"


def checkpoint_record(spec: DetectorSpec, state_prefix: str, class_names: Sequence[str] | None,
                      category_ids: Sequence[int] | None) -> dict[str, Any]:
    """What a training checkpoint stores under `CHECKPOINT_RECORD` so that loaders need nothing else."""
    return {
        "spec": spec.to_dict(),
        "state_prefix": state_prefix,
        "class_names": None if class_names is None else [str(n) for n in class_names],
        "category_ids": None if category_ids is None else [int(i) for i in category_ids],
    }


def read_checkpoint_record(payload: Any) -> dict[str, Any] | None:
    """The record of a training checkpoint; for checkpoints of version 0.1 (no record) one is derived from the
    DetectionTask hyperparameters they stored."""
    if not isinstance(payload, Mapping) or "state_dict" not in payload:
        return None
    if CHECKPOINT_RECORD in payload:
        return payload[CHECKPOINT_RECORD]
    hparams = payload.get("hyper_parameters")
    if not isinstance(hparams, Mapping) or "model" not in hparams:
        return None
    spec = DetectorSpec(str(hparams["model"]), int(hparams.get("num_classes", 80)), hparams.get("cls_width"),
                        hparams.get("backbone"), hparams.get("neck", "gelan-s"))
    return checkpoint_record(spec, "detector.", hparams.get("class_names"), hparams.get("category_ids"))


def prefixed_state(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries under `prefix`, without it (a LightningModule's state dict holds more than the detector)."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
