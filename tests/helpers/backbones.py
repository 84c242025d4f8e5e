"""A small custom backbone for CLI tests: `pretrained=True` marks its weights, so a test can tell whether the module
the CLI instantiated is the one that ends up in the detector."""
from __future__ import annotations

import torch
from torch import nn

from pgi_detect.models import Backbone

PRETRAINED_VALUE = 0.25


class MarkedBackbone(Backbone):
    def __init__(self, width: int = 8, pretrained: bool = False) -> None:
        super().__init__()
        self.out_channels = (width, width, width)
        self.stem = nn.Conv2d(3, width, 3, stride=8, padding=1)
        if pretrained:  # stands in for downloaded weights
            with torch.no_grad():
                self.stem.weight.fill_(PRETRAINED_VALUE)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p3 = self.stem(images)
        return p3, p3[..., ::2, ::2], p3[..., ::4, ::4]
