"""Detection data: COCO JSON / YOLO txt parsing, robust decoding, the official YOLOv9 augmentation, batching.

See docs/data.md. The batch dict contract is in docs/design.md.
"""
from .augment import AugmentationConfig
from .check import DataReport, check_data_main, check_dataset
from .collate import Batch, collate_detections, seed_worker
from .dataset import DetectionDataset
from .images import ImageDecodeError, decode_image
from .problems import DataError, DataProblem
from .records import DetectionSource, ImageRecord
from .sources import ground_truth_coco, load_source, read_source
from .synthetic import SHAPE_CLASSES, make_synthetic_coco

__all__ = [
    "AugmentationConfig", "Batch", "DataError", "DataProblem", "DataReport", "DetectionDataModule", "DetectionDataset",
    "DetectionSource", "ImageDecodeError", "ImageRecord", "SHAPE_CLASSES", "check_data_main", "check_dataset",
    "collate_detections", "decode_image", "ground_truth_coco", "load_source", "make_synthetic_coco", "read_source",
    "seed_worker",
]


def __getattr__(name: str):
    # The DataModule imports Lightning; load it only when asked for so pure-data users stay light.
    if name == "DetectionDataModule":
        from .datamodule import DetectionDataModule

        return DetectionDataModule
    raise AttributeError(name)
