"""Re-scoring written COCO results files with plain pycocotools, and the CLI flags that make `predict` use the
evaluation NMS (so its JSON can be compared with validation)."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pycocotools.coco
import pycocotools.cocoeval

# --model.predict_nms = the recipe's model.eval_nms (val.py: conf 0.001, IoU 0.7, multi-label, 300 boxes)
EVAL_NMS_FLAGS = ["--model.predict_nms.conf_thres=0.001", "--model.predict_nms.iou_thres=0.7",
                  "--model.predict_nms.multi_label=true", "--model.predict_nms.max_det=300"]


def pycocotools_stats(annotations: Path, results: Path, image_ids: list[int]) -> np.ndarray:
    """COCOeval's 12 statistics of a results file, restricted to the evaluated images (like val.py)."""
    with contextlib.redirect_stdout(io.StringIO()):
        truth = pycocotools.coco.COCO(str(annotations))
        evaluator = pycocotools.cocoeval.COCOeval(truth, truth.loadRes(str(results)), "bbox")
        evaluator.params.imgIds = list(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


def coco_records(path: Path) -> list[dict]:
    """A results file's records without the descriptive keys `predict` adds (file and category names, class index)."""
    return [{k: v for k, v in record.items() if k not in ("file_name", "category_name", "class_index")}
            for record in json.loads(Path(path).read_text())]
