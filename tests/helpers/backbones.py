"""Small custom backbones for tests: `TinyBackbone` (the docs/inference.md example) and `MarkedBackbone`, whose
`pretrained=True` marks its weights, so a test can tell whether the module the CLI instantiated is the one that ends
up in the detector."""
from __future__ import annotations

import torch
from torch import Tensor, nn

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


class TinyBackbone(Backbone):
    """The docs/inference.md example: three maps at strides 8, 16, 32 with widths `out_channels`."""

    out_channels = (32, 48, 64)

    def __init__(self) -> None:
        super().__init__()

        def down(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.SiLU())

        self.stem = nn.Sequential(down(3, 16), down(16, 24), down(24, 32))  # stride 8
        self.stage4 = down(32, 48)  # stride 16
        self.stage5 = down(48, 64)  # stride 32

    def forward(self, images: Tensor) -> list[Tensor]:
        p3 = self.stem(images)
        p4 = self.stage4(p3)
        return [p3, p4, self.stage5(p4)]
