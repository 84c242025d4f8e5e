"""The official training augmentation: the 4-image mosaic in one place (mosaic.py), the rest as pure functions (transforms.py)."""
