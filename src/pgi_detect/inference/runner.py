"""`run_prediction`: predict a whole source and write every output (JSON, annotated images, annotated videos).
The CLI's `predict` and scripts call this; the Python API user can call it too."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pgi_detect.inference.predictor import Predictor
from pgi_detect.inference.sources import Source
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
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    run = PredictionRun(output_dir=output_dir)
    json_writer = CocoJsonWriter(output_dir / json_name, category_ids) if save_json else None
    video_writer: AnnotatedVideoWriter | None = None
    try:
        for frame, detections in predictor.stream(source):
            run.frames += 1
            run.detections += len(detections)
            if json_writer is not None:
                json_writer.add(frame, detections)
            is_video = frame.video is not None
            if not ((is_video and save_videos) or (not is_video and save_images)):
                continue
            drawn = detections.draw(frame.image)
            if not is_video:
                run.images.append(save_annotated_image(drawn, output_dir / "images", frame.name, image_suffix))
                continue
            target = output_dir / "videos" / f"{frame.video.stem}.mp4"
            if video_writer is None or video_writer.path != target:
                if video_writer is not None:
                    video_writer.close()
                video_writer = AnnotatedVideoWriter(target, frame.fps or 25.0)
                run.videos.append(target)
            video_writer.write(drawn)
    finally:
        if video_writer is not None:
            video_writer.close()
    if json_writer is not None:
        run.json_path = json_writer.write()
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
    from pgi_detect.data.images import decode_image

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
