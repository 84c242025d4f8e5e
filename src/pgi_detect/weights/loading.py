"""Which weight file is this, and what does it hold: the entry point for every file kind a user may pass.

Kinds, each with one home:
* training checkpoints (Lightning `.ckpt` of `DetectionTask`): a record under `CHECKPOINT_RECORD` (written by the task
  through `checkpoint_record`) gives the spec, class table and state-dict prefix; read here;
* our detector files (`detector_file.py`, written by `save_detector` / scripts/convert_official.py);
* official YOLOv9 files and plain state dicts (`official.py`: restricted unpickling, key translation; `identify.py`
  tells which zoo model they are from their tensors).

Wherever a file is accepted, so is a pretrained name (`hub.py`: gelan-c, yolov9-c, yolov9-c-converted, ...), which
stands for its converted file in the cache. `read_weights` rebuilds a detector from a file alone (inference, export);
`load_weights_into` initialises an already built detector from any kind (fine-tuning), strictly unless partial
loading is asked for. Files are never unpickled with code execution unless they are our training checkpoints whose
record pickles a custom backbone module.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pgi_detect.text import class_count
from pgi_detect.models import Detector, DetectorSpec, build_detector, build_model
from pgi_detect.weights.checkpoint_record import prefixed_state, read_checkpoint_record
from pgi_detect.weights.detector_file import detector_from_file, file_spec, is_detector_file
from pgi_detect.weights.state_fit import StateFit, WeightsError, branch_hint, shapes
from pgi_detect.weights.hub import resolve_weights
from pgi_detect.weights.identify import identify_zoo_model, is_official_state
from pgi_detect.weights.official import (
    CLASS_BRANCH_KEYS,
    PickleStub,
    convert_official,
    load_untrusted,
    official_class_names,
    official_key_map,
    official_weights,
)

@dataclass
class LoadedDetector:
    """A detector rebuilt from a file (trained weights, unstripped, unfused) and the class table the file carries."""

    detector: Detector
    class_names: list[str] | None
    category_ids: list[int] | None
    spec: DetectorSpec
    kind: str  # "checkpoint", "detector file", "official" or "state dict"


def read_weights(path: str | Path) -> LoadedDetector:
    """Rebuild the detector stored in a training checkpoint, a detector file, an official file or a zoo model's
    state dict (the zoo model read from its tensors), or named by a pretrained name."""
    path = resolve_weights(path)
    payload = _read_payload(path)
    if is_detector_file(payload):
        detector = detector_from_file(payload, source=str(path))
        return LoadedDetector(detector, _optional_list(payload.get("class_names")),
                              _optional_list(payload.get("category_ids")), file_spec(payload), "detector file")
    state, _ = _file_state(payload, path)
    record = read_checkpoint_record(payload)
    if record is not None:
        spec = DetectorSpec.from_dict(record["spec"])
        detector = build_detector(spec)
        detector.load_state_dict(state, strict=True)
        return LoadedDetector(detector, record["class_names"], record["category_ids"], spec, "checkpoint")
    return _rebuild_zoo_model(state, official_class_names(payload), path)


def load_weights_into(detector: Detector, path: str | Path, partial: bool = False) -> str:
    """Copy the weights of any supported file (or pretrained name) into `detector` (in place) and return a one-line
    report.

    Every tensor must fit, except the class branch, which is re-initialised when its shape differs (another class
    count or class width: fine-tuning). Anything else missing, unexpected or mis-shaped raises `WeightsError` naming
    the keys, unless `partial` is set: then whatever fits is loaded and the rest is reported."""
    named = str(path)
    path = resolve_weights(path)
    source = str(path) if named == str(path) else f"{named} ({path})"
    state = _state_in_our_keys(detector, path)
    own = detector.state_dict()
    fit = StateFit.compare(shapes(own), shapes(state), lambda k: any(re.search(p, k) for p in CLASS_BRANCH_KEYS))
    problems = fit.describe()
    if problems and not partial:
        raise WeightsError(f"{source}: weights do not fit model {detector.name!r} (nc={detector.num_classes}); load "
                           f"with partial=True (DetectionTask: partial_weights) to take only what fits:{problems}"
                           f"{_hint(detector, state)}")
    fitting = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    with torch.no_grad():
        for key, tensor in fitting.items():
            own[key].copy_(tensor.to(own[key].dtype))
    report = f"loaded {len(fitting)}/{len(own)} tensors from {source}"
    if fit.may_differ:
        report += f"; class branch re-initialised for {class_count(detector.num_classes)} ({len(fit.may_differ)} tensors)"
    if problems:
        report += f"; partial load, skipped:{problems}"
    return report


# ---------------------------------------------------------------------------------------------------------- internals


def _read_payload(path: Path) -> Any:
    """The loaded file, read once with `weights_only=True` or the restricted unpickler. Only a training checkpoint
    whose record holds pickled objects (a custom backbone module given from Python is pickled whole) is read a
    second time with full unpickling: its record cannot be rebuilt from the inert stubs."""
    payload = load_untrusted(path)
    record = read_checkpoint_record(payload)
    if record is not None and _holds_stubs(record):
        return torch.load(path, map_location="cpu", weights_only=False)
    return payload


def _holds_stubs(value: Any) -> bool:
    """Whether the restricted unpickler left a stub anywhere in `value` (nested mappings and sequences included)."""
    if isinstance(value, PickleStub):
        return True
    if isinstance(value, Mapping):
        return any(_holds_stubs(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_holds_stubs(v) for v in value)
    return False


def _file_state(payload: Any, path: Path) -> tuple[dict[str, Tensor], bool]:
    """The detector weights a loaded file holds, and whether they are under official key names (`model.<idx>.…`):
    a training checkpoint's (under its record's prefix), a detector file's, or an official file's or plain state
    dict's (a DDP `module.` or Lightning `detector.` prefix removed)."""
    record = read_checkpoint_record(payload)
    if record is not None:
        return prefixed_state(payload["state_dict"], record["state_prefix"]), False
    if is_detector_file(payload):
        return dict(payload["state_dict"]), False
    state = official_weights(payload, source=str(path)).state
    if any(k.startswith("detector.") for k in state):
        state = prefixed_state(state, "detector.")
    return state, is_official_state(state)


def _state_in_our_keys(detector: Detector, path: Path) -> dict[str, Tensor]:
    """The file's detector weights, keyed like `detector.state_dict()` (official keys translated). Read without
    unpickling any code: only tensors are needed."""
    state, official_keys = _file_state(load_untrusted(path), path)
    if not official_keys:
        return state
    ours_by_official = {theirs: ours for ours, theirs in official_key_map(detector).items()}
    return {ours_by_official.get(k, k): v for k, v in state.items()}


def _rebuild_zoo_model(state: dict[str, Tensor], class_names: list[str] | None, path: Path) -> LoadedDetector:
    """An official file or a plain state dict: which zoo model it is comes from its tensors alone."""
    match = identify_zoo_model(state, source=str(path))
    if match.official_keys:
        detector = convert_official(state, match.model, source=str(path))
    else:
        detector = build_model(match.model, match.num_classes)
        detector.load_state_dict(state, strict=True)
    return LoadedDetector(detector, class_names, None, detector.spec,
                          "official" if match.official_keys else "state dict")


def _hint(detector: Detector, state: Mapping[str, Tensor]) -> str:
    """Which zoo model the file holds, when it is one, and the dual/single-branch hint."""
    try:
        match = identify_zoo_model(state)
        held = f"\n  the file holds {match.model} weights ({class_count(match.num_classes)})"
    except WeightsError:
        held = ""
    return held + branch_hint(detector.num_branches, any(".main." in k or ".aux." in k for k in state))


def _optional_list(value: Any) -> list | None:
    if value is None:
        return None
    if isinstance(value, Mapping):  # {index: name}, the official / ultralytics style
        return [value[k] for k in sorted(value)]
    return list(value)
