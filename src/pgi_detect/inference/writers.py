"""Output writers for prediction: a COCO-style results JSON, annotated images, annotated videos."""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from pgi_detect.inference.detections import Detections
from pgi_detect.inference.draw import save_rgb_image
from pgi_detect.inference.inputs import Frame


class CocoJsonWriter:
    """Collect detections and write one COCO results file: a list of
    `{image_id, file_name, category_id, category_name, bbox: [x, y, w, h], score}` (plus `frame` for video frames).

    The list is what pycocotools' `loadRes` and the COCO server accept (extra keys are ignored); `category_ids`
    maps contiguous class indices to dataset category ids (identity when None).
    """

    def __init__(self, path: str | Path, category_ids: Sequence[int] | None = None) -> None:
        self.path = Path(path)
        self.category_ids = list(category_ids) if category_ids is not None else None
        self.records: list[dict] = []

    def add(self, frame: Frame, detections: Detections) -> None:
        records = detections.to_coco(frame.image_id, self.category_ids, file_name=frame.file_name)
        if frame.frame_index is not None:
            for record in records:
                record["frame"] = frame.frame_index
        self.records.extend(records)

    def write(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.records))
        return self.path


class AnnotatedVideoWriter:
    """Write RGB frames of one video to an .mp4 (codec mp4v) at the source frame rate; opened on the first frame."""

    def __init__(self, path: str | Path, fps: float) -> None:
        self.path = Path(path)
        self.fps = fps
        self._writer: cv2.VideoWriter | None = None
        self.frames_written = 0

    def write(self, image: np.ndarray) -> None:
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            height, width = image.shape[:2]
            self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (width, height))
            if not self._writer.isOpened():
                raise OSError(f"{self.path}: OpenCV cannot open a video writer (mp4v)")
        self._writer.write(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        self.frames_written += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None


def save_annotated_image(image: np.ndarray, folder: Path, name: str, suffix: str = ".jpg") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name}{suffix}"
    save_rgb_image(image, str(target))
    return target
