"""What the training glue needs from the objects it is given: the datamodule (`DetectionDataSource`) and the batch
(`pgi_detect.data.Batch`). `DetectionDataModule` satisfies the protocol structurally; test doubles and users' own
datamodules implement the same members."""
from __future__ import annotations

from typing import Any, Literal, Protocol, runtime_checkable

EvalStage = Literal["val", "test"]


@runtime_checkable
class DetectionDataSource(Protocol):
    """The datamodule members that `DetectionTask` and the recipe callbacks use.

    class_names / category_ids: the class table; `category_ids[i]` is the dataset category id of class index i,
    written into COCO results.
    batch_size: images per device and training step (the recipe's nominal-batch rules need it).
    ground_truth(stage): COCO-format ground truth (a pycocotools-style COCO object or its dict) of the split that
    `stage` ("val" or "test") evaluates.
    set_mosaic(enabled): the close-mosaic switch.
    """

    batch_size: int

    @property
    def class_names(self) -> list[str]: ...

    @property
    def category_ids(self) -> list[int]: ...

    def ground_truth(self, stage: EvalStage) -> Any: ...

    def set_mosaic(self, enabled: bool) -> None: ...
