"""Pure-PyTorch GELAN / YOLOv9 architecture: blocks, heads, the zoo tables, the PGI auxiliary branch as a part any
detector can carry, custom backbones, the spec and the one builder, layer freezing and FLOPs. Weight files of every
kind live in `pgi_detect.weights`."""
from pgi_detect.models.auxiliary import (
    AUX_WEIGHT,
    AUXILIARY_FORMS,
    Architecture,
    AuxiliaryForm,
    AuxiliaryPart,
    auxiliary_part,
)
from pgi_detect.models.backbones import Backbone, NeckSpec, TimmBackbone
from pgi_detect.models.build import build_detector, build_model, instantiate_backbone, list_models
from pgi_detect.models.zoo_tables import ZOO_MODELS, inference_name
from pgi_detect.models.detector import Detector, inference_copy
from pgi_detect.models.flops import count_gflops, count_parameters
from pgi_detect.models.freeze import backbone_rows, freeze_layers
from pgi_detect.models.graph import Layer, MainTable
from pgi_detect.models.spec import ARCHITECTURE_FIELDS, DetectorSpec, architecture_of

__all__ = [
    "ARCHITECTURE_FIELDS",
    "AUXILIARY_FORMS",
    "AUX_WEIGHT",
    "AuxiliaryForm",
    "Architecture",
    "AuxiliaryPart",
    "Backbone",
    "Detector",
    "DetectorSpec",
    "Layer",
    "MainTable",
    "NeckSpec",
    "TimmBackbone",
    "ZOO_MODELS",
    "architecture_of",
    "auxiliary_part",
    "backbone_rows",
    "build_detector",
    "build_model",
    "count_gflops",
    "count_parameters",
    "freeze_layers",
    "inference_copy",
    "inference_name",
    "instantiate_backbone",
    "list_models",
]
