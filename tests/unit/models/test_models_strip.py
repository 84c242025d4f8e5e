"""PGI auxiliary branch: removal (yolov9-x -> gelan-x) and its gradient path into the main backbone."""
from __future__ import annotations

from functools import lru_cache

import pytest
import torch

from pgi_detect.models import Detector, build_model, count_parameters
from pgi_detect.models.blocks import Silence
from pgi_detect.models import DetectorSpec, architecture_of

# reference section 1.1: gelan-x training parameter counts (nc = 80)
GELAN_PARAMS = {"t": 2_442_640, "s": 7_226_208, "m": 20_124_000, "c": 25_498_752, "e": 58_114_432}


@lru_cache(maxsize=None)
def yolo_model(name: str) -> Detector:
    """Built once per module: construction dominates these tests' run time."""
    torch.manual_seed(0)
    return build_model(name)


def official_source_row(size: str, index: int, head_row: int) -> int:
    """The yolov9-x row that the official conversion notebook copies into gelan-x row `index` (spec 1.2)."""
    if index == head_row:
        return {"t": 29, "s": 29, "m": 38, "c": 38, "e": 49}[size]
    if size in ("m", "c"):
        return index + 1
    if size == "e" and index >= 29:
        return index + 7
    return index


@pytest.mark.parametrize("size", ["t", "s", "m", "c", "e"])
def test_stripped_model_has_the_gelan_table_and_size(size):
    with torch.device("meta"):  # shapes only: no weight init cost
        stripped = build_model(f"yolov9-{size}").strip_auxiliary()
    assert stripped.table == architecture_of(DetectorSpec(f"gelan-{size}")).table
    assert count_parameters(stripped) == GELAN_PARAMS[size]
    assert stripped.spec == DetectorSpec(f"gelan-{size}") and stripped.num_branches == 1


@pytest.mark.parametrize("size", ["t", "c"])
def test_stripped_weights_follow_the_official_conversion_rule(size):
    yolo = yolo_model(f"yolov9-{size}")
    stripped = yolo.strip_auxiliary()
    source_state = yolo.state_dict()
    head_row = len(stripped.table) - 1
    for key, tensor in stripped.state_dict().items():
        _, index, rest = key.split(".", 2)
        row = official_source_row(size, int(index), head_row)
        source_key = f"layers.{row}.main.{rest}" if row == len(yolo.table) - 1 else f"layers.{row}.{rest}"
        assert torch.equal(tensor, source_state[source_key]), key


def test_gelan_e_keeps_the_dual_backbone_and_its_silence():
    with torch.device("meta"):
        stripped = build_model("yolov9-e").strip_auxiliary()
    assert stripped.table[0].block is Silence
    assert len(stripped.table) == 43


@pytest.mark.parametrize("name", ["yolov9-t", "yolov9-c"])
def test_stripped_outputs_are_bit_identical_to_the_main_branch(name):
    model = yolo_model(name).eval()
    stripped = model.strip_auxiliary()
    images = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        main = model(images)[-1]
        (only,) = stripped(images)
        decoded_main, decoded_stripped = model.decode(main), stripped.predict_raw(images)
    assert len(only) == 3
    for a, b in zip(main, only):
        assert torch.equal(a, b)
    assert torch.equal(decoded_main, decoded_stripped)


def test_stripping_copies_weights():
    model = yolo_model("yolov9-t")
    stripped = model.strip_auxiliary()
    with torch.no_grad():
        stripped.layers[0].conv.weight.add_(1.0)
    assert not torch.equal(stripped.layers[0].conv.weight, model.layers[0].conv.weight)


@pytest.mark.parametrize(
    ("name", "main_backbone_row", "main_neck_row"),
    [("yolov9-c", 5, 16), ("yolov9-t", 4, 15)],
)
def test_auxiliary_loss_reaches_the_main_backbone(name, main_backbone_row, main_neck_row):
    model = yolo_model(name).train()
    model.zero_grad(set_to_none=True)
    aux, main = model(torch.rand(1, 3, 64, 64))
    sum(m.float().sum() for m in aux).backward()
    backbone_grad = model.layers[main_backbone_row].merge.conv.weight.grad
    assert backbone_grad is not None and backbone_grad.abs().sum() > 0
    stem_grad = model.layers[1 if name == "yolov9-c" else 0].conv.weight.grad
    assert stem_grad is not None and stem_grad.abs().sum() > 0
    # the main neck is not on the auxiliary path
    assert model.layers[main_neck_row].merge.conv.weight.grad is None


def test_inference_copy_is_stripped_fused_and_leaves_the_training_model_untouched():
    torch.manual_seed(0)
    model = build_model("yolov9-t", num_classes=3).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    deployable = model.inference_copy()
    assert deployable.fused and deployable.num_branches == 1 and not deployable.training
    assert count_parameters(deployable) < count_parameters(model)
    assert model.training and not model.fused and model.num_branches == 2
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    images = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        expected = model.eval().decode(model(images)[-1])
        torch.testing.assert_close(deployable.predict_raw(images), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("num_classes", [80, 3])
def test_stripping_keeps_a_cls_width_override(num_classes):
    with torch.device("meta"):  # shapes only
        stripped = build_model("yolov9-t", num_classes, cls_width=80).strip_auxiliary()
        gelan = build_model("gelan-t", num_classes, cls_width=80)
    assert stripped.cls_width == 80 and stripped.table == gelan.table
    assert {k: v.shape for k, v in stripped.state_dict().items()} == {k: v.shape for k, v in gelan.state_dict().items()}
    assert [cls[0].conv.out_channels for cls in stripped.main_head.cls] == [80, 80, 80]
    assert count_parameters(stripped) == count_parameters(gelan) < GELAN_PARAMS["t"]
