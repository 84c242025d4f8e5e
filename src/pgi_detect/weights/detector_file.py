"""Our own weight file (`save_detector` / `load_detector`): a detector's spec, optional class table and state dict,
loadable with `torch.load(weights_only=True)`. scripts/convert_official.py writes it."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from pgi_detect.models import Detector, DetectorSpec, build_detector
from pgi_detect.weights.state_fit import WeightsError

FILE_FORMAT = "pgi_detect.detector/2"
LEGACY_FORMATS = ("pgi_detect.converted/1",)  # files of version 0.1: no spec, zoo models only


def save_detector(detector: Detector, path: str | Path, class_names: Sequence[str] | None = None,
                  category_ids: Sequence[int] | None = None) -> None:
    """Write the unfused weights, the spec that rebuilds the architecture, and optionally the class table."""
    if detector.fused:
        raise ValueError("save the unfused model; fuse() after load_detector instead")
    spec = detector.spec
    if spec.backbone is not None and not isinstance(spec.backbone, Mapping):
        raise ValueError("this detector's backbone is a module object; build it from a DetectorSpec with a "
                         "{class_path, init_args} backbone (build_detector) to save it in a portable file")
    torch.save({
        "format": FILE_FORMAT,
        "spec": spec.to_dict(),
        "class_names": None if class_names is None else list(class_names),
        "category_ids": None if category_ids is None else [int(i) for i in category_ids],
        "state_dict": detector.state_dict(),
    }, path)


def is_detector_file(payload: Any) -> bool:
    return isinstance(payload, Mapping) and payload.get("format") in (FILE_FORMAT, *LEGACY_FORMATS)


def file_spec(payload: Mapping[str, Any]) -> DetectorSpec:
    """The spec of a (loaded) detector file, including version-0.1 files that stored only name and class count."""
    if payload.get("format") == FILE_FORMAT:
        return DetectorSpec.from_dict(payload["spec"])
    cls_width = payload.get("cls_width")
    return DetectorSpec(payload["model"], int(payload["num_classes"]), None if cls_width is None else int(cls_width))


def detector_from_file(payload: Mapping[str, Any], source: str = "detector file") -> Detector:
    """Rebuild the Detector of an already loaded detector file."""
    if not is_detector_file(payload):
        raise WeightsError(f"{source}: not a pgi_detect detector file")
    detector = build_detector(file_spec(payload))
    detector.load_state_dict(payload["state_dict"])
    return detector


def load_detector(path: str | Path) -> Detector:
    """A Detector (eval mode) from a file written by `save_detector` / scripts/convert_official.py."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found")
    return detector_from_file(torch.load(path, map_location="cpu", weights_only=True), source=str(path)).eval()
