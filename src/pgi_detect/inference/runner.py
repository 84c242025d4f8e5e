"""`run_prediction`: predict a whole source and write every output (JSON, annotated images, annotated videos) as it
goes. `detect` calls this; the Python API user can call it too. `write_task_predictions` writes `predict` results.

Outputs are written frame by frame (predictions.json stays a valid JSON list throughout), so a run that stops
early keeps everything done so far; unreadable inputs are skipped with one line each.
"""
from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np
from tqdm import tqdm

from pgi_detect.data.images.decode import IMAGE_SUFFIXES, ImageDecodeError, decode_image
from pgi_detect.inference.detections import Detections
from pgi_detect.inference.inputs import Frame, Source, count_frames, expand_source
from pgi_detect.inference.predictor import Predictor
from pgi_detect.inference.writers import AnnotatedVideoWriter, CocoJsonWriter, save_annotated_image

logger = logging.getLogger("pgi_detect.inference")


@dataclass
class PredictionRun:
    """What `run_prediction` wrote."""

    output_dir: Path
    json_path: Path | None = None
    images: list[Path] = field(default_factory=list)
    videos: list[Path] = field(default_factory=list)
    frames: int = 0
    detections: int = 0
    skipped: list[str] = field(default_factory=list)  # one "<file>: <reason>" per unreadable input


class PredictionOutputs:
    """Writes predicted frames as they come: COCO-style JSON records, annotated images, annotated videos (one .mp4
    per input video, at its own frame rate). `close()` finishes the files and returns what was written."""

    def __init__(self, output_dir: str | Path, *, save_json: bool = True, save_images: bool = True,
                 save_videos: bool = True, category_ids: Sequence[int] | None = None,
                 json_name: str = "predictions.json", image_suffix: str = ".jpg") -> None:
        self.run = PredictionRun(output_dir=Path(output_dir))
        self.run.output_dir.mkdir(parents=True, exist_ok=True)
        self.json_writer = CocoJsonWriter(self.run.output_dir / json_name, category_ids) if save_json else None
        self.save_images, self.save_videos, self.image_suffix = save_images, save_videos, image_suffix
        self.video_writer: AnnotatedVideoWriter | None = None

    def add(self, frame: Frame, detections: Detections) -> None:
        self.record(detections, frame.image_id, frame.file_name, frame.frame_index)
        if frame.video is None and self.save_images:
            self.save_image(detections.draw(frame.image), frame.relative or frame.name)
        elif frame.video is not None and self.save_videos:
            self._video_for(frame).write(detections.draw(frame.image))

    def record(self, detections: Detections, image_id: int, file_name: str, frame_index: int | None = None) -> None:
        """Count one image's detections and write their JSON records (no pixels needed)."""
        self.run.frames += 1
        self.run.detections += len(detections)
        if self.json_writer is not None:
            self.json_writer.add_detections(detections, image_id, file_name, frame_index)

    def save_image(self, drawn: np.ndarray, name: str) -> None:
        """Write an annotated still image as images/<name>: the input's path below the source root, in the input's
        own format (unique, so `photo.tiff` and `photo.webp` both stay); a name without an image suffix (an
        in-memory image) gets `image_suffix`."""
        if Path(name).suffix.lower() in IMAGE_SUFFIXES:
            target, suffix = name, ""
        else:
            target, suffix = name, self.image_suffix
        self.run.images.append(save_annotated_image(drawn, self.run.output_dir / "images", target, suffix))

    def _video_for(self, frame: Frame) -> AnnotatedVideoWriter:
        relative = frame.relative or frame.video.name
        name = relative if relative.lower().endswith(".mp4") else f"{relative}.mp4"  # clip.avi -> clip.avi.mp4
        target = self.run.output_dir / "videos" / name
        if self.video_writer is None or self.video_writer.path != target:
            if self.video_writer is not None:
                self.video_writer.close()
            self.video_writer = AnnotatedVideoWriter(target, frame.fps or 25.0)
            self.run.videos.append(target)
        return self.video_writer

    def close(self) -> PredictionRun:
        if self.video_writer is not None:
            self.video_writer.close()
            self.video_writer = None
        if self.json_writer is not None:
            self.run.json_path = self.json_writer.write()
        return self.run


class Progress:
    """Progress of a prediction run: a tqdm bar on `stream` (default stdout) when it is a terminal, otherwise a line
    on it every `every` images
    (done/total when the total is known, images/s), so batch-job logs show it too. `note` prints a line without
    breaking the bar."""

    def __init__(self, total: int | None, enabled: bool = True, every: int = 100, stream: TextIO | None = None,
                 label: str = "detect") -> None:
        self.total, self.every, self.label, self.done = total, max(1, int(every)), label, 0
        self.stream = stream or sys.stdout
        self.enabled = enabled
        self.bar = (tqdm(total=total, unit="img", desc=label, dynamic_ncols=True, file=self.stream)
                    if enabled and self.stream.isatty() else None)  # drawn on the stream that was checked
        self.start = time.perf_counter()

    def update(self, count: int) -> None:
        if not self.enabled:
            return
        before, self.done = self.done, self.done + count
        if self.bar is not None:
            self.bar.update(count)
        elif self.done // self.every > before // self.every:
            rate = self.done / max(time.perf_counter() - self.start, 1e-9)
            of_total = f"/{self.total}" if self.total is not None else ""
            print(f"{self.label}: {self.done}{of_total} images ({rate:.1f} images/s)", file=self.stream, flush=True)

    def note(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_prediction(
    predictor: Predictor,
    source: Source,
    output_dir: str | Path,
    *,
    save_json: bool = True,
    save_images: bool = True,
    save_videos: bool = True,
    category_ids: Sequence[int] | None = None,
    json_name: str = "predictions.json",
    image_suffix: str = ".jpg",
    progress: bool = False,
    progress_every: int = 100,
    on_skip: Callable[[str], None] | None = None,
) -> PredictionRun:
    """Predict every image / video frame of `source` and write to `output_dir` as it goes:

    * `predictions.json`: COCO results (image_id, file_name, category_id = dataset category id where the
      checkpoint knows it, class_index, category_name, bbox xywh, score);
    * `images/<path>`: still images with boxes and labels drawn, named by their path below the source root (the
      folder given, or the folder holding every input) in their own format, so no two inputs share an output;
    * `videos/<path>.mp4` (`clip.mp4` stays `clip.mp4`): each input video re-encoded with boxes drawn, at its own
      frame rate.

    Unreadable images / videos are skipped: each is listed in `PredictionRun.skipped` and reported by `on_skip`
    (default: a logged warning). `progress` shows a bar on a terminal, else a line every `progress_every` images.
    `category_ids` overrides the predictor's class index -> category id table.
    """
    source = expand_source(source)  # once, for counting and reading; a bad source fails before any file is created
    total = count_frames(source) if progress else None
    outputs = PredictionOutputs(output_dir, save_json=save_json, save_images=save_images, save_videos=save_videos,
                                category_ids=category_ids, json_name=json_name, image_suffix=image_suffix)
    report = Progress(total, enabled=progress, every=progress_every)
    tell = on_skip or (report.note if progress else logger.warning)

    def skip(path: Path, error: Exception) -> None:
        reason = str(error).removeprefix(f"{path}: ")
        outputs.run.skipped.append(f"{path}: {reason}")
        tell(f"skipped {path}: {reason}")

    try:
        for frame, detections in predictor.stream(source, on_error=skip):
            outputs.add(frame, detections)
            report.update(1)
    finally:
        report.close()
        run = outputs.close()
    return run


def write_task_predictions(
    predictions: Sequence[dict],
    output_dir: str | Path,
    *,
    category_ids: Sequence[int] | None = None,
    save_images: bool = True,
    max_images: int | None = None,
    json_name: str = "predictions.json",
) -> PredictionRun:
    """Write `DetectionTask.predict_step` results (dicts with image_id, path and `Detections`) in the same formats
    as `run_prediction`, so `pgi-detect predict` and the Python API produce identical files. `category_ids` maps
    class indices to the dataset's category ids (the task's table)."""
    outputs = PredictionOutputs(output_dir, save_videos=False, category_ids=category_ids, json_name=json_name)
    try:
        for index, item in enumerate(predictions):
            path = Path(item["path"])
            detections = item["detections"]
            outputs.record(detections, int(item["image_id"]), path.name)
            if save_images and (max_images is None or index < max_images):  # decoded only to be drawn
                try:
                    image = decode_image(path)
                except ImageDecodeError as exc:  # predicted from this file a moment ago; report, keep going
                    outputs.run.skipped.append(str(exc))
                    logger.warning("not drawing %s", exc)
                    continue
                outputs.save_image(detections.draw(image), path.stem)
    finally:
        run = outputs.close()
    return run
