"""Detection data: COCO JSON / YOLO txt parsing, robust decoding, the official YOLOv9 augmentation, batching.

See docs/data.md; the batch contract is `Batch` (collate.py).
"""
from pgi_detect.data.augment import AugmentationConfig
from pgi_detect.data.check import DataReport, check_data_main, check_dataset
from pgi_detect.data.collate import Batch, collate_detections, seed_worker
from pgi_detect.data.dataset import DetectionDataset
from pgi_detect.data.images import ImageDecodeError, decode_image
from pgi_detect.data.problems import DataError, DataProblem
from pgi_detect.data.ground_truth import ground_truth_coco, ground_truth_dict
from pgi_detect.data.loading import detect_format, load_source, read_source
from pgi_detect.data.records import DetectionSource, ImageRecord
from pgi_detect.data.synthetic import SHAPE_CLASSES, make_synthetic_coco

__all__ = [
    "AugmentationConfig", "Batch", "DataError", "DataProblem", "DataReport", "DetectionDataModule", "DetectionDataset",
    "DetectionSource", "ImageDecodeError", "ImageRecord", "SHAPE_CLASSES", "check_data_main", "check_dataset",
    "collate_detections", "decode_image", "detect_format", "ground_truth_coco", "ground_truth_dict", "load_source",
    "make_synthetic_coco", "read_source", "seed_worker",
]


def __getattr__(name: str):
    if name == "DetectionDataModule":
        # Imported on use: the DataModule imports Lightning (~2 s), which pure-data and inference users do not pay.
        from pgi_detect.data.datamodule import DetectionDataModule

        return DetectionDataModule
    raise AttributeError(name)
