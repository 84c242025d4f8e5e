"""Prediction and export: the `Predictor` Python API, image/folder/video sources, drawing, COCO-style JSON and
annotated outputs (`run_prediction`), and ONNX export."""
from pgi_detect.inference.detections import Detections
from pgi_detect.inference.draw import draw_detections
from pgi_detect.inference.export import export_onnx, run_onnx, verify_onnx
from pgi_detect.inference.predictor import Predictor
from pgi_detect.inference.runner import PredictionRun, run_prediction, write_task_predictions
from pgi_detect.inference.inputs import Frame, UnreadableInput, iter_frames
from pgi_detect.inference.writers import AnnotatedVideoWriter, CocoJsonWriter

__all__ = [
    "AnnotatedVideoWriter",
    "CocoJsonWriter",
    "Detections",
    "Frame",
    "PredictionRun",
    "Predictor",
    "UnreadableInput",
    "draw_detections",
    "export_onnx",
    "iter_frames",
    "run_onnx",
    "run_prediction",
    "verify_onnx",
    "write_task_predictions",
]
