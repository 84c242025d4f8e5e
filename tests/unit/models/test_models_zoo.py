"""Zoo models: sizes against the reference table, forward contract, decoding, fusion."""
from __future__ import annotations

import math
from functools import lru_cache

import pytest
import torch

from pgi_detect.models import Detector, build_model, count_gflops, count_parameters, list_models
from pgi_detect.models.heads import DetectHead, head_widths

# reference section 1.1 (nc = 80, 640x640): params train, GFLOPs train, params fused, GFLOPs fused
REFERENCE = {
    "gelan-t": (2_442_640, 10.078, 2_407_632, 9.819),
    "gelan-s": (7_226_208, 27.039, 7_105_888, 26.383),
    "gelan-m": (20_124_000, 77.350, 19_978_672, 76.316),
    "gelan-c": (25_498_752, 103.507, 25_288_768, 102.145),
    "gelan-e": (58_114_432, 192.500, 57_345_920, 188.954),
    "yolov9-t": (3_717_680, 16.525, 3_674_576, 16.167),
    "yolov9-s": (9_804_512, 39.947, 9_659_168, 39.055),
    "yolov9-m": (32_878_432, 133.022, 32_667_400, 131.327),
    "yolov9-c": (51_182_080, 239.877, 50_880_768, 237.641),
    "yolov9-e": (69_529_664, 245.525, 68_669_632, 241.358),
}


@lru_cache(maxsize=None)
def zoo_model(name: str) -> Detector:
    torch.manual_seed(0)
    return build_model(name).eval()


def test_list_models_has_the_ten_configs():
    assert sorted(list_models()) == sorted(REFERENCE)


def test_unknown_model_name_is_reported_with_the_choices():
    with pytest.raises(KeyError, match="gelan-t"):
        build_model("yolov9-x")


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_training_parameter_count_matches_reference(name):
    model = zoo_model(name)
    assert count_parameters(model) == REFERENCE[name][0]
    assert model.num_branches == (2 if name.startswith("yolov9") else 1)


@pytest.mark.parametrize("name", ["gelan-t", "yolov9-t", "gelan-s"])
def test_fused_parameter_count_matches_reference(name):
    torch.manual_seed(0)
    assert count_parameters(build_model(name).eval().fuse()) == REFERENCE[name][2]


@pytest.mark.parametrize("name", ["gelan-t", "yolov9-t", "gelan-c"])
def test_gflops_at_640_within_half_percent(name):
    model = zoo_model(name)
    assert count_gflops(model, 640) == pytest.approx(REFERENCE[name][1], rel=5e-3)


def test_fused_gflops_drop_the_batch_norm_term():
    model = build_model("gelan-t").eval().fuse()
    assert count_gflops(model, 640) == pytest.approx(REFERENCE["gelan-t"][3], rel=5e-3)


def test_dfl_bins_are_a_frozen_parameter():
    dfl = zoo_model("gelan-t").main_head.dfl
    assert not dfl.weight.requires_grad
    assert torch.equal(dfl.weight.view(-1), torch.arange(16.0))
    assert any(p is dfl.weight for p in zoo_model("gelan-t").parameters())


def test_head_bias_init_follows_the_reference():
    head = zoo_model("yolov9-t").layers[-1]
    for branch in (head.aux, head.main):
        for box, cls, stride in zip(branch.box, branch.cls, (8, 16, 32)):
            assert torch.all(box[-1].bias == 1.0)
            assert torch.allclose(cls[-1].bias, torch.tensor(math.log(5 / 80 / (640 / stride) ** 2)))


def test_head_widths_come_from_the_first_input_only():
    head = DetectHead([512, 256, 1024], num_classes=80)
    for box, cls in zip(head.box, head.cls):
        assert box[0].conv.out_channels == 128 and cls[0].conv.out_channels == 512
        assert box[1].conv.groups == 4 and box[2].groups == 4


def test_cls_width_overrides_only_the_class_branch_width():
    assert head_widths(64, 80) == (64, 128) and head_widths(64, 80, cls_width=80) == (64, 80)
    assert head_widths(512, 80) == (128, 512) and head_widths(512, 3) == (128, 512)
    head = DetectHead([64, 96, 128], num_classes=80, cls_width=80)
    assert head.cls_width == 80
    for box, cls in zip(head.box, head.cls):
        assert box[0].conv.out_channels == 64 and cls[0].conv.out_channels == 80 and cls[2].in_channels == 80
    for bad in (0, -8, 80.0, True):
        with pytest.raises(ValueError, match="cls_width"):
            head_widths(64, 80, cls_width=bad)


# YOLOv9-T / GELAN-T README (2.0M params / 7.7 GFLOPs, converted + fused) = the official graph with an 80-wide
# class branch instead of max(64, min(160, 128)) = 128 (reference sections 1.3 and 8.1).
README_T_CLS80 = (2_001_840, 7.7131776)


@pytest.mark.parametrize("name", ["gelan-t", "yolov9-t"])
def test_cls_width_80_reproduces_the_readme_t_inference_size(name):
    torch.manual_seed(0)
    model = build_model(name, cls_width=80)
    assert model.cls_width == 80
    heads = [model.layers[-1]] if model.num_branches == 1 else [model.layers[-1].aux, model.layers[-1].main]
    assert all(cls[0].conv.out_channels == 80 for head in heads for cls in head.cls)
    inference = model.inference_copy()  # stripped + fused, the form the README reports
    params, gflops = count_parameters(inference), count_gflops(inference, 640)
    print(f"{name} cls_width=80 stripped+fused: {params:,} params, {gflops:.4f} GFLOPs")
    assert params == README_T_CLS80[0] and f"{params / 1e6:.1f}M" == "2.0M"
    assert gflops == pytest.approx(README_T_CLS80[1], abs=1e-6) and f"{gflops:.1f}G" == "7.7G"


@pytest.mark.parametrize("name", ["gelan-t", "yolov9-t"])
def test_default_cls_width_keeps_the_official_t_inference_size(name):
    torch.manual_seed(0)
    model = build_model(name)
    assert model.cls_width is None and model.main_head.cls_width == 128
    inference = model.inference_copy()
    assert count_parameters(inference) == REFERENCE["gelan-t"][2]  # 2,407,632
    assert count_gflops(inference, 640) == pytest.approx(REFERENCE["gelan-t"][3], rel=5e-3)


def test_blocks_use_reference_batch_norm_settings():
    norms = [m for m in zoo_model("gelan-t").modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(m.eps == 1e-3 and m.momentum == 0.03 for m in norms)


@pytest.mark.parametrize(("name", "height", "width"), [("gelan-t", 256, 384), ("yolov9-t", 64, 96)])
def test_forward_returns_branches_of_level_maps_for_non_square_input(name, height, width):
    model = build_model(name, num_classes=3)
    images = torch.rand(1, 3, height, width)
    levels = [(1, 67, height // s, width // s) for s in (8, 16, 32)]
    for mode in (True, False):
        model.train(mode)
        with torch.no_grad():
            branches = model(images)
        assert len(branches) == model.num_branches
        for maps in branches:
            assert [tuple(m.shape) for m in maps] == levels
    with torch.no_grad():
        decoded = model.decode(branches[-1])
    assert decoded.shape == (1, 7, sum(h * w for _, _, h, w in levels))


def test_decode_puts_boxes_on_the_anchor_grid_for_non_square_maps():
    model = build_model("gelan-t", num_classes=2)
    shapes = [(32, 48), (16, 24), (8, 12)]
    maps = [torch.zeros(1, 66, h, w) for h, w in shapes]  # uniform bins: 7.5 stride units on every side
    maps[2][0, 64, 3, 5] = 2.0  # class 0 logit of one P5 cell
    decoded = model.decode(maps)
    assert decoded.shape == (1, 6, sum(h * w for h, w in shapes))
    p5_cell = 32 * 48 + 16 * 24 + 3 * 12 + 5
    assert decoded[0, :4, p5_cell].tolist() == pytest.approx([(5 + 0.5) * 32, (3 + 0.5) * 32, 15 * 32, 15 * 32])
    assert decoded[0, 4, p5_cell].item() == pytest.approx(torch.sigmoid(torch.tensor(2.0)).item())
    first_p4 = 32 * 48
    assert decoded[0, :2, first_p4].tolist() == pytest.approx([8.0, 8.0])
    assert decoded[0, 2, 0].item() == pytest.approx(15 * 8)


def test_fuse_keeps_outputs_within_1e_5():
    torch.manual_seed(0)
    model = build_model("yolov9-t", num_classes=5).eval()
    for module in model.modules():  # non-trivial BN statistics, so folding has something to do
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    images = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        before = model(images)
        model.fuse()
        after = model(images)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    for maps_before, maps_after in zip(before, after):
        for a, b in zip(maps_before, maps_after):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_channels_last_gives_the_same_maps():
    torch.manual_seed(0)
    model = build_model("gelan-t", num_classes=4).eval()
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        reference = model(images)[-1]
        model = model.to(memory_format=torch.channels_last)
        result = model(images.to(memory_format=torch.channels_last))[-1]
    for a, b in zip(reference, result):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_anchor_grid_is_cached_per_shape():
    model = build_model("gelan-t", num_classes=1)
    maps = [torch.zeros(1, 65, h, w) for h, w in [(4, 6), (2, 3), (1, 2)]]
    first = model.anchors(maps)
    assert model.anchors(maps)[0] is first[0]
    other = model.anchors([torch.zeros(1, 65, h, w) for h, w in [(8, 8), (4, 4), (2, 2)]])
    assert other[0].shape == (2, 64 + 16 + 4)


def test_silu_is_in_place_only_when_autograd_does_not_record_its_input():
    from pgi_detect.models.blocks import SiLU

    act = SiLU()
    recorded = torch.randn(2, 3, 4, 4, requires_grad=True) * 1.0  # a non-leaf, like a BN output
    before = recorded.detach().clone()
    out = act(recorded)
    assert out.data_ptr() != recorded.data_ptr()
    torch.testing.assert_close(recorded.detach(), before)  # input untouched: autograd needs no clone of it
    torch.testing.assert_close(out, torch.nn.functional.silu(before))
    out.sum().backward()

    plain = before.clone()
    with torch.no_grad():
        out = act(plain)
    assert out.data_ptr() == plain.data_ptr()  # inference writes in place
    torch.testing.assert_close(out, torch.nn.functional.silu(before))
