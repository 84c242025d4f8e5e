"""Official-format weight files made from our models: pickled module trees with the official key layout (as the
official training saves them, in half precision), which the restricted unpickler must read without their classes."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from pgi_detect.models import build_model
from pgi_detect.weights import to_official_state_dict


class OfficialNode(nn.Module):
    """Stands in for the official model classes: an nn.Module tree with the official key layout."""


def official_like_module(state: dict[str, torch.Tensor], names: Sequence[str] | None = None) -> nn.Module:
    root = OfficialNode()
    for key, tensor in state.items():
        *path, leaf = key.split(".")
        node = root
        for part in path:
            if part not in node._modules:
                node.add_module(part, OfficialNode())
            node = node._modules[part]
        if leaf.startswith(("running_", "num_batches")):
            node.register_buffer(leaf, tensor.clone())
        else:
            frozen = "dfl" in key  # the official DFL bins are a requires_grad=False parameter
            node.register_parameter(leaf, nn.Parameter(tensor.clone(), requires_grad=not frozen))
    root.register_buffer("scratch", torch.zeros(3), persistent=False)
    if names is not None:
        root.names = dict(enumerate(names))  # the official training stores {index: name} on the model
    return root


def write_official_checkpoint(path: Path, official: dict[str, torch.Tensor],
                              names: Sequence[str] | None = None) -> Path:
    """An official-style .pt: pickled model objects in half precision plus training metadata."""
    module = official_like_module(official, names).half()
    torch.save({"epoch": -1, "model": module, "ema": None, "opt": {"imgsz": 640}}, path)
    return path


def official_release_file(path: Path, model: str, num_classes: int, seed: int = 0,
                          names: Sequence[str] | None = None) -> nn.Module:
    """Write a random `model` as an official release asset to `path`; returns the model with the fp16-rounded weights
    the file holds (what a loader must reproduce exactly)."""
    torch.manual_seed(seed)
    detector = build_model(model, num_classes=num_classes)
    with torch.no_grad():
        for parameter in detector.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.01)
    detector = detector.half().float()
    write_official_checkpoint(path, to_official_state_dict(detector), names)
    return detector
