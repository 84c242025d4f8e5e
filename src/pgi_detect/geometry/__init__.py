"""Geometry shared by every layer above it (models, loss, data, inference, training): boxes, the anchor grid, the
letterbox, NMS and the decode -> NMS -> source-pixels post-processing. Pure torch/numpy/OpenCV; imports nothing
else from pgi_detect."""
from pgi_detect.geometry.anchors import anchor_grid, map_shapes
from pgi_detect.geometry.boxes import bbox2dist, ciou, dist2bbox
from pgi_detect.geometry.letterbox import PAD_VALUE, Letterbox, stack_letterboxes, to_source_pixels
from pgi_detect.geometry.nms import NMS_DETECT, NMS_EVAL, NMSSettings, non_max_suppression
from pgi_detect.geometry.postprocess import postprocess

__all__ = [
    "NMS_DETECT",
    "NMS_EVAL",
    "NMSSettings",
    "PAD_VALUE",
    "Letterbox",
    "anchor_grid",
    "bbox2dist",
    "ciou",
    "dist2bbox",
    "map_shapes",
    "non_max_suppression",
    "postprocess",
    "stack_letterboxes",
    "to_source_pixels",
]
