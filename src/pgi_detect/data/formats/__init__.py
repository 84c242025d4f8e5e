"""Dataset formats: COCO JSON, YOLO txt, data.yaml, format detection with the bad-input policy, the COCO ground truth."""
