"""Pure-PyTorch GELAN / YOLOv9 models: blocks, heads, the ten zoo tables, custom backbones, weight import."""
from pgi_detect.models.backbones import Backbone, NeckSpec, TimmBackbone
from pgi_detect.models.convert import (
    ConversionError,
    convert_official,
    is_converted_file,
    detector_from_converted,
    load_detector,
    read_official_checkpoint,
    save_detector,
)
from pgi_detect.models.detector import Detector, build_model, list_models
from pgi_detect.models.flops import count_gflops, count_parameters

__all__ = [
    "Backbone",
    "ConversionError",
    "Detector",
    "NeckSpec",
    "TimmBackbone",
    "build_model",
    "convert_official",
    "count_gflops",
    "count_parameters",
    "detector_from_converted",
    "is_converted_file",
    "list_models",
    "load_detector",
    "read_official_checkpoint",
    "save_detector",
]
