"""Robust image decoding to 8-bit RGB, with EXIF orientation applied.

Rules (docs/data.md): JPEG is decoded with OpenCV (fast; it applies the EXIF orientation) after checking the file
ends with an end-of-image marker, so truncated downloads fail instead of silently decoding a grey bottom half.
Other formats go through Pillow: EXIF orientation applied, grayscale → RGB, palette → RGB, RGBA/LA composited over
grey 114 (the padding colour), 16-bit → 8-bit by scaling 0..65535 to 0..255. Boxes are always relative to the
displayed (EXIF-oriented) image.
"""
from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pgi_detect.data.problems import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
BACKGROUND_GREY = 114
_EXIF_ORIENTATION_TAG = 0x0112
_TRANSPOSING_ORIENTATIONS = {5, 6, 7, 8}  # orientations that swap width and height

cv2.setNumThreads(0)  # the DataLoader parallelises over workers; OpenCV threads would oversubscribe the CPUs
# Decoding straight to RGB (OpenCV >= 4.10) gives the same pixels as decoding to BGR and converting, one pass fewer.
_IMREAD_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)


class ImageDecodeError(DataError):
    """An image file that is missing, truncated or not decodable; the message names the file."""


class ImageSizeMismatchError(DataError):
    """The decoded image is not the size its annotations were made for; the message names the file."""


def _is_jpeg(data: bytes) -> bool:
    return data[:2] == b"\xff\xd8"


def _jpeg_is_complete(data: bytes) -> bool:
    # 0xFFD9 (end of image) cannot occur inside entropy-coded data (0xFF is byte-stuffed), so finding it near the end
    # means the file was not cut off; a few writers append padding after it, hence the search window.
    return b"\xff\xd9" in data[-1024:]


def decode_image(path: str | Path) -> np.ndarray:
    """Read an image file as a (H, W, 3) uint8 RGB array in displayed orientation; raise ImageDecodeError if bad."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageDecodeError(f"{path}: image file not found") from None
    except OSError as exc:
        raise ImageDecodeError(f"{path}: cannot read image file ({exc})") from None
    if not data:
        raise ImageDecodeError(f"{path}: image file is empty")
    if _is_jpeg(data):
        if not _jpeg_is_complete(data):
            raise ImageDecodeError(f"{path}: truncated JPEG (no end-of-image marker)")
        buffer = np.frombuffer(data, np.uint8)
        decoded = cv2.imdecode(buffer, cv2.IMREAD_COLOR if _IMREAD_RGB is None else _IMREAD_RGB)
        if decoded is None:
            raise ImageDecodeError(f"{path}: corrupt JPEG (OpenCV cannot decode it)")
        return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB) if _IMREAD_RGB is None else decoded
    return _decode_with_pillow(data, path)


def decode_annotated_image(path: str | Path, height: int | None, width: int | None) -> np.ndarray:
    """decode_image, then check the annotated (height, width) when known: boxes are in that frame, so another
    decoded size (typically an EXIF rotation the annotation tool ignored) makes the sample unusable."""
    image = decode_image(path)
    check_annotated_size(path, image.shape[:2], height, width, "decoded")
    return image


def check_header_size(path: str | Path, height: int | None, width: int | None) -> None:
    """The same check from the file header alone (check-data --no-decode): no pixels decoded."""
    check_annotated_size(path, read_image_size(path), height, width, "header")


def check_annotated_size(path: str | Path, actual: tuple[int, int], height: int | None, width: int | None,
                         measured: str) -> None:
    """ImageSizeMismatchError when the annotated (height, width), if known, is not the displayed size `actual`."""
    if height is not None and (height, width) != tuple(actual):
        raise ImageSizeMismatchError(f"{path}: {measured} size {actual[1]}x{actual[0]} (w x h, EXIF orientation "
                                     f"applied) differs from the annotated size {width}x{height}")


# JPEG's DCT can decode at 1/2, 1/4, 1/8 of the size almost for free (libjpeg's scaled IDCT).
_REDUCED_FLAGS = {8: cv2.IMREAD_REDUCED_COLOR_8, 4: cv2.IMREAD_REDUCED_COLOR_4, 2: cv2.IMREAD_REDUCED_COLOR_2}


def reduction_factor(height: int, width: int, target: int) -> int:
    """The largest of 8, 4, 2 at which the long side still covers `target` (1: decode in full)."""
    return next((f for f in _REDUCED_FLAGS if max(height, width) >= f * target), 1)


def decode_for_target(path: str | Path, height: int | None, width: int | None,
                      target: int) -> tuple[np.ndarray, tuple[int, int]]:
    """(image, (height, width) of the full image): a JPEG at least twice `target` on its long side is decoded at the
    smallest DCT scale (1/2, 1/4, 1/8) that still covers `target` (data.decode_reduced), anything else as
    decode_annotated_image does. The caller resizes to the shape the full image gives (long_side_shape of the full
    size), so boxes and shapes are the same either way; only pixels differ a little (docs/data.md)."""
    path = Path(path)
    if path.suffix.lower() not in (".jpg", ".jpeg"):
        image = decode_annotated_image(path, height, width)
        return image, image.shape[:2]
    full = (height, width) if height is not None and width is not None else read_image_size(path)
    factor = reduction_factor(*full, target)
    if factor == 1:
        image = decode_annotated_image(path, height, width)
        return image, image.shape[:2]
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageDecodeError(f"{path}: cannot read image file ({exc})") from None
    if not _is_jpeg(data) or not _jpeg_is_complete(data):  # not really a JPEG, or cut off: the full path reports it
        image = decode_annotated_image(path, height, width)
        return image, image.shape[:2]
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), _REDUCED_FLAGS[factor])
    if decoded is None:
        raise ImageDecodeError(f"{path}: corrupt JPEG (OpenCV cannot decode it)")
    expected = (-(-full[0] // factor), -(-full[1] // factor))  # libjpeg rounds the scaled size up
    if decoded.shape[:2] != expected:  # the file is not the size its annotations say: the full path names it
        image = decode_annotated_image(path, height, width)
        return image, image.shape[:2]
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB), (int(full[0]), int(full[1]))


def resize_from(image: np.ndarray, full_size: tuple[int, int], size: int, augment: bool,
                truncate: bool = False) -> np.ndarray:
    """resize_long_side for an image decoded at a reduced scale: the shape and the interpolation rule are those of
    the full image of `full_size`, so every later step sees the same geometry."""
    if image.shape[:2] == tuple(full_size):
        return resize_long_side(image, size, augment, truncate)
    new_h, new_w = long_side_shape(*full_size, size, truncate)
    interpolation = cv2.INTER_LINEAR if (augment or size > max(full_size)) else cv2.INTER_AREA
    return cv2.resize(image, (new_w, new_h), interpolation=interpolation)


def _decode_with_pillow(data: bytes, path: Path) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as opened:
            opened.load()  # raises on truncated data
            image = ImageOps.exif_transpose(opened)
            return pil_to_rgb8(image)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:  # its message names the in-memory buffer, not the file
        raise ImageDecodeError(f"{path}: corrupt or not an image (unrecognised content, starting {data[:8]!r})") from None
    except Exception as exc:  # Pillow raises many exception types for bad files
        raise ImageDecodeError(f"{path}: corrupt or unsupported image ({type(exc).__name__}: {exc})") from None


def pil_to_rgb8(image: Image.Image) -> np.ndarray:
    """Any Pillow mode → (H, W, 3) uint8 RGB."""
    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        gray = np.asarray(image).astype(np.float32)
        gray8 = np.clip(np.rint(gray * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
        return np.repeat(gray8[:, :, None], 3, axis=2)
    if mode == "F":
        gray = np.asarray(image, dtype=np.float32)
        scale = 255.0 if gray.size and float(np.nanmax(gray)) <= 1.0 else 1.0  # float images in [0, 1] or [0, 255]
        gray8 = np.clip(np.rint(np.nan_to_num(gray) * scale), 0, 255).astype(np.uint8)
        return np.repeat(gray8[:, :, None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32)
        alpha = rgba[:, :, 3:4] / 255.0
        rgb = rgba[:, :, :3] * alpha + BACKGROUND_GREY * (1.0 - alpha)
        return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.asarray(image.convert("RGB")))


def read_image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of the displayed image from the file header, without decoding the pixels."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(_EXIF_ORIENTATION_TAG, 1)
    except FileNotFoundError:
        raise ImageDecodeError(f"{path}: image file not found") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(f"{path}: cannot read image header (not an image: unrecognised file content)") from None
    except Exception as exc:
        raise ImageDecodeError(f"{path}: cannot read image header ({type(exc).__name__}: {exc})") from None
    if orientation in _TRANSPOSING_ORIENTATIONS:
        width, height = height, width
    return int(height), int(width)


def resize_long_side(image: np.ndarray, size: int, augment: bool, truncate: bool = False) -> np.ndarray:
    """Resize so the long side equals `size` (aspect kept, no padding), like the reference load_image.

    INTER_LINEAR when augmenting or upscaling, INTER_AREA when downscaling for evaluation. `truncate`: see
    long_side_shape.
    """
    h0, w0 = image.shape[:2]
    new_h, new_w = long_side_shape(h0, w0, size, truncate)
    if (new_h, new_w) == (h0, w0):
        return image
    interpolation = cv2.INTER_LINEAR if (augment or size > max(h0, w0)) else cv2.INTER_AREA
    return cv2.resize(image, (new_w, new_h), interpolation=interpolation)


def long_side_shape(height: int, width: int, size: int, truncate: bool = False) -> tuple[int, int]:
    """(h, w) that resize_long_side gives an image of (height, width), without the image.

    The sides are rounded; `truncate` cuts them as the official loader does (`int(w0 * r)`: a 640x427 photo at 256
    becomes 256x170 instead of 256x171, and a long side whose product falls a hair below `size` loses a pixel),
    for data.official_rounding."""
    ratio = size / max(height, width)
    if ratio == 1:
        return height, width
    cut = int if truncate else round
    return max(1, min(size, cut(height * ratio))), max(1, min(size, cut(width * ratio)))


def channels_first(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) -> contiguous (3, H, W) of the same dtype, for the final sample copy.

    OpenCV's channel split writes each plane straight into the output (one copy; numpy's strided transpose copy is
    3-10x slower). A mirrored view of a contiguous image (flip_left_right / flip_up_down return views) is mirrored
    by cv2.flip first; other layouts are made contiguous by numpy."""
    if image.ndim != 3 or image.shape[2] != 3:
        return np.ascontiguousarray(image.transpose(2, 0, 1))
    image = _contiguous_unmirrored(image)
    out = np.empty((3, *image.shape[:2]), image.dtype)
    planes = [out[0], out[1], out[2]]
    split = cv2.split(image, planes)
    if any(written is not plane for written, plane in zip(split, planes)):  # OpenCV allocated its own planes
        return np.stack(split)
    return out


def _contiguous_unmirrored(image: np.ndarray) -> np.ndarray:
    if image.flags.c_contiguous:
        return image
    left_right, up_down = image.strides[1] < 0, image.strides[0] < 0
    base = image[::-1 if up_down else 1, ::-1 if left_right else 1]
    if (left_right or up_down) and base.flags.c_contiguous:
        return cv2.flip(base, -1 if left_right and up_down else (1 if left_right else 0))
    return np.ascontiguousarray(image)
