"""Which zoo model do these weights belong to? Decided from the tensors alone, never from a file name: the keys and
shapes of a state dict are compared with what each of the ten tables builds (on the meta device, so nothing is
allocated) for the class count read from the file's class output conv.

Official files (`model.<idx>.…` keys) are compared under official names, our state dicts (`layers.<idx>.…`) under
ours. Official weights always have the official class-branch width (`max(ch0, min(2 nc, 128))`).
"""
from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from pgi_detect.text import class_count
from pgi_detect.models import ZOO_MODELS, DetectorSpec, architecture_of, build_model
from pgi_detect.weights.state_fit import StateFit, WeightsError, shapes
from pgi_detect.weights.official import official_key_map, official_num_classes

Shapes = dict[str, tuple[int, ...]]
OUR_CLASS_CONV = re.compile(r"^layers\.\d+\.(?:main\.)?cls\.0\.2\.weight$")
ROW_INDEX = re.compile(r"^(?:model|layers)\.(\d+)\.")


@dataclass(frozen=True)
class ZooMatch:
    """The zoo model whose freshly built state dict has exactly the file's keys and shapes."""

    model: str
    num_classes: int
    official_keys: bool  # the file uses official key names


def is_official_state(state: Mapping[str, Tensor]) -> bool:
    return any(key.startswith("model.") for key in state)


def state_num_classes(state: Mapping[str, Tensor], source: str = "weights") -> int:
    """Class count of a zoo state dict (official or our keys), read from the main head's class output conv."""
    if is_official_state(state):
        return official_num_classes(state, source)
    for key, tensor in state.items():
        if OUR_CLASS_CONV.match(key) and ".aux." not in key:
            return int(tensor.shape[0])
    raise WeightsError(f"{source}: no detect-head class conv (cls.0.2) found in the weights")


def identify_zoo_model(state: Mapping[str, Tensor], source: str = "weights") -> ZooMatch:
    """The one zoo model these weights fit exactly; `WeightsError` naming the closest candidate otherwise."""
    official = is_official_state(state)
    num_classes = state_num_classes(state, source)
    actual = shapes(state)
    rows = 1 + max((int(m.group(1)) for m in map(ROW_INDEX.match, state) if m), default=-1)
    # Only tables with as many rows can match; the others are compared only to name the closest one in an error.
    candidates = [name for name in ZOO_MODELS if zoo_rows(name) == rows] or list(ZOO_MODELS)
    differences = {name: _differences(actual, expected_shapes(name, num_classes, official)) for name in candidates}
    matches = [name for name, (count, _) in differences.items() if count == 0]
    if len(matches) == 1:
        return ZooMatch(matches[0], num_classes, official)
    differences.update({name: _differences(actual, expected_shapes(name, num_classes, official))
                        for name in ZOO_MODELS if name not in differences})
    if len(matches) > 1:
        raise WeightsError(f"{source}: the weights fit several zoo models ({', '.join(matches)}); convert them with "
                           "scripts/convert_official.py --model NAME")
    closest = min(differences, key=lambda name: differences[name][0])
    raise WeightsError(f"{source}: the weights ({len(state)} tensors, {class_count(num_classes)}) are none of the zoo "
                       f"models {', '.join(ZOO_MODELS)}; closest is {closest}:{differences[closest][1]}")


@functools.lru_cache(maxsize=None)
def zoo_rows(name: str) -> int:
    """Rows of a zoo model's assembled table."""
    return len(architecture_of(DetectorSpec(name)).table)


@functools.lru_cache(maxsize=32)
def expected_shapes(name: str, num_classes: int, official: bool) -> Shapes:
    """Key -> shape of a freshly built zoo model, under official or our key names."""
    with torch.device("meta"):
        detector = build_model(name, num_classes)
    ours = shapes(detector.state_dict())
    if not official:
        return ours
    return {theirs: ours[key] for key, theirs in official_key_map(detector).items()}


def _differences(actual: Shapes, expected: Shapes) -> tuple[int, str]:
    """How many keys differ, and the formatted lines naming them (0 and "" when keys and shapes all agree)."""
    fit = StateFit.compare(expected, actual)
    return fit.problems, fit.describe(limit=4)
