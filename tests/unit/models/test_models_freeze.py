"""Layer freezing (official `--freeze` semantics): which rows each form names, "backbone" for every zoo table, and that
frozen parameters neither move nor decay under the recipe's optimizer, while BatchNorm statistics keep updating."""
from __future__ import annotations

import pytest
import torch

from pgi_detect.models import Detector, build_model, freeze_layers
from pgi_detect.models import ZOO_MODELS
from pgi_detect.models.freeze import backbone_rows, format_rows, frozen_rows
from pgi_detect.training.optim import build_optimizer

pytestmark = pytest.mark.usefixtures("single_torch_thread")

# The official yaml's backbone section, plus yolov9-m/c's auxiliary reversible backbone (CBLinear 23-25, 26-37).
BACKBONES = {
    "gelan-t": "0-8", "gelan-s": "0-8", "gelan-m": "0-8", "gelan-c": "0-8", "gelan-e": "0-28",
    "yolov9-t": "0-8", "yolov9-s": "0-8", "yolov9-m": "0-9, 23-37", "yolov9-c": "0-9, 23-37", "yolov9-e": "0-28",
}


@pytest.mark.parametrize("name", list(ZOO_MODELS))
def test_backbone_rows_of_every_zoo_model(name):
    with torch.device("meta"):
        detector = build_model(name)
    assert format_rows(backbone_rows(detector)) == BACKBONES[name]


def test_backbone_of_a_stripped_model_is_the_gelan_backbone():
    assert format_rows(backbone_rows(build_model("yolov9-t", num_classes=2).strip_auxiliary())) == "0-8"


def test_backbone_of_a_custom_backbone_is_its_row_and_picks():
    from pgi_detect.models import NeckSpec
    from pgi_detect.models.blocks import Conv

    class Tiny(torch.nn.Module):
        out_channels = (8, 8, 8)

        def __init__(self):
            super().__init__()
            self.p3, self.p4, self.p5 = Conv(3, 8, 3, 8), Conv(8, 8, 3, 2), Conv(8, 8, 3, 2)

        def forward(self, images):
            p3 = self.p3(images)
            p4 = self.p4(p3)
            return p3, p4, self.p5(p4)

    detector = Detector.from_backbone(Tiny(), num_classes=2, neck=NeckSpec((16, 16, 16), depth=1))
    assert format_rows(backbone_rows(detector)) == "0-3"


def test_freeze_forms_name_official_rows():
    detector = build_model("yolov9-t", num_classes=2)
    assert frozen_rows(detector, None) == [] and frozen_rows(detector, 0) == []
    assert frozen_rows(detector, 3) == [0, 1, 2]  # --freeze 3: the first three layers
    assert frozen_rows(detector, [0, 1, 2]) == [0, 1, 2]  # --freeze 0 1 2
    assert frozen_rows(detector, [5]) == [5]  # a single listed layer (the official CLI cannot say this)
    assert frozen_rows(detector, ["backbone", 22]) == list(range(9)) + [22]
    for bad in (31, -1, True, "neck", [30], [1.5]):
        with pytest.raises(ValueError, match="freeze"):
            frozen_rows(detector, bad)


def test_freeze_sets_requires_grad_and_reports_one_line():
    detector = build_model("gelan-t", num_classes=2)
    report = freeze_layers(detector, "backbone")
    frozen = {n for n, p in detector.named_parameters() if not p.requires_grad}
    backbone = {n for n, _ in detector.named_parameters() if int(n.split(".")[1]) <= 8}
    dfl = {n for n in frozen if ".dfl." in n}  # frozen by design, untouched by freeze_layers
    assert frozen == backbone | dfl and dfl
    values = sum(p.numel() for n, p in detector.named_parameters() if n in backbone)
    assert report.startswith(f"froze layers 0-8 (backbone): {len(backbone)} tensors, {values:,} parameters;")
    assert "\n" not in report


def test_frozen_parameters_neither_move_nor_decay_under_the_recipe_optimizer():
    torch.manual_seed(0)
    detector = build_model("gelan-t", num_classes=2)
    freeze_layers(detector, 4)
    before = {n: p.detach().clone() for n, p in detector.named_parameters()}
    statistics = detector.layers[0].bn.running_mean.clone()
    optimizer = build_optimizer(detector, "sgd", lr=0.1, weight_decay=0.05)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(before)  # groups as in the reference
    for _ in range(2):
        optimizer.zero_grad()
        sum(m.float().square().mean() for m in detector(torch.rand(2, 3, 64, 64))[-1]).backward()
        optimizer.step()
    for name, parameter in detector.named_parameters():
        frozen = int(name.split(".")[1]) < 4 or ".dfl." in name
        assert torch.equal(parameter, before[name]) == frozen, name
    assert not torch.equal(detector.layers[0].bn.running_mean, statistics)  # BatchNorm still tracks, as in train.py
