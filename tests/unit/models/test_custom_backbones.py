"""Custom backbones (the documented subclass example and a timm model) train one step and run through the
Predictor (strip + fuse must work on them too). Example code matches docs/inference.md."""
from __future__ import annotations

from dataclasses import replace

import copy

import pytest
import torch
from torch import Tensor

from pgi_detect.geometry import NMS_DETECT
from pgi_detect.inference import Predictor
from pgi_detect.loss import DetectionLoss
from helpers.backbones import TinyBackbone
from pgi_detect.models import Detector, TimmBackbone
from conftest import REPO_ROOT


pytestmark = pytest.mark.usefixtures("single_torch_thread")


def train_one_step(detector: Detector, size: int = 64) -> tuple[float, dict[str, Tensor]]:
    """One SGD step on two random images with three boxes; returns the loss and the weights before the step."""
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, size, size, generator=generator)
    targets = torch.tensor(
        [[0, 0, 0.5, 0.5, 0.4, 0.3], [0, 2, 0.3, 0.7, 0.2, 0.2], [1, 1, 0.6, 0.4, 0.5, 0.6]], dtype=torch.float32
    )
    criterion = DetectionLoss(detector.num_classes, strides=detector.strides, reg_max=detector.reg_max)
    optimizer = torch.optim.SGD(detector.parameters(), lr=0.01, momentum=0.9)
    before = {k: v.detach().clone() for k, v in detector.state_dict().items() if v.is_floating_point()}
    detector.train()
    loss, items = criterion(detector(images), targets)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(items).all()
    return float(loss.detach()), before


def changed_prefixes(detector: Detector, before: dict[str, Tensor]) -> set[str]:
    after = detector.state_dict()
    return {k.split(".")[1] for k, v in before.items() if "weight" in k and not torch.equal(v, after[k])}


@pytest.mark.parametrize(
    "make_backbone, neck",
    [
        (TinyBackbone, "gelan-t"),
        (lambda: TimmBackbone("resnet18", pretrained=False), "gelan-t"),
    ],
    ids=["subclass", "timm-resnet18"],
)
def test_custom_backbone_trains_one_step_and_predicts(make_backbone, neck: str) -> None:
    torch.manual_seed(0)
    detector = Detector.from_backbone(make_backbone(), num_classes=3, neck=neck)
    assert detector.num_branches == 1 and tuple(detector.strides) == (8, 16, 32)

    loss, before = train_one_step(detector)

    assert loss == loss and 0 < loss < float("inf")
    changed = changed_prefixes(detector, before)
    assert "0" in changed  # backbone (layer 0) received gradients
    assert str(len(detector.layers) - 1) in changed  # and the detect head

    detector.eval()
    images = torch.rand(1, 3, 96, 64)
    with torch.no_grad():
        expected = copy.deepcopy(detector).predict_raw(images)
    predictor = Predictor(detector, ["a", "b", "c"], img_size=64, nms=replace(NMS_DETECT, conf_thres=1e-4))
    assert torch.allclose(predictor.raw_predictions(images), expected, atol=1e-4, rtol=1e-4)
    result = predictor(torch.randint(0, 255, (50, 70, 3), dtype=torch.uint8).numpy())
    assert result.image_shape == (50, 70)


def test_checkpoint_with_backbone_spec_rebuilds(tmp_path) -> None:
    """A version-0.1 DetectionTask checkpoint (no spec record) whose hyperparameters hold a LightningCLI backbone
    spec loads for inference."""
    from pgi_detect.weights import read_weights

    spec = {"class_path": "pgi_detect.models.TimmBackbone",
            "init_args": {"model_name": "test_efficientnet", "pretrained": True}}  # no download on rebuild
    torch.manual_seed(0)
    detector = Detector.from_backbone(TimmBackbone("test_efficientnet"), num_classes=2, neck="gelan-t")
    state = {f"detector.{k}": v for k, v in detector.state_dict().items()}
    payload = {"state_dict": state, "hyper_parameters": {"model": "tiny", "num_classes": 2, "backbone": spec,
                                                         "neck": "gelan-t", "class_names": ["x", "y"]}}
    torch.save(payload, tmp_path / "custom.ckpt")
    loaded = read_weights(tmp_path / "custom.ckpt")
    assert loaded.class_names == ["x", "y"]
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.detector.eval().predict_raw(images), detector.eval().predict_raw(images))


def test_timm_experiment_config_parses(capsys: pytest.CaptureFixture[str]) -> None:
    import inspect

    from pgi_detect.cli.main import build_cli
    from pgi_detect.training import DetectionTask

    assert "backbone" in inspect.signature(DetectionTask).parameters
    config = REPO_ROOT / "experiments" / "timm-backbone-synthetic.yaml"
    with pytest.raises(SystemExit) as exit_info:
        build_cli(["fit", "--config", str(config), "--print_config"], run=True)
    assert exit_info.value.code in (0, None)
    assert "pgi_detect.models.TimmBackbone" in capsys.readouterr().out


def test_detection_task_trains_a_custom_backbone_and_its_checkpoint_reloads(tmp_path) -> None:
    """DetectionTask(backbone=...) builds the backbone detector, takes a training step through the recipe loss, and
    its spec rebuilds the same architecture for inference."""
    from pgi_detect.models import build_detector
    from pgi_detect.training import DetectionTask

    task = DetectionTask(model="tiny-custom", backbone=TinyBackbone(), neck="gelan-t", num_classes=2, batch_size=2)
    assert isinstance(task.detector.layers[0], TinyBackbone)
    images = torch.rand(2, 3, 64, 64)
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.4, 0.4], [1, 0, 0.3, 0.6, 0.3, 0.2]])
    before = copy.deepcopy(task.detector.state_dict())
    optimizer = torch.optim.SGD(task.parameters(), lr=0.01)
    loss, _ = task.criterion(task(images), targets)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    changed = [k for k, v in task.detector.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("layers.0.") for k in changed), "backbone weights did not train"

    rebuilt = build_detector(task.detector.spec)
    shapes = {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in task.detector.state_dict().items()}
    rebuilt.load_state_dict(task.detector.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt.eval().predict_raw(images), task.detector.eval().predict_raw(images))
