"""Turn whatever the user points prediction at (file, folder, video, array, PIL image, or a list of those) into one
stream of RGB frames with stable names and image ids, so the predictor and the writers never care where pixels
came from."""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import cv2
import numpy as np
from PIL import Image

from pgi_detect.data.images.decode import IMAGE_SUFFIXES, ImageDecodeError, decode_image, pil_to_rgb8
from pgi_detect.data.problems import DataError

logger = logging.getLogger("pgi_detect.inference")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")

ImageLike = Union[np.ndarray, Image.Image]
Source = Union[str, Path, ImageLike, Sequence[Union[str, Path, ImageLike]]]


@dataclass
class Frame:
    """One RGB image to predict on.

    `name` is a file-system-safe label; `image_id` goes into the COCO JSON. For video frames `video` is the source
    file, `frame_index` the 0-based frame number and `fps` the source frame rate. `relative` is the file's path below
    the folder that holds every input of the source (`a/x.jpg` and `a/b/x.jpg` -> `x.jpg`, `b/x.jpg`), which names
    its outputs, so two inputs never write to the same file.
    """

    image: np.ndarray  # (H, W, 3) uint8 RGB
    name: str
    image_id: int
    path: Path | None = None
    video: Path | None = None
    frame_index: int | None = None
    fps: float | None = None
    relative: str | None = None

    @property
    def file_name(self) -> str:
        """The input file's path below the source root (the video's for video frames, `name` for in-memory images)."""
        if self.relative is not None:
            return self.relative
        source = self.video or self.path
        return source.name if source is not None else self.name


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def is_video_file(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def to_rgb_array(image: ImageLike) -> np.ndarray:
    """A (H, W, 3) uint8 RGB array from an RGB numpy array (HWC, HW gray, or HWC with alpha) or a PIL image."""
    if isinstance(image, Image.Image):
        return pil_to_rgb8(image)
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an (H, W, 3) RGB image array, got shape {array.shape}")
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    if array.shape[2] == 4:
        array = array[:, :, :3]
    if array.dtype != np.uint8:
        if np.issubdtype(array.dtype, np.floating) and array.size and float(array.max()) <= 1.0:
            array = array * 255.0  # float images in [0, 1]
        array = np.clip(np.rint(array), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(array)


def list_images(folder: Path) -> list[Path]:
    """Images and videos inside `folder` and its subfolders (hidden ones, e.g. `.git`, excepted), sorted by path
    below it (deterministic ids)."""
    found = []
    for path in folder.rglob("*"):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        if is_image_file(path) or is_video_file(path):
            found.append((relative.as_posix(), path))
    return [path for _, path in sorted(found)]


class ExpandedSource(list):
    """A source flattened into image paths, video paths and in-memory images (expand_source). iter_frames and
    count_frames take it as it is, so a source used twice has its folders listed once and an iterator read once.
    `root` is the folder that holds every input (the folder given, or a file's own folder; their common folder for
    several), below which outputs are named."""

    root: Path | None = None


def expand_source(source: Source) -> ExpandedSource:
    """The files and images of a source (an error names a missing path, a folder without images or a file that is
    not an image or a video)."""
    if isinstance(source, ExpandedSource):
        return source
    roots: list[str] = []
    items = ExpandedSource()
    seen: set[str] = set()
    for item in _expand(source, roots):
        if isinstance(item, Path):
            key = os.path.abspath(item)
            if key in seen:
                logger.warning("%s: given more than once; predicted once", item)
                continue
            seen.add(key)
        items.append(item)
    items.root = Path(os.path.commonpath(roots)) if roots else None
    return items


def relative_name(path: Path, root: Path | None) -> str:
    """`path` below `root` as a POSIX path (`b/x.jpg`), the file name without a root."""
    return Path(os.path.abspath(path)).relative_to(root).as_posix() if root is not None else path.name


def _expand(source: Source, roots: list[str]) -> list[Any]:
    """Flatten a source into a list of image paths, video paths and in-memory images; `roots` collects the folder
    each path argument stands for."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir():
            found = list_images(path)
            if not found:
                raise FileNotFoundError(f"{path}: no images or videos found in it or its subfolders (suffixes "
                                        f"{', '.join(IMAGE_SUFFIXES + VIDEO_SUFFIXES)})")
            roots.append(os.path.abspath(path))
            return found
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or folder")
        if not (is_image_file(path) or is_video_file(path)):
            raise UnreadableInput(f"{path}: not an image or a video (known suffixes: "
                                  f"{', '.join(IMAGE_SUFFIXES + VIDEO_SUFFIXES)})")
        roots.append(os.path.dirname(os.path.abspath(path)))
        return [path]
    if isinstance(source, (np.ndarray, Image.Image)):
        return [source]
    items: list[Any] = []
    for item in source:
        items.extend(_expand(item, roots))
    return items


def _stem_ids(paths: list[Path]) -> dict[Path, int] | None:
    """COCO convention (val.py): image_id = int(file stem), used when every still image has a distinct numeric stem."""
    stems = [p.stem for p in paths]
    if not paths or not all(s.isdigit() for s in stems) or len(set(stems)) != len(stems):
        return None
    return {p: int(p.stem) for p in paths}


def iter_video(path: Path, first_id: int = 0) -> Iterator[Frame]:
    """Decode a video with OpenCV, one RGB Frame per video frame."""
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise UnreadableInput(f"{path}: OpenCV cannot open this video")
    fps = float(capture.get(cv2.CAP_PROP_FPS)) or 25.0
    try:
        index = 0
        while True:
            ok, bgr = capture.read()
            if not ok:
                break
            yield Frame(
                image=cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), name=f"{path.stem}_{index:06d}", image_id=first_id + index,
                video=path, frame_index=index, fps=fps,
            )
            index += 1
    finally:
        capture.release()


# What `on_error` receives: the unreadable file and why.
ErrorHandler = Callable[[Path, Exception], None]


class UnreadableInput(DataError):
    """An image or video that cannot be decoded; the message names the file. A DataError (bad input), like the
    ImageDecodeError it stands for with images, so code catching DataError around prediction still sees both."""


def read_still(path: Path) -> np.ndarray:
    """An image file as RGB (data.images.decode_image); UnreadableInput, like an unreadable video, when it fails."""
    try:
        return decode_image(path)
    except ImageDecodeError as exc:
        raise UnreadableInput(str(exc)) from None


def count_frames(source: Source) -> int | None:
    """How many frames `iter_frames(source)` yields when every input is readable (images + the frame counts video
    containers declare); None when a video does not declare one."""
    total = 0
    for item in expand_source(source):
        if isinstance(item, Path) and is_video_file(item):
            capture = cv2.VideoCapture(str(item))
            frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if capture.isOpened() else 0
            capture.release()
            if frames <= 0:
                return None
            total += frames
        else:
            total += 1
    return total


def iter_frames(source: Source, on_error: ErrorHandler | None = None) -> Iterator[Frame]:
    """Frames of a source in order: still images get `int(stem)` ids when all stems are distinct numbers (COCO),
    otherwise running ids; video frames and in-memory images always take running ids after them.

    An unreadable image or video raises `UnreadableInput`, or, with `on_error`, is passed to it and skipped (its
    image id stays unused, so the other ids do not depend on which files were readable)."""
    items = expand_source(source)
    stills = [item for item in items if isinstance(item, Path) and is_image_file(item)]
    stem_ids = _stem_ids(stills)
    next_id = (max(stem_ids.values()) + 1) if stem_ids else 0
    for position, item in enumerate(items):
        if isinstance(item, Path) and is_video_file(item):
            count = 0
            try:
                for frame in iter_video(item, first_id=next_id):
                    count += 1
                    frame.relative = relative_name(item, items.root)
                    yield frame
            except UnreadableInput as exc:
                if on_error is None:
                    raise
                on_error(item, exc)
            next_id += count
        elif isinstance(item, Path):
            image_id = stem_ids[item] if stem_ids else next_id
            if not stem_ids:
                next_id += 1
            try:
                image = read_still(item)
            except UnreadableInput as exc:
                if on_error is None:
                    raise
                on_error(item, exc)
                continue
            yield Frame(image=image, name=item.stem, image_id=image_id, path=item,
                        relative=relative_name(item, items.root))
        else:
            yield Frame(image=to_rgb_array(item), name=f"image_{position:06d}", image_id=next_id)
            next_id += 1


def batched(frames: Iterable[Frame], batch_size: int) -> Iterator[list[Frame]]:
    """Group a frame stream into lists of at most `batch_size` (the last one may be shorter)."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    batch: list[Frame] = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch
