"""`Detections`: one image's final boxes in original pixels, the result type of the Python API."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from pgi_detect.evaluation import rows_to_coco
from pgi_detect.inference.draw import draw_detections


@dataclass
class Detections:
    """Detections of one image, by decreasing score.

    boxes: (n, 4) float32 xyxy in original-image pixels; scores: (n,); class_ids: (n,) int64 contiguous class
    indices; class_names: n names (the class index as text when the model has no names); image_shape: (h, w)
    of the original image (None when unknown); category_ids: the model's class index -> dataset category id table
    (from the checkpoint; None when unknown, then category id = class index); image_id: the image's id when the
    source gives one (`to_coco()` uses both).
    """

    boxes: Tensor
    scores: Tensor
    class_ids: Tensor
    class_names: list[str]
    image_shape: tuple[int, int] | None = None
    category_ids: list[int] | None = None
    image_id: int | None = None

    @classmethod
    def from_rows(
        cls, rows: Tensor, image_shape: tuple[int, int], names: Sequence[str] | None = None,
        category_ids: Sequence[int] | None = None,
    ) -> "Detections":
        """From NMS rows `[x1, y1, x2, y2, score, class]` already mapped to original pixels."""
        rows = rows.detach().float().cpu()
        class_ids = rows[:, 5].long()
        return cls(
            boxes=rows[:, :4].contiguous(),
            scores=rows[:, 4].contiguous(),
            class_ids=class_ids,
            class_names=[class_name(c, names) for c in class_ids.tolist()],
            image_shape=(int(image_shape[0]), int(image_shape[1])),
            category_ids=[int(c) for c in category_ids] if category_ids is not None else None,
        )

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def rows(self) -> Tensor:
        """(n, 6) rows `[x1, y1, x2, y2, score, class]`, the format of `postprocess.non_max_suppression`."""
        return torch.cat((self.boxes, self.scores[:, None], self.class_ids[:, None].float()), 1)

    def draw(self, image: np.ndarray, line_width: int | None = None) -> np.ndarray:
        """`draw_detections` of these boxes, scores and class names on a copy of the (H, W, 3) RGB `image`."""
        return draw_detections(
            image, self.boxes.numpy(), self.scores.numpy(), self.class_ids.numpy(), self.class_names, line_width
        )

    def to_coco(
        self, image_id: int | None = None, category_ids: Sequence[int] | None = None, file_name: str | None = None
    ) -> list[dict]:
        """COCO result dicts (`evaluation.rows_to_coco`: bbox = [x, y, w, h] rounded to 3 decimals, score to 5, like
        val.py): `category_id` is the dataset category id (`category_ids`, else the table these detections carry,
        else the class index), plus `class_index`, `category_name` and, when given, `file_name`. `image_id`
        defaults to the one these detections carry."""
        image_id = self.image_id if image_id is None else image_id
        if image_id is None:
            raise ValueError("to_coco needs an image_id: these detections do not carry one")
        table = list(category_ids) if category_ids is not None else self.category_ids
        if table is not None and len(self) and int(self.class_ids.max()) >= len(table):
            raise ValueError(f"class index {int(self.class_ids.max())} has no category id ({len(table)} known)")
        records = rows_to_coco({int(image_id): self.rows()}, table)
        for record, name, index in zip(records, self.class_names, self.class_ids.tolist()):
            record["class_index"] = int(index)
            record["category_name"] = name
            if file_name is not None:
                record["file_name"] = file_name
        return records


def class_name(class_id: int, names: Sequence[str] | None) -> str:
    return str(names[class_id]) if names is not None and 0 <= class_id < len(names) else str(class_id)
