"""PGI's auxiliary branch as a declared part: the yolov9 tables assembled from their gelan table and auxiliary part
equal the official rows, every form attaches to any detector (zoo and custom backbones), trains both branches, sends
the auxiliary loss into the main backbone, and strips to exactly the detector without it."""
from __future__ import annotations

import pytest
import torch

from helpers.backbones import TinyBackbone
from helpers.official_tables import LITERAL_TABLES
from pgi_detect.loss import DetectionLoss
from pgi_detect.models import (
    AUXILIARY_FORMS,
    Detector,
    DetectorSpec,
    architecture_of,
    build_detector,
    build_model,
    count_parameters,
)
from pgi_detect.models.blocks import CBFuse, CBLinear, Silence
from pgi_detect.models.heads import DualDetectHead

pytestmark = pytest.mark.usefixtures("single_torch_thread")
TINY = {"class_path": "helpers.backbones.TinyBackbone", "init_args": {}}


@pytest.mark.parametrize("name", sorted(LITERAL_TABLES))
def test_yolov9_tables_are_the_gelan_table_plus_its_auxiliary_part_row_for_row(name):
    literal = LITERAL_TABLES[name]
    assembled = architecture_of(DetectorSpec(name)).table
    assert len(assembled) == len(literal)
    for index, (ours, theirs) in enumerate(zip(assembled, literal)):
        assert (ours.source, ours.block, ours.args) == (theirs.source, theirs.block, theirs.args), f"{name} row {index}"
        # The m/c Silence carries the image for the reversible branch: part of it here, a main row there (the old
        # strip dropped it by a special case).
        if not (ours.block is Silence and name in ("yolov9-m", "yolov9-c")):
            assert ours.auxiliary == theirs.auxiliary, f"{name} row {index}"


@pytest.mark.parametrize(("gelan", "form", "yolov9"), [("gelan-t", "fpn", "yolov9-t"), ("gelan-s", "fpn", "yolov9-s"),
                                                        ("gelan-m", "reversible", "yolov9-m"),
                                                        ("gelan-c", "reversible", "yolov9-c"),
                                                        ("gelan-e", "fpn", "yolov9-e")])
def test_one_option_gives_a_gelan_model_its_official_pgi_form(gelan, form, yolov9):
    with torch.device("meta"):
        ours, official = build_model(gelan, auxiliary=form), build_model(yolov9)
    assert ours.table == official.table
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in official.state_dict().items()}
    assert DetectorSpec(gelan, auxiliary=form).architecture_difference(DetectorSpec(yolov9)) == []
    if yolov9 == "yolov9-c":
        assert count_parameters(ours) == 51_182_080


def test_a_yolov9_name_cannot_take_another_form_and_unknown_forms_are_named():
    with pytest.raises(ValueError, match="yolov9-t carries the 'fpn' auxiliary branch"):
        DetectorSpec("yolov9-t", auxiliary="reversible")
    with pytest.raises(ValueError, match="auxiliary='pgi'"):
        DetectorSpec("gelan-t", auxiliary="pgi")
    with pytest.raises(ValueError, match="gelan-e"):
        build_model("gelan-e", auxiliary="reversible")


def detector(model: str, form: str | None, seed: int = 0) -> Detector:
    torch.manual_seed(seed)
    if model == "tiny":
        return build_detector(DetectorSpec("tiny", 3, backbone=TINY, neck="gelan-t", auxiliary=form))
    return build_model(model, num_classes=3, auxiliary=form)


CASES = [("tiny", form) for form in AUXILIARY_FORMS] + [("gelan-t", "reversible"), ("gelan-t", "deep_supervision")]


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(2, 3, 64, 64, generator=generator)
    targets = torch.tensor([[0, 0, 0.5, 0.5, 0.4, 0.3], [0, 2, 0.3, 0.7, 0.2, 0.2], [1, 1, 0.6, 0.4, 0.5, 0.6]])
    return images, targets


@pytest.mark.parametrize(("model", "form"), CASES)
def test_every_form_trains_two_branches_and_strips_to_the_detector_without_it(model, form):
    pgi = detector(model, form).eval()
    plain = detector(model, None).eval()
    assert pgi.num_branches == 2 and pgi.branch_weights == (0.25, 1.0) and plain.branch_weights == (1.0,)
    stripped = pgi.strip_auxiliary()
    assert stripped.spec == plain.spec
    assert count_parameters(stripped) == count_parameters(plain)
    assert list(stripped.state_dict()) == list(plain.state_dict())
    assert stripped.table == plain.table if model != "tiny" else len(stripped.table) == len(plain.table)
    images, _ = batch()
    with torch.no_grad():
        branches = pgi(images)
        assert len(branches) == 2
        for ours, theirs in zip(stripped(images)[-1], branches[-1]):
            assert torch.equal(ours, theirs)  # the main branch, bit for bit


@pytest.mark.parametrize(("model", "form"), CASES + [("gelan-t", "fpn")])
def test_the_auxiliary_loss_alone_trains_the_main_backbone(model, form):
    """PGI's point: the auxiliary branch's gradient reaches the main backbone (and, through it, the main branch)."""
    pgi = detector(model, form).train()
    images, targets = batch()
    aux_maps = pgi(images)[0]
    loss, _ = DetectionLoss(3, strides=pgi.strides, reg_max=pgi.reg_max)([aux_maps], targets)
    loss.backward()
    first_main_row = pgi.architecture.main_rows[0]
    backbone_grads = [p.grad for p in pgi.layers[first_main_row].parameters() if p.requires_grad]
    assert backbone_grads and all(g is not None and g.abs().sum() > 0 for g in backbone_grads)
    # ...and nothing of the main neck's outputs or the main head: the aux loss reads none of them.
    head = pgi.layers[-1]
    assert isinstance(head, DualDetectHead)
    assert all(p.grad is None for p in head.main.parameters())


@pytest.mark.parametrize(("model", "form"), CASES)
def test_nothing_of_the_auxiliary_part_is_left_for_inference(model, form):
    pgi = detector(model, form)
    fused = pgi.inference_copy()
    kinds = {type(m) for m in fused.modules()}
    assert not kinds & {CBLinear, CBFuse, DualDetectHead, Silence}
    assert not any(row.auxiliary for row in fused.table)
    plain = detector(model, None).inference_copy()
    assert count_parameters(fused) == count_parameters(plain)


def test_the_reversible_form_on_a_custom_backbone_follows_the_neck_or_the_given_widths():
    pgi = detector("tiny", "reversible")
    cblinears = [m for m in pgi.modules() if isinstance(m, CBLinear)]
    assert [m.splits for m in cblinears] == [[64], [64, 96], [64, 96, 128]]  # gelan-t neck widths
    torch.manual_seed(0)
    given = build_detector(DetectorSpec("tiny", 3, backbone=TINY, neck="gelan-t", auxiliary="reversible",
                                        aux_widths=(32, 48, 64)))
    assert [m.splits for m in given.modules() if isinstance(m, CBLinear)] == [[32], [32, 48], [32, 48, 64]]
    with pytest.raises(ValueError, match="aux_widths sets the reversible form"):
        build_detector(DetectorSpec("tiny", 3, backbone=TINY, auxiliary="fpn", aux_widths=(32, 48, 64)))


def test_from_backbone_takes_the_auxiliary_option_and_uses_the_module_as_is():
    backbone = TinyBackbone()
    pgi = Detector.from_backbone(backbone, num_classes=3, neck="gelan-t", auxiliary="fpn", aux_weight=0.5)
    assert pgi.layers[0] is backbone and pgi.branch_weights == (0.5, 1.0)
    stripped = pgi.strip_auxiliary()
    assert stripped.layers[0] is not backbone and stripped.spec.backbone is stripped.layers[0]


def test_spec_round_trips_through_its_dict_form():
    spec = DetectorSpec("tiny", 3, backbone=TINY, neck="gelan-t", auxiliary="reversible", aux_weight=0.3,
                        aux_widths=(32, 48, 64))
    assert DetectorSpec.from_dict(spec.to_dict()) == spec
    assert spec.main_spec() == DetectorSpec("tiny", 3, backbone=TINY, neck="gelan-t", aux_weight=0.3)
    assert DetectorSpec("yolov9-c").main_spec() == DetectorSpec("gelan-c")


@pytest.mark.parametrize("strip", [False, True])
def test_a_custom_backbone_with_pgi_round_trips_through_a_detector_file(tmp_path, strip):
    from pgi_detect.weights import load_detector, save_detector

    source = detector("tiny", "reversible").eval()
    source = source.strip_auxiliary() if strip else source
    save_detector(source, tmp_path / "tiny.pt", class_names=["a", "b", "c"])
    loaded = load_detector(tmp_path / "tiny.pt")
    assert loaded.spec == source.spec and loaded.num_branches == source.num_branches
    images, _ = batch()
    with torch.no_grad():
        assert torch.equal(loaded.predict_raw(images), source.predict_raw(images))
