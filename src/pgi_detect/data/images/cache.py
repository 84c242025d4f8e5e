"""Decoded, resized training images kept once: `data.cache_images: ram | disk` (`true` means `ram`).

Both kinds are one flat uint8 buffer plus per-image offsets and shapes, filled before the DataLoader workers start:

* `ram`: the buffer lives in the process's memory; forked workers share its pages (there is no per-image Python
  object whose reference count would copy them on write). One copy per rank.
* `disk`: the buffer is a file mapped into memory, so every rank and worker of a node maps the same page-cache pages:
  one copy per node. The file is keyed on the images (paths, sizes, modification times), `img_size` and the decode
  options; a changed image set is another key, hence another file. One process builds it (local rank 0; global rank
  0 with PGI_DETECT_CACHE_SHARED=1 on a folder all nodes share), writing a temporary name and renaming it, so
  nobody reads half a file, while the others wait for it. A disk too small for it is an error before any decoding.

Where: `$PGI_DETECT_CACHE_DIR/images` (else `$XDG_CACHE_HOME/pgi_detect/images`, else `~/.cache/pgi_detect/images`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pgi_detect.data.index_cache import ENV_CACHE_DIR, cache_dir as index_cache_dir
from pgi_detect.data.problems import DataError

logger = logging.getLogger(__name__)
CACHE_KINDS = ("ram", "disk")
WAIT_ENV = "PGI_DETECT_CACHE_WAIT_S"  # how long other ranks wait for local rank 0's file (default 4 h)
BAD = -1  # the shape row of an image that could not be decoded


def cache_kind(value: bool | str | None) -> str | None:
    """`data.cache_images` as None, "ram" or "disk" (`true` keeps its old meaning: ram)."""
    if value in (None, False, "false", "none"):
        return None
    if value is True or value == "true":
        return "ram"
    if value in CACHE_KINDS:
        return str(value)
    raise ValueError(f"data.cache_images must be false, ram or disk (true = ram), got {value!r}")


def image_cache_dir() -> Path:
    """`images/` in `$PGI_DETECT_CACHE_DIR`, else next to the annotation index cache (`.../pgi_detect/images`)."""
    if os.environ.get(ENV_CACHE_DIR):
        return Path(os.environ[ENV_CACHE_DIR]) / "images"
    return index_cache_dir().parent / "images"


class ImageCache:
    """One buffer of decoded images: `get(index)` is (image view, original (h, w)) or None for a bad image."""

    def __init__(self, buffer: np.ndarray, offsets: np.ndarray, shapes: np.ndarray, originals: np.ndarray,
                 path: Path | None = None) -> None:
        self.buffer, self.offsets, self.shapes, self.originals, self.path = buffer, offsets, shapes, originals, path

    def get(self, index: int) -> tuple[np.ndarray, tuple[int, int]] | None:
        height, width = self.shapes[index]
        if height == BAD:
            return None
        start = self.offsets[index]
        image = self.buffer[start:start + height * width * 3].reshape(height, width, 3)
        return image, (int(self.originals[index, 0]), int(self.originals[index, 1]))

    @property
    def nbytes(self) -> int:
        return int(self.offsets[-1])


DecodeFn = Callable[[int], tuple[np.ndarray, tuple[int, int]]]


def build_cache(kind: str, shapes: np.ndarray, decode: DecodeFn, key_parts: Sequence[object], name: str,
                local_rank: int = 0, threads: int = 2) -> ImageCache:
    """The cache of `len(shapes)` images whose resized (h, w) are `shapes`; `decode(i)` gives image i resized and
    its original size, and raises DataError for a bad one (kept as a hole, reported by the dataset on use)."""
    shapes = np.asarray(shapes, dtype=np.int64).reshape(-1, 2)
    offsets = np.zeros(len(shapes) + 1, dtype=np.int64)
    np.cumsum(shapes[:, 0] * shapes[:, 1] * 3, out=offsets[1:])
    if kind == "ram":
        buffer = np.empty(int(offsets[-1]), dtype=np.uint8)
        final_shapes, originals = _fill(buffer, offsets, shapes.copy(), decode, threads, "caching images in RAM")
        return ImageCache(buffer, offsets, final_shapes, originals)
    return _disk_cache(shapes, offsets, decode, key_parts, name, local_rank, threads)


def _fill(buffer: np.ndarray, offsets: np.ndarray, shapes: np.ndarray, decode: DecodeFn, threads: int,
          description: str) -> tuple[np.ndarray, np.ndarray]:
    originals = np.zeros_like(shapes)

    def load(index: int) -> None:
        try:
            image, original = decode(index)
        except DataError:
            shapes[index] = BAD
            return
        if image.shape[:2] != tuple(shapes[index]):
            raise RuntimeError(f"image {index}: resized to {image.shape[:2]}, the cache expected {tuple(shapes[index])}")
        buffer[offsets[index]:offsets[index + 1]] = image.reshape(-1)
        originals[index] = original

    with ThreadPoolExecutor(threads) as pool:
        jobs = pool.map(load, range(len(shapes)))
        list(tqdm(jobs, total=len(shapes), desc=description, unit="img", disable=None, leave=False))
    return shapes, originals


def _disk_cache(shapes: np.ndarray, offsets: np.ndarray, decode: DecodeFn, key_parts: Sequence[object], name: str,
                local_rank: int, threads: int) -> ImageCache:
    digest = hashlib.sha256(json.dumps([str(part) for part in key_parts]).encode()).hexdigest()[:16]
    folder = image_cache_dir()
    data_path = folder / f"{name}-{digest}.u8"
    index_path = data_path.with_suffix(".json")
    if not (data_path.is_file() and index_path.is_file()):
        if local_rank == 0:
            _write_disk_cache(data_path, index_path, shapes, offsets, decode, threads)
        else:
            _wait_for(data_path, index_path)
    index = json.loads(index_path.read_text())
    buffer = np.memmap(data_path, dtype=np.uint8, mode="r", shape=(int(offsets[-1]),)) if offsets[-1] else \
        np.zeros(0, np.uint8)
    return ImageCache(buffer, offsets, np.asarray(index["shapes"], np.int64).reshape(-1, 2),
                      np.asarray(index["originals"], np.int64).reshape(-1, 2), data_path)


def _write_disk_cache(data_path: Path, index_path: Path, shapes: np.ndarray, offsets: np.ndarray, decode: DecodeFn,
                      threads: int) -> None:
    folder = data_path.parent
    folder.mkdir(parents=True, exist_ok=True)
    needed = int(offsets[-1])
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise DataError(f"data.cache_images disk: the decoded images need {needed / 2**30:.2f} GiB, {folder} has "
                        f"{free / 2**30:.2f} GiB free; free space, set PGI_DETECT_CACHE_DIR to a larger disk, or use "
                        "cache_images ram / false")
    scratch = data_path.with_name(f".{data_path.name}.{os.getpid()}.partial")
    try:
        buffer = np.memmap(scratch, dtype=np.uint8, mode="w+", shape=(max(needed, 1),))
        final_shapes, originals = _fill(buffer, offsets, shapes.copy(), decode, threads,
                                        f"caching images in {data_path.name}")
        buffer.flush()
        del buffer
        index_scratch = index_path.with_name(f".{index_path.name}.{os.getpid()}.partial")
        index_scratch.write_text(json.dumps({"shapes": final_shapes.tolist(), "originals": originals.tolist()}))
        os.replace(index_scratch, index_path)
        os.replace(scratch, data_path)  # last: readers look for the data file, the index is already there
    finally:
        scratch.unlink(missing_ok=True)
    logger.info("image cache: %d images, %.2f GiB in %s", len(shapes), needed / 2**30, data_path)


def _wait_for(data_path: Path, index_path: Path) -> None:
    """Another process (local rank 0) builds the file; wait for its rename."""
    timeout = float(os.environ.get(WAIT_ENV, 4 * 3600))
    started = time.monotonic()
    logger.info("image cache: waiting for local rank 0 to write %s", data_path)
    while not (data_path.is_file() and index_path.is_file()):
        if time.monotonic() - started > timeout:
            raise DataError(f"data.cache_images disk: {data_path} did not appear within {timeout:.0f} s "
                            f"(local rank 0 builds it; {WAIT_ENV} sets the wait)")
        time.sleep(min(1.0, timeout / 10))
