"""Draw detections onto an RGB image with OpenCV (boxes, class name and score), for visual inspection and video."""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

# 20 well-separated RGB colours; class k uses colour k mod 20.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (255, 56, 56), (255, 157, 151), (255, 112, 31), (255, 178, 29), (207, 210, 49), (72, 249, 10), (146, 204, 23),
    (61, 219, 134), (26, 147, 52), (0, 212, 187), (44, 153, 168), (0, 194, 255), (52, 69, 147), (100, 115, 255),
    (0, 24, 236), (132, 56, 255), (82, 0, 133), (203, 56, 255), (255, 149, 200), (255, 55, 199),
)


def class_color(class_id: int) -> tuple[int, int, int]:
    return PALETTE[int(class_id) % len(PALETTE)]


def draw_detections(
    image: np.ndarray,
    boxes: Sequence[Sequence[float]] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    class_ids: Sequence[int] | np.ndarray,
    class_names: Sequence[str] | None = None,
    line_width: int | None = None,
) -> np.ndarray:
    """Return a copy of the (H, W, 3) uint8 RGB `image` with xyxy `boxes` (original pixels) and "name score" labels.

    Line width and font scale grow with the image size so labels stay readable on large photos.
    """
    canvas = np.ascontiguousarray(image.copy())
    height, width = canvas.shape[:2]
    thickness = line_width or max(round((height + width) / 2 * 0.003), 2)
    font_scale = thickness / 3
    font_thickness = max(thickness - 1, 1)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    for index, ((x1, y1, x2, y2), score, class_id) in enumerate(zip(boxes, scores, class_ids)):
        color = class_color(int(class_id))
        top_left, bottom_right = (int(round(x1)), int(round(y1))), (int(round(x2)), int(round(y2)))
        cv2.rectangle(canvas, top_left, bottom_right, color, thickness, lineType=cv2.LINE_AA)
        name = class_names[index] if class_names is not None else str(int(class_id))
        label = f"{name} {float(score):.2f}"
        (text_w, text_h), baseline = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font_scale, font_thickness)
        above = top_left[1] - text_h - baseline - 3 >= 0  # label above the box when it fits, inside otherwise
        label_top = top_left[1] - text_h - baseline - 3 if above else top_left[1]
        label_bottom = label_top + text_h + baseline + 3
        cv2.rectangle(canvas, (top_left[0], label_top), (top_left[0] + text_w + 2, label_bottom), color, cv2.FILLED)
        text_color = (0, 0, 0) if sum(color) > 382 else (255, 255, 255)
        cv2.putText(
            canvas, label, (top_left[0] + 1, label_bottom - baseline - 1), cv2.FONT_HERSHEY_SIMPLEX, font_scale,
            text_color, font_thickness, lineType=cv2.LINE_AA,
        )
    return canvas


def save_rgb_image(image: np.ndarray, path: str) -> None:
    """Write an RGB array with OpenCV (which expects BGR)."""
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"{path}: OpenCV could not write the image")
