"""`run_prediction`: predict a whole source and write every output (JSON, annotated images, annotated videos).
The CLI's `predict` and scripts call this; the Python API user can call it too."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pgi_detect.data.images import decode_image
from pgi_detect.inference.detections import Detections
from pgi_detect.inference.inputs import Frame, Source
from pgi_detect.inference.predictor import Predictor
from pgi_detect.inference.writers import AnnotatedVideoWriter, CocoJsonWriter, save_annotated_image


@dataclass
class PredictionRun:
    """What `run_prediction` wrote."""

    output_dir: Path
    json_path: Path | None = None
    images: list[Path] = field(default_factory=list)
    videos: list[Path] = field(default_factory=list)
    frames: int = 0
    detections: int = 0


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
        self.run.frames += 1
        self.run.detections += len(detections)
        if self.json_writer is not None:
            self.json_writer.add(frame, detections)
        if frame.video is None and self.save_images:
            drawn = detections.draw(frame.image)
            self.run.images.append(save_annotated_image(drawn, self.run.output_dir / "images", frame.name,
                                                        self.image_suffix))
        elif frame.video is not None and self.save_videos:
            self._video_for(frame).write(detections.draw(frame.image))

    def _video_for(self, frame: Frame) -> AnnotatedVideoWriter:
        target = self.run.output_dir / "videos" / f"{frame.video.stem}.mp4"
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
) -> PredictionRun:
    """Predict every image / video frame of `source` and write to `output_dir`:

    * `predictions.json`: COCO results (image_id, file_name, category_id, category_name, bbox xywh, score);
    * `images/<name>.jpg`: still images with boxes and labels drawn;
    * `videos/<video stem>.mp4`: each input video re-encoded with boxes drawn, at its own frame rate.
    """
    outputs = PredictionOutputs(output_dir, save_json=save_json, save_images=save_images, save_videos=save_videos,
                                category_ids=category_ids, json_name=json_name, image_suffix=image_suffix)
    try:
        for frame, detections in predictor.stream(source):
            outputs.add(frame, detections)
    finally:
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
    as `run_prediction`, so `pgi-detect predict` and the Python API produce identical files."""
    output_dir = Path(output_dir)
    run = PredictionRun(output_dir=output_dir)
    json_writer = CocoJsonWriter(output_dir / json_name, category_ids)
    for index, item in enumerate(predictions):
        path = Path(item["path"])
        detections = item["detections"]
        json_writer.records.extend(detections.to_coco(int(item["image_id"]), category_ids, file_name=path.name))
        run.frames += 1
        run.detections += len(detections)
        if save_images and (max_images is None or index < max_images):
            drawn = detections.draw(decode_image(path))
            run.images.append(save_annotated_image(drawn, output_dir / "images", path.stem))
    run.json_path = json_writer.write()
    return run
