"""Models derived from the task's detector, kept off the module tree."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


class DerivedModels:
    """The evaluation copy (stripped + fused) and the `torch.compile` wrapper of the training forward.

    Held outside the module tree so that `state_dict()`, `parameters()` and the EMA swap never see them; copies and
    pickles of the task start empty and rebuild their own from their own detector.
    """

    def __init__(self) -> None:
        self.eval_model: nn.Module | None = None
        self.compiled_detector: nn.Module | None = None

    def compiled(self, detector: nn.Module, options: bool | dict[str, Any]) -> nn.Module:
        """`detector`, or its compiled wrapper (sharing its parameters) when `options` asks for one: True, or a
        dict of `torch.compile` keyword arguments. Compiled once, on first use."""
        if not options:
            return detector
        if self.compiled_detector is None:
            self.compiled_detector = torch.compile(detector, **(options if isinstance(options, dict) else {}))
        return self.compiled_detector

    def __deepcopy__(self, memo: dict) -> DerivedModels:
        return DerivedModels()

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()
