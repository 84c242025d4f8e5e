"""Output writers for prediction: a COCO-style results JSON, annotated images, annotated videos."""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np

from pgi_detect.inference.detections import Detections
from pgi_detect.inference.draw import save_rgb_image
from pgi_detect.inference.inputs import Frame


class CocoJsonWriter:
    """Write one COCO results file as detections come: a list of `{image_id, file_name, category_id, class_index,
    category_name, bbox: [x, y, w, h], score}` (plus `frame` for video frames).

    The file is a valid JSON list from the moment the writer is created: each `add` writes its records before the
    closing bracket and flushes, so a run that stops (an exception, Ctrl-C) leaves every result so far readable.
    The list is what pycocotools' `loadRes` and the COCO server accept (extra keys are ignored); `category_ids`
    maps class indices to dataset category ids (default: the table the `Detections` carry, else the class index).
    """

    def __init__(self, path: str | Path, category_ids: Sequence[int] | None = None) -> None:
        self.path = Path(path)
        self.category_ids = list(category_ids) if category_ids is not None else None
        self.count = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: BinaryIO | None = open(self.path, "wb")
        self._file.write(b"[\n]\n")
        self._file.flush()

    def add(self, frame: Frame, detections: Detections) -> None:
        self.add_detections(detections, frame.image_id, frame.file_name, frame.frame_index)

    def add_detections(self, detections: Detections, image_id: int, file_name: str,
                       frame_index: int | None = None) -> None:
        """The records of one image's detections (`add` without a decoded Frame)."""
        records = detections.to_coco(image_id, self.category_ids, file_name=file_name)
        if frame_index is not None:
            for record in records:
                record["frame"] = frame_index
        self.add_records(records)

    def add_records(self, records: Sequence[dict]) -> None:
        if not records:
            return
        if self._file is None:
            raise ValueError(f"{self.path}: the writer is closed")
        self._file.seek(-3, os.SEEK_END)  # over the closing "\n]\n"
        text = ",\n".join(json.dumps(record) for record in records)
        self._file.write((("\n" if self.count == 0 else ",\n") + text + "\n]\n").encode())
        self._file.flush()
        self.count += len(records)

    def write(self) -> Path:
        """Close the file (it is complete already) and return its path."""
        if self._file is not None:
            self._file.close()
            self._file = None
        return self.path

    close = write


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
    """Write `folder/<name><suffix>`; `name` may hold subfolders (`b/x.jpg`)."""
    target = folder / f"{name}{suffix}"
    target.parent.mkdir(parents=True, exist_ok=True)
    save_rgb_image(image, str(target))
    return target
