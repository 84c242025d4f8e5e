"""Weight files: every kind initialises a built detector through `load_weights_into` (strict, class branch
re-initialised and reported, partial only on request), and `read_weights` rebuilds a detector from a file alone."""
from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from pgi_detect.models import Backbone, DetectorSpec, build_detector, build_model
from pgi_detect.weights import (
    CHECKPOINT_RECORD,
    WeightsError,
    checkpoint_record,
    load_weights_into,
    read_weights,
    save_detector,
    to_official_state_dict,
)


pytestmark = pytest.mark.usefixtures("single_torch_thread")


def perturbed(name: str, num_classes: int, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(name, num_classes=num_classes)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.01)
    return model


def training_checkpoint(model, path, class_names=None, spec=None, hyper_parameters=None):
    """The layout DetectionTask writes: a Lightning state dict under `detector.` plus the spec record."""
    spec = spec or DetectorSpec(model.name, model.num_classes)
    record = checkpoint_record(spec, "detector.", class_names, None)
    state = {f"detector.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, CHECKPOINT_RECORD: record, "hyper_parameters": hyper_parameters or {}}, path)
    return path


SIDE_EFFECTS: list[str] = []


def record_side_effect(*args):
    SIDE_EFFECTS.append("called")
    return args


class Trap:
    """Unpickling it calls `record_side_effect`: code a file must not get to run by being loaded."""

    def __reduce__(self):
        return record_side_effect, ("trap",)


class TinyBackbone(Backbone):
    """A custom backbone given from Python: a checkpoint pickles it whole."""

    out_channels = (8, 16, 32)

    def __init__(self) -> None:
        super().__init__()
        self.p3 = nn.Conv2d(3, 8, 3, 8, 1)
        self.p4 = nn.Conv2d(8, 16, 3, 2, 1)
        self.p5 = nn.Conv2d(16, 32, 3, 2, 1)

    def forward(self, images: Tensor) -> list[Tensor]:
        p3 = self.p3(images)
        p4 = self.p4(p3)
        return [p3, p4, self.p5(p4)]


@pytest.mark.parametrize("kind", ["checkpoint", "detector file", "official", "state dict"])
def test_every_file_kind_initialises_the_same_weights(kind, tmp_path):
    source = perturbed("gelan-t", 3)
    path = tmp_path / "weights.pt"
    if kind == "checkpoint":
        training_checkpoint(source, path)
    elif kind == "detector file":
        save_detector(source, path)
    elif kind == "official":
        torch.save({"model": to_official_state_dict(source)}, path)
    else:
        torch.save(source.state_dict(), path)
    target = build_model("gelan-t", num_classes=3)
    report = load_weights_into(target, path)
    total = len(source.state_dict())
    assert report == f"loaded {total}/{total} tensors from {path}"
    loaded = target.state_dict()
    for key, tensor in source.state_dict().items():
        assert torch.equal(loaded[key], tensor), key


def test_another_class_count_reinitialises_only_the_class_branch_and_says_so(tmp_path):
    source = perturbed("gelan-t", 80)
    path = tmp_path / "coco.pt"
    save_detector(source, path)
    target = build_model("gelan-t", num_classes=3)
    fresh = {k: v.clone() for k, v in target.state_dict().items()}
    report = load_weights_into(target, path)
    assert "class branch re-initialised for 3 classes" in report
    trained = source.state_dict()
    for key, tensor in target.state_dict().items():
        expected = fresh[key] if trained[key].shape != tensor.shape else trained[key]
        assert torch.equal(tensor, expected), key


def test_weights_of_another_model_are_an_error_naming_the_keys(tmp_path):
    save_detector(perturbed("gelan-t", 3), tmp_path / "gelan-t.pt")
    with pytest.raises(WeightsError, match=r"(?s)gelan-t\.pt: weights do not fit model 'gelan-s'.*shape mismatches"):
        load_weights_into(build_model("gelan-s", num_classes=3), tmp_path / "gelan-t.pt")
    torch.save({"unrelated.weight": torch.zeros(3)}, tmp_path / "random.pt")
    with pytest.raises(WeightsError, match=r"(?s)missing \(\d+\).*unexpected \(1\): unrelated.weight"):
        load_weights_into(build_model("gelan-t", num_classes=3), tmp_path / "random.pt")


def test_partial_loading_loads_what_fits_and_reports_the_rest(tmp_path):
    source = perturbed("gelan-t", 3)
    state = source.state_dict()
    dropped = next(iter(state))
    torch.save({k: v for k, v in state.items() if k != dropped}, tmp_path / "partial.pt")
    target = build_model("gelan-t", num_classes=3)
    report = load_weights_into(target, tmp_path / "partial.pt", partial=True)
    assert f"loaded {len(state) - 1}/{len(state)}" in report and f"missing (1): {dropped}" in report


def test_weights_of_the_other_branch_count_get_a_hint(tmp_path):
    save_detector(perturbed("yolov9-t", 3), tmp_path / "dual.pt")
    with pytest.raises(WeightsError, match="hint: these are yolov9"):
        load_weights_into(build_model("gelan-t", num_classes=3), tmp_path / "dual.pt")
    save_detector(perturbed("gelan-t", 3), tmp_path / "single.pt")
    with pytest.raises(WeightsError, match="hint: these are single-branch weights"):
        load_weights_into(build_model("yolov9-t", num_classes=3), tmp_path / "single.pt")


def test_read_weights_rebuilds_from_the_record_and_from_detector_files(tmp_path):
    source = perturbed("yolov9-t", 2)
    loaded = read_weights(training_checkpoint(source, tmp_path / "task.ckpt", ["ball", "cup"]))
    assert (loaded.kind, loaded.spec.model, loaded.class_names) == ("checkpoint", "yolov9-t", ["ball", "cup"])
    trained = source.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in loaded.detector.state_dict().items())
    save_detector(source, tmp_path / "file.pt", class_names=["ball", "cup"], category_ids=[3, 7])
    loaded = read_weights(tmp_path / "file.pt")
    assert (loaded.kind, loaded.class_names, loaded.category_ids) == ("detector file", ["ball", "cup"], [3, 7])
    torch.save(to_official_state_dict(source), tmp_path / "official.pt")  # the model is told by the weights
    loaded = read_weights(tmp_path / "official.pt")
    assert (loaded.kind, loaded.spec.model, loaded.spec.num_classes) == ("official", "yolov9-t", 2)
    assert all(torch.equal(v, trained[k]) for k, v in loaded.detector.state_dict().items())
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "plain.pt")
    assert read_weights(tmp_path / "plain.pt").kind == "state dict"
    (tmp_path / "text.pt").write_text("not weights")
    with pytest.raises(WeightsError, match=r"text\.pt: not a readable weights file"):
        read_weights(tmp_path / "text.pt")


def test_error_for_another_model_says_which_model_the_file_holds(tmp_path):
    torch.save(to_official_state_dict(perturbed("gelan-s", 80)), tmp_path / "official.pt")
    with pytest.raises(WeightsError, match="the file holds gelan-s weights \\(80 classes\\)"):
        load_weights_into(build_model("gelan-t", num_classes=80), tmp_path / "official.pt")


def test_a_checkpoint_is_read_without_running_the_code_it_pickles(tmp_path):
    """Objects a checkpoint pickles besides the weights (hyperparameters, callback states) stay inert stubs."""
    source = perturbed("gelan-t", 2)
    path = training_checkpoint(source, tmp_path / "task.ckpt", ["a", "b"], hyper_parameters={"callback": Trap()})
    SIDE_EFFECTS.clear()
    loaded = read_weights(path)
    target = build_model("gelan-t", num_classes=2)
    load_weights_into(target, path)
    assert SIDE_EFFECTS == []
    assert (loaded.kind, loaded.class_names) == ("checkpoint", ["a", "b"])
    trained = source.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in loaded.detector.state_dict().items())
    assert all(torch.equal(v, trained[k]) for k, v in target.state_dict().items())


def test_a_checkpoint_that_pickles_its_custom_backbone_module_is_rebuilt(tmp_path):
    torch.manual_seed(0)
    spec = DetectorSpec("tiny", 2, backbone=TinyBackbone(), neck="gelan-t")
    source = build_detector(spec)
    loaded = read_weights(training_checkpoint(source, tmp_path / "task.ckpt", spec=spec))
    assert isinstance(loaded.detector.layers[0], TinyBackbone) and loaded.spec.model == "tiny"
    trained = source.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in loaded.detector.state_dict().items())


@pytest.mark.parametrize("keys", ["ours", "official"])
def test_weights_without_a_class_conv_are_an_error_naming_the_file(tmp_path, keys):
    state = {"layers.0.conv.weight" if keys == "ours" else "model.0.conv.weight": torch.zeros(3)}
    torch.save(state, tmp_path / "headless.pt")
    with pytest.raises(WeightsError, match=r"headless\.pt: no detect-head class conv"):
        read_weights(tmp_path / "headless.pt")
