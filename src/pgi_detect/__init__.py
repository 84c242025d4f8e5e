"""pgi_detect: YOLOv9 (GELAN backbone + PGI auxiliary branch) detectors trained with PyTorch Lightning."""

__version__ = "0.1.0"
