"""Pure-PyTorch GELAN / YOLOv9 models: blocks, heads, the ten zoo tables, custom backbones, the spec-based builder,
every weight-file kind (training checkpoints, our detector files, official weights), pretrained weights by name, and
layer freezing for fine-tuning."""
from pgi_detect.models.backbones import Backbone, NeckSpec, TimmBackbone
from pgi_detect.models.detector import Detector, inference_copy, list_models
from pgi_detect.models.detector_file import is_detector_file, load_detector, save_detector
from pgi_detect.models.errors import WeightsError
from pgi_detect.models.flops import count_gflops, count_parameters
from pgi_detect.models.freeze import backbone_rows, freeze_layers
from pgi_detect.models.hub import (
    PRETRAINED,
    WeightsDownloadError,
    list_pretrained,
    pretrained_path,
    resolve_weights,
    weights_home,
)
from pgi_detect.models.identify import ZooMatch, identify_zoo_model
from pgi_detect.models.official import convert_official, read_official_checkpoint, to_official_state_dict
from pgi_detect.models.spec import DetectorSpec, build_detector, build_model, spec_of
from pgi_detect.models.weights import (
    CHECKPOINT_RECORD,
    LoadedDetector,
    checkpoint_record,
    load_weights_into,
    read_weights,
)

__all__ = [
    "Backbone",
    "CHECKPOINT_RECORD",
    "Detector",
    "DetectorSpec",
    "LoadedDetector",
    "NeckSpec",
    "PRETRAINED",
    "TimmBackbone",
    "WeightsDownloadError",
    "WeightsError",
    "ZooMatch",
    "backbone_rows",
    "build_detector",
    "build_model",
    "checkpoint_record",
    "convert_official",
    "count_gflops",
    "count_parameters",
    "freeze_layers",
    "identify_zoo_model",
    "inference_copy",
    "is_detector_file",
    "list_models",
    "list_pretrained",
    "load_detector",
    "load_weights_into",
    "pretrained_path",
    "read_official_checkpoint",
    "read_weights",
    "resolve_weights",
    "save_detector",
    "spec_of",
    "to_official_state_dict",
    "weights_home",
]
