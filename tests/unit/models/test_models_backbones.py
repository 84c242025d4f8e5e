"""Detectors on custom backbones: the timm adapter and a hand-written Backbone subclass."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from pgi_detect.models import Backbone, Detector, NeckSpec, TimmBackbone
from pgi_detect.models.blocks import Conv


class TinyBackbone(Backbone):
    """The docs/models.md example: three strided stages after a stride-4 stem."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(Conv(3, 16, 3, 2), Conv(16, 32, 3, 2))
        self.p3 = Conv(32, 48, 3, 2)
        self.p4 = Conv(48, 64, 3, 2)
        self.p5 = Conv(64, 80, 3, 2)
        self.out_channels = (48, 64, 80)

    def forward(self, images):
        p3 = self.p3(self.stem(images))
        p4 = self.p4(p3)
        return p3, p4, self.p5(p4)


def test_timm_backbone_picks_stride_8_16_32_and_trains():
    torch.manual_seed(0)
    backbone = TimmBackbone("resnet18", pretrained=False)
    assert backbone.out_channels == (128, 256, 512)
    model = Detector.from_backbone(backbone, num_classes=4, neck="gelan-t").train()
    branches = model(torch.rand(2, 3, 64, 96))
    assert len(branches) == 1 and model.num_branches == 1
    assert [tuple(m.shape) for m in branches[0]] == [(2, 68, 8, 12), (2, 68, 4, 6), (2, 68, 2, 3)]
    sum(m.sum() for m in branches[0]).backward()
    stem_grad = backbone.body.conv1.weight.grad
    assert stem_grad is not None and stem_grad.abs().sum() > 0
    state = model.state_dict()
    assert "layers.0.mean" not in state and "layers.0.std" not in state  # normalisation is not a weight


def test_timm_backbone_needs_three_levels():
    with pytest.raises(ValueError, match="out_indices needs 3 levels"):
        TimmBackbone("resnet18", out_indices=(1, 2))


def test_custom_backbone_subclass_builds_a_working_detector():
    torch.manual_seed(0)
    model = Detector.from_backbone(TinyBackbone(), num_classes=2, neck=NeckSpec((32, 48, 64), depth=1)).eval()
    with torch.no_grad():
        decoded = model.predict_raw(torch.rand(1, 3, 64, 64))
    assert decoded.shape == (1, 6, 64 + 16 + 4)
    assert torch.all((decoded[:, 4:] >= 0) & (decoded[:, 4:] <= 1))
    with torch.no_grad():
        fused = model.fuse().predict_raw(torch.rand(1, 3, 64, 64))
    assert fused.shape == decoded.shape


def test_backbone_without_out_channels_is_rejected():
    with pytest.raises(ValueError, match="out_channels"):
        Detector.from_backbone(nn.Identity(), num_classes=2)
