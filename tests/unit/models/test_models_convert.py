"""Official weight import: golden parity, key mapping, errors, the restricted unpickler, the CLI."""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from conftest import load_script_module
from helpers.official import write_official_checkpoint
from pgi_detect.models import build_model
from pgi_detect.weights import load_detector
from pgi_detect.weights import WeightsError
from pgi_detect.weights.official import (
    PickleStub,
    convert_official,
    load_official_state_dict,
    official_key_map,
    read_official_checkpoint,
    restricted_torch_load,
    to_official_state_dict,
)

SIDE_EFFECTS: list[str] = []


def load_golden(golden_dir: Path) -> dict:
    return torch.load(golden_dir / "model_gelan-t.pt", weights_only=True)


@pytest.mark.numeric
def test_golden_gelan_t_outputs_match_the_official_model(golden_dir):
    # A float32 forward of ~100 convolutions recorded on another CPU: convolution kernels sum in another order on
    # other instruction sets (~1e-6 on these maps); 1e-5 holds that on any CPU, a wrong weight or layer moves maps by
    # 1e-2 or more.
    golden = load_golden(golden_dir)
    model = convert_official(golden["state_dict"], "gelan-t").eval()
    with torch.no_grad():
        (maps,) = model(golden["x"])
        decoded = model.decode(maps)
    for ours, theirs in zip(maps, golden["raw"], strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(decoded, golden["y"], rtol=1e-5, atol=1e-5)


def test_official_key_names_match_the_official_gelan_t_state_dict(golden_dir):
    golden = load_golden(golden_dir)["state_dict"]
    assert sorted(official_key_map(build_model("gelan-t")).values()) == sorted(golden)


def test_official_key_names_of_dual_models():
    with torch.device("meta"):
        keys = set(official_key_map(build_model("yolov9-c")).values())
    for key in (
        "model.1.conv.weight",
        "model.4.cv1.conv.weight",  # ADown strided branch
        "model.4.cv2.conv.weight",  # ADown pooled branch
        "model.3.cv2.0.m.0.cv1.conv1.conv.weight",  # RepNCSPELAN4 > RepNCSP > RepNBottleneck > RepConvN 3x3
        "model.3.cv3.0.m.0.cv1.conv2.bn.running_var",  # ... RepConvN 1x1
        "model.10.cv5.conv.weight",  # SPPELAN merge
        "model.25.conv.bias",  # CBLinear
        "model.38.cv2.2.2.bias",  # aux box output
        "model.38.cv5.0.2.weight",  # main class output
        "model.38.dfl.conv.weight",
        "model.38.dfl2.conv.weight",
    ):
        assert key in keys, key


def test_round_trip_through_official_keys_restores_every_tensor():
    torch.manual_seed(0)
    source = build_model("yolov9-t", num_classes=5)
    official = to_official_state_dict(source)
    assert any(".cv4." in k for k in official) and all(k.startswith("model.") for k in official)
    torch.manual_seed(1)
    target = load_official_state_dict(build_model("yolov9-t", num_classes=5), official)
    target_state = target.state_dict()
    for key, tensor in source.state_dict().items():
        assert torch.equal(target_state[key], tensor), key


def test_mismatches_are_listed_by_key(golden_dir):
    official = dict(load_golden(golden_dir)["state_dict"])
    del official["model.9.cv5.conv.weight"]
    official["model.99.extra.weight"] = torch.zeros(1)
    with pytest.raises(WeightsError) as error:
        convert_official(official, "gelan-t")
    message = str(error.value)
    assert "missing official keys (1): model.9.cv5.conv.weight" in message
    assert "unexpected official keys (1): model.99.extra.weight" in message
    with pytest.raises(WeightsError, match=r"shape mismatches .*model\.0\.conv\.weight \(16, 3, 3, 3\)"):
        convert_official(load_golden(golden_dir)["state_dict"], "gelan-s")


def test_weights_of_the_other_branch_count_get_a_hint():
    dual = to_official_state_dict(build_model("yolov9-t", num_classes=3))
    with pytest.raises(WeightsError, match=r"hint: these are yolov9 \(dual-branch\) weights"):
        convert_official(dual, "gelan-t")
    single = to_official_state_dict(build_model("gelan-t", num_classes=3))
    with pytest.raises(WeightsError, match=r"hint: these are single-branch weights"):
        convert_official(single, "yolov9-t")
    with pytest.raises(WeightsError) as error:  # same branch count, another size: no hint
        convert_official(single, "gelan-s")
    assert "hint" not in str(error.value)


@pytest.mark.parametrize(("num_classes", "class_width"), [(3, 64), (100, 128)])
def test_other_class_count_keeps_everything_but_the_class_branch(golden_dir, num_classes, class_width):
    official = load_golden(golden_dir)["state_dict"]
    state = convert_official(official, "gelan-t", num_classes=num_classes).state_dict()
    assert state["layers.22.cls.0.2.weight"].shape == (num_classes, class_width, 1, 1)
    assert torch.equal(state["layers.22.box.1.1.conv.weight"], official["model.22.cv2.1.1.conv.weight"])
    deep_repconv = "layers.8.stage1.0.bottlenecks.2.rep.dense.conv.weight"
    assert torch.equal(state[deep_repconv], official["model.8.cv2.0.m.2.cv1.conv1.conv.weight"])
    same_width = class_width == 128  # gelan-t's class width is max(64, min(2 nc, 128))
    assert torch.equal(state["layers.22.cls.0.1.conv.weight"], official["model.22.cv3.0.1.conv.weight"]) == same_width


# ---------------------------------------------------------------- restricted unpickling
def record_side_effect(*args):
    SIDE_EFFECTS.append("called")
    return args


class UnknownThing:
    def __init__(self) -> None:
        self.weights = torch.arange(4.0)
        self.label = "dummy"

    def __setstate__(self, state) -> None:
        SIDE_EFFECTS.append("setstate")
        self.__dict__.update(state)


class Booby:
    def __reduce__(self):
        return record_side_effect, ("boom",)


def test_restricted_unpickler_turns_unknown_classes_into_inert_stubs(tmp_path):
    path = tmp_path / "dummy.pt"
    torch.save({"thing": UnknownThing(), "trap": Booby(), "plain": torch.ones(2)}, path)
    SIDE_EFFECTS.clear()
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)  # what the safe default refuses ...
    loaded = restricted_torch_load(path)  # ... loads without importing or running anything
    assert SIDE_EFFECTS == []
    thing = loaded["thing"]
    assert isinstance(thing, PickleStub) and not isinstance(thing, UnknownThing)
    assert thing.stub_origin.endswith("UnknownThing")
    assert torch.equal(thing.weights, torch.arange(4.0)) and thing.label == "dummy"
    assert isinstance(loaded["trap"], PickleStub) and loaded["trap"].stub_args == ("boom",)
    assert torch.equal(loaded["plain"], torch.ones(2))


def test_pickled_official_model_is_read_without_its_classes(tmp_path):
    torch.manual_seed(0)
    source = build_model("yolov9-t", num_classes=4)
    official = to_official_state_dict(source)
    path = tmp_path / "yolov9-t.pt"
    write_official_checkpoint(path, official)
    state = read_official_checkpoint(path)
    assert set(state) == set(official)
    for key, tensor in official.items():
        expected = tensor.half().float() if tensor.is_floating_point() else tensor
        assert torch.equal(state[key], expected), key


def test_ddp_prefixed_state_dict_file_reads_with_official_keys(tmp_path):
    torch.manual_seed(0)
    source = build_model("gelan-t", num_classes=3)
    official = to_official_state_dict(source)
    path = tmp_path / "ddp.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in official.items()}}, path)
    state = read_official_checkpoint(path)
    assert set(state) == set(official)
    converted = convert_official(state, "gelan-t").state_dict()
    for key, tensor in source.state_dict().items():
        assert torch.equal(converted[key], tensor), key


def run_cli(*args: str) -> int:
    return load_script_module("convert_official").main(list(args))


def test_cli_converts_a_state_dict_file_that_load_detector_reads(golden_dir, tmp_path):
    golden = load_golden(golden_dir)
    output = tmp_path / "ours.pt"
    weights = golden_dir / "model_gelan-t.pt"
    assert run_cli("--weights", str(weights), "--model", "gelan-t", "--output", str(output)) == 0
    model = load_detector(output)
    assert model.name == "gelan-t" and model.num_classes == 80 and not model.training
    with torch.no_grad():
        torch.testing.assert_close(model.predict_raw(golden["x"]), golden["y"], rtol=1e-5, atol=1e-5)


def test_cli_strips_a_pickled_yolov9_checkpoint(tmp_path):
    torch.manual_seed(0)
    source = build_model("yolov9-t", num_classes=4).half().float().eval()  # fp16-exact weights
    weights, output = tmp_path / "yolov9-t.pt", tmp_path / "gelan.pt"
    write_official_checkpoint(weights, to_official_state_dict(source))
    assert run_cli("--weights", str(weights), "--model", "yolov9-t", "--strip", "--output", str(output)) == 0
    model = load_detector(output)
    assert (model.name, model.num_branches, model.num_classes) == ("gelan-t", 1, 4)
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = source(images)[-1]
        for ours, theirs in zip(model(images)[-1], expected):
            assert torch.equal(ours, theirs)


def test_cli_reads_the_architecture_and_class_names_from_the_file(tmp_path):
    torch.manual_seed(0)
    weights, output = tmp_path / "downloaded.pt", tmp_path / "gelan.pt"
    write_official_checkpoint(weights, to_official_state_dict(build_model("yolov9-t", num_classes=2)), ["cat", "dog"])
    assert run_cli("--weights", str(weights), "--strip", "--output", str(output)) == 0
    saved = torch.load(output, weights_only=True)
    assert (saved["spec"]["model"], saved["spec"]["auxiliary"], saved["class_names"]) == ("gelan-t", None, ["cat", "dog"])
    assert run_cli("--weights", str(weights), "--num-classes", "3", "--output", str(output)) == 0
    assert torch.load(output, weights_only=True)["class_names"] is None  # 2 names no longer describe 3 classes


def test_cli_reports_a_wrong_architecture(tmp_path, capsys):
    weights = tmp_path / "gelan-t.pt"
    torch.save(to_official_state_dict(build_model("gelan-t", num_classes=2)), weights)
    assert run_cli("--weights", str(weights), "--model", "yolov9-t", "--output", str(tmp_path / "x.pt")) == 1
    assert "missing official keys" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["gelan-t", "yolov9-t"])
def test_cls_width_override_survives_save_and_load(tmp_path, name):
    from pgi_detect.weights import save_detector

    torch.manual_seed(0)
    source = build_model(name, num_classes=3, cls_width=80).eval()
    if name == "yolov9-t":
        source = source.strip_auxiliary()  # the stripped copy keeps the width, and saves it
    save_detector(source, tmp_path / "model.pt")
    assert torch.load(tmp_path / "model.pt", weights_only=True)["spec"]["cls_width"] == 80
    model = load_detector(tmp_path / "model.pt")
    assert (model.name, model.cls_width, model.num_classes, model.num_branches) == ("gelan-t", 80, 3, 1)
    assert model.main_head.cls[0][0].conv.out_channels == 80
    assert model.state_dict().keys() == source.state_dict().keys()
    source_state = source.state_dict()
    assert all(torch.equal(v, source_state[k]) for k, v in model.state_dict().items())
    images = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(model.predict_raw(images), source.predict_raw(images))


def test_version_0_1_files_without_a_spec_still_load(tmp_path):
    torch.manual_seed(0)
    source = build_model("gelan-t", num_classes=2).eval()
    legacy = {"format": "pgi_detect.converted/1", "model": "gelan-t", "num_classes": 2, "source_name": "gelan-t",
              "stripped": False, "state_dict": source.state_dict()}
    torch.save(legacy, tmp_path / "model.pt")
    model = load_detector(tmp_path / "model.pt")
    source_state = source.state_dict()
    assert all(torch.equal(v, source_state[k]) for k, v in model.state_dict().items())
    assert model.cls_width is None and model.main_head.cls[0][0].conv.out_channels == 64  # max(64, min(2·2, 128))
