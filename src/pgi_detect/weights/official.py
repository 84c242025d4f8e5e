"""Official YOLOv9 / GELAN weight files: reading them safely and translating their keys to ours.

Official state-dict keys are `model.<idx>.<official submodule path>`; ours are `layers.<idx>.<our path>`
with the same idx (the tables keep the official row order), so only the submodule names need translating.
Each block declares `OFFICIAL_NAMES` (our child path prefix -> official name); `official_key` walks them.

Official `.pt` files pickle whole model objects. `read_official_checkpoint` loads them with a restricted
unpickler: only tensor/storage reconstruction and plain containers are resolved to real objects; every other
class (the official model classes, numpy, pathlib, ...) becomes an inert stub that merely records its
state, so no foreign code is imported or run.
"""
from __future__ import annotations

import collections
import pickle
import re
import types
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from pgi_detect.models import Detector, DetectorSpec, build_model
from pgi_detect.weights.state_fit import StateFit, WeightsError, branch_hint, shapes


# ---------------------------------------------------------------------- key translation
def official_key(module: nn.Module, key: str) -> str:
    """Translate a state-dict key relative to `module` from our names to the official ones."""
    names: Mapping[str, str] = getattr(type(module), "OFFICIAL_NAMES", {})
    for ours, theirs in names.items():
        if key == ours:
            return theirs
        if key.startswith(ours + "."):
            rest = key[len(ours) + 1 :]
            return f"{theirs}.{official_key(module.get_submodule(ours), rest)}"
    head, _, rest = key.partition(".")
    child = module._modules.get(head)
    if not rest or child is None:
        return key
    return f"{head}.{official_key(child, rest)}"


def official_key_map(detector: Detector) -> dict[str, str]:
    """Our state-dict key -> official key, for every entry of `detector.state_dict()`."""
    mapping = {}
    for key in detector.state_dict():
        _, index, rest = key.split(".", 2)
        mapping[key] = f"model.{index}.{official_key(detector.layers[int(index)], rest)}"
    return mapping


def to_official_state_dict(detector: Detector) -> dict[str, Tensor]:
    """Our weights under official key names (what the official code would load for the same config)."""
    state = detector.state_dict()
    return {theirs: state[ours] for ours, theirs in official_key_map(detector).items()}


def load_official_state_dict(
    detector: Detector,
    official: Mapping[str, Tensor],
    reinit: tuple[str, ...] = (),
    source: str = "weights",
) -> Detector:
    """Copy official tensors into `detector` (in place), failing with every missing, unexpected and
    mis-shaped key named. Our keys matching a regex in `reinit` may differ in shape: they keep their fresh
    initialisation instead (used for a new class count). Keys are official ones (`model.<idx>.…`); a DDP
    `module.` prefix is removed by `read_official_checkpoint`."""
    mapping = official_key_map(detector)
    ours_state = detector.state_dict()
    ours_of = {theirs: ours for ours, theirs in mapping.items()}
    fit = StateFit.compare({theirs: tuple(ours_state[ours].shape) for ours, theirs in mapping.items()},
                           shapes(official), lambda theirs: any(re.search(p, ours_of[theirs]) for p in reinit))
    if fit.problems:
        titles = ("missing official keys", "unexpected official keys", "shape mismatches (official vs ours)")
        dual_file = any(".dfl2." in k for k in official)  # only the official dual head has a second DFL
        raise WeightsError(f"{source} do not fit model {detector.name!r} (nc={detector.num_classes})"
                           f"{fit.describe(titles)}{branch_hint(detector.num_branches, dual_file)}")
    with torch.no_grad():
        for theirs, tensor in official.items():
            if theirs not in fit.may_differ:
                ours_state[ours_of[theirs]].copy_(tensor.to(ours_state[ours_of[theirs]].dtype))
    return detector


# Class branches: their output conv has nc channels, and their width is max(ch0, min(2 nc, 128)).
CLASS_BRANCH_KEYS = (r"\.cls\.\d+\.",)


def official_num_classes(official: Mapping[str, Tensor], source: str = "weights") -> int:
    """Class count of official weights, read from the main head's class output conv."""
    for pattern in (r"^model\.\d+\.cv5\.0\.2\.weight$", r"^model\.\d+\.cv3\.0\.2\.weight$"):
        for key, tensor in official.items():
            if re.match(pattern, key):
                return int(tensor.shape[0])
    raise WeightsError(f"{source}: no detect-head class conv (cv3/cv5) found in the official weights")


def convert_official(
    official: Mapping[str, Tensor],
    model: str,
    num_classes: int | None = None,
    strip: bool = False,
    source: str = "weights",
) -> Detector:
    """Build `model` and fill it with official weights (a state dict with `model.<idx>` keys).

    A `num_classes` other than the checkpoint's (for fine-tuning) re-initialises the class output convs, and
    the rest of a class branch where its width depends on nc (t/s); everything else is loaded.
    `strip=True` returns the inference form (yolov9-x -> gelan-x).
    """
    DetectorSpec(model)  # early, clear error for unknown names
    checkpoint_classes = official_num_classes(official, source)
    num_classes = num_classes or checkpoint_classes
    detector = build_model(model, num_classes)
    reinit = CLASS_BRANCH_KEYS if num_classes != checkpoint_classes else ()
    load_official_state_dict(detector, official, reinit=reinit, source=source)
    return detector.strip_auxiliary() if strip else detector


# ---------------------------------------------------------------------- restricted unpickling
class PickleStub:
    """Stand-in for any class the restricted unpickler refuses to import; keeps the pickled state."""

    stub_origin = "?"

    def __init__(self, *args, **kwargs) -> None:
        self.stub_args = args
        self.stub_kwargs = kwargs

    def __setstate__(self, state) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.stub_state = state

    def __repr__(self) -> str:
        return f"<stub of {self.stub_origin}>"


_STUBS: dict[str, type] = {}


def _stub_class(module: str, name: str) -> type:
    origin = f"{module}.{name}"
    if origin not in _STUBS:
        _STUBS[origin] = type(name, (PickleStub,), {"stub_origin": origin, "__module__": "pgi_detect.stubs"})
    return _STUBS[origin]


_SAFE_GLOBALS: dict[tuple[str, str], object] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    ("torch._tensor", "_rebuild_from_type_v2"): torch._tensor._rebuild_from_type_v2,
    ("torch.nn.parameter", "Parameter"): nn.Parameter,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("_codecs", "encode"): __import__("_codecs").encode,
}
if hasattr(torch._utils, "_rebuild_tensor_v3"):
    _SAFE_GLOBALS[("torch._utils", "_rebuild_tensor_v3")] = torch._utils._rebuild_tensor_v3
for _builtin in (set, frozenset, dict, list, tuple, slice, complex, bytearray, bytes, str, int, float, bool):
    _SAFE_GLOBALS[("builtins", _builtin.__name__)] = _builtin
    _SAFE_GLOBALS[("__builtin__", _builtin.__name__)] = _builtin


def _safe_torch_attribute(module: str, name: str):
    """torch dtypes and storage classes, which tensors reference by name."""
    if module != "torch":
        return None
    value = getattr(torch, name, None)
    if isinstance(value, torch.dtype):
        return value
    if name.endswith("Storage") and isinstance(value, type):
        return value
    return None


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only allow-listed globals; everything else becomes a `PickleStub` subclass."""

    def find_class(self, module: str, name: str):
        safe = _SAFE_GLOBALS.get((module, name)) or _safe_torch_attribute(module, name)
        return safe if safe is not None else _stub_class(module, name)


def _restricted_load(file, **kwargs):
    return RestrictedUnpickler(file, **kwargs).load()


# A stand-in for the `pickle` module, handed to torch.load so its storage handling still applies.
restricted_pickle = types.SimpleNamespace(
    Unpickler=RestrictedUnpickler, load=_restricted_load, __name__="pgi_detect.restricted_pickle"
)


def restricted_torch_load(path: str | Path):
    """torch.load that never imports classes from the file (see module docstring)."""
    return torch.load(path, map_location="cpu", pickle_module=restricted_pickle, weights_only=False)


def stub_state_dict(module, prefix: str = "") -> dict[str, Tensor]:
    """Rebuild a state dict from a pickled nn.Module that was loaded as stubs."""
    attributes = vars(module)
    state: dict[str, Tensor] = {}
    for name, tensor in (attributes.get("_parameters") or {}).items():
        if tensor is not None:
            state[prefix + name] = tensor.detach()
    non_persistent = attributes.get("_non_persistent_buffers_set") or set()
    for name, tensor in (attributes.get("_buffers") or {}).items():
        if tensor is not None and name not in non_persistent:
            state[prefix + name] = tensor
    for name, child in (attributes.get("_modules") or {}).items():
        if child is not None:
            state.update(stub_state_dict(child, f"{prefix}{name}."))
    return state


def _is_tensor_mapping(value) -> bool:
    return isinstance(value, Mapping) and bool(value) and all(isinstance(v, Tensor) for v in value.values())


def extract_state_dict(obj, source: str = "checkpoint") -> dict[str, Tensor]:
    """The model state dict inside a loaded checkpoint: a plain state dict, `{'state_dict': ...}`, or an
    official `{'model': <Model>, 'ema': <Model> | None, ...}` (the EMA weights win when present)."""
    if _is_tensor_mapping(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in ("ema", "model", "state_dict"):
            value = obj.get(key)
            if value is None:
                continue
            if _is_tensor_mapping(value):
                return dict(value)
            if isinstance(value, PickleStub):
                return stub_state_dict(value)
            if isinstance(value, nn.Module):
                return value.state_dict()
    if isinstance(obj, PickleStub):
        return stub_state_dict(obj)
    raise WeightsError(f"{source}: found no model weights (got {type(obj).__name__})")


@dataclass
class OfficialWeights:
    """What an official `.pt` (or a plain state-dict file) holds: float32 weights under the file's own key names
    (a DDP `module.` prefix removed) and the class names pickled with the model, when there are any."""

    state: dict[str, Tensor]
    class_names: list[str] | None


def official_class_names(obj) -> list[str] | None:
    """The `names` the official training stores on its model object (`{index: name}` or a list), if any."""
    candidates = [obj.get(key) for key in ("ema", "model")] if isinstance(obj, Mapping) else [obj]
    for candidate in candidates:
        names = getattr(candidate, "names", None) if isinstance(candidate, (PickleStub, nn.Module)) else None
        if isinstance(names, Mapping):
            return [str(names[k]) for k in sorted(names)]
        if isinstance(names, (list, tuple)):
            return [str(name) for name in names]
    return None


def official_weights(obj, source: str = "checkpoint") -> OfficialWeights:
    """`OfficialWeights` from an already loaded official file or state-dict file (see `extract_state_dict`). This is
    the one place a DataParallel / DDP `module.` key prefix is removed."""
    state = extract_state_dict(obj, source=source)
    state = {k.removeprefix("module."): v.float() if v.is_floating_point() else v for k, v in state.items()}
    return OfficialWeights(state, official_class_names(obj))


def load_untrusted(path: str | Path):
    """A weights file that may come from anywhere: `torch.load(weights_only=True)`, or, for pickled objects, the
    restricted unpickler (classes become inert stubs). Unreadable files raise `WeightsError` naming the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass  # pickled model objects (official files): read below without importing their classes
    except Exception as error:  # torch reports corrupt files with several error types
        raise WeightsError(f"{path}: not a readable weights file ({type(error).__name__}: {error})") from error
    try:
        return restricted_torch_load(path)
    except Exception as error:
        raise WeightsError(f"{path}: not a readable weights file ({type(error).__name__}: {error})") from error


def read_official_file(path: str | Path) -> OfficialWeights:
    """Weights and class names of an official .pt file or a plain state-dict file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found")
    return official_weights(load_untrusted(path), source=str(path))


def read_official_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """Float32 state dict (official key names) from an official .pt file or a plain state-dict file."""
    return read_official_file(path).state
