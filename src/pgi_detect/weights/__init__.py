"""Weight files, one module per kind, beside the architecture (`pgi_detect.models`): training-checkpoint records,
our detector files, official YOLOv9 files and their conversion, which zoo model a file holds, and pretrained weights
by name (download and cache). `read_weights` / `load_weights_into` accept any of them."""
from pgi_detect.weights.checkpoint_record import CHECKPOINT_RECORD, checkpoint_record
from pgi_detect.weights.detector_file import is_detector_file, load_detector, save_detector
from pgi_detect.weights.state_fit import WeightsError
from pgi_detect.weights.hub import (
    PRETRAINED,
    WeightsDownloadError,
    list_pretrained,
    pretrained_path,
    resolve_weights,
    weights_home,
)
from pgi_detect.weights.identify import ZooMatch, identify_zoo_model
from pgi_detect.weights.loading import LoadedDetector, load_weights_into, read_weights
from pgi_detect.weights.official import (
    convert_official,
    load_official_state_dict,
    read_official_checkpoint,
    to_official_state_dict,
)

__all__ = [
    "CHECKPOINT_RECORD",
    "LoadedDetector",
    "PRETRAINED",
    "WeightsDownloadError",
    "WeightsError",
    "ZooMatch",
    "checkpoint_record",
    "convert_official",
    "identify_zoo_model",
    "is_detector_file",
    "list_pretrained",
    "load_detector",
    "load_official_state_dict",
    "load_weights_into",
    "pretrained_path",
    "read_official_checkpoint",
    "read_weights",
    "resolve_weights",
    "save_detector",
    "to_official_state_dict",
    "weights_home",
]
