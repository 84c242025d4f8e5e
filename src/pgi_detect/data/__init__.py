"""Detection data: COCO JSON / YOLO txt parsing, robust decoding, the official YOLOv9 augmentation, batching.

See docs/data.md; the batch contract is `Batch` (collate.py).
"""
from pgi_detect.lazy_exports import lazy_exports

# Public name -> the module that defines it, imported on first use: the DataModule pulls in Lightning, the
# augmentation albumentations, the ground truth torchmetrics, which users of the light parts do not pay for.
_EXPORTS = {
    "AugmentationConfig": "pgi_detect.data.augment.transforms",
    "DataReport": "pgi_detect.data.check",
    "check_dataset": "pgi_detect.data.check",
    "Batch": "pgi_detect.data.pipeline.collate",
    "collate_detections": "pgi_detect.data.pipeline.collate",
    "seed_worker": "pgi_detect.data.pipeline.collate",
    "DetectionDataset": "pgi_detect.data.pipeline.dataset",
    "ImageDecodeError": "pgi_detect.data.images.decode",
    "decode_image": "pgi_detect.data.images.decode",
    "DataError": "pgi_detect.data.problems",
    "DataProblem": "pgi_detect.data.problems",
    "ground_truth_coco": "pgi_detect.data.formats.ground_truth",
    "ground_truth_dict": "pgi_detect.data.formats.ground_truth",
    "detect_format": "pgi_detect.data.formats.sources",
    "load_source": "pgi_detect.data.formats.sources",
    "read_source": "pgi_detect.data.formats.sources",
    "DetectionSource": "pgi_detect.data.records",
    "ImageRecord": "pgi_detect.data.records",
    "SHAPE_CLASSES": "pgi_detect.data.synthetic",
    "make_synthetic_coco": "pgi_detect.data.synthetic",
    "DetectionDataModule": "pgi_detect.data.pipeline.datamodule",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
