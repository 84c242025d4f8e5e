"""The one error type of weight loading, and how the tensors of a file fit a model (what is named when they don't)."""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

FILE_TITLES = ("missing", "unexpected", "shape mismatches (file vs model)")


class WeightsError(ValueError):
    """Weights that do not fit the model, or a file that holds none; the message names the file and the keys."""


def format_keys(title: str, keys: Sequence[str], limit: int = 12) -> str:
    """`title (n): k1, k2, ... (m more)` on its own indented line."""
    shown = ", ".join(keys[:limit]) + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")
    return f"\n  {title} ({len(keys)}): {shown}"


@dataclass(frozen=True)
class StateFit:
    """How a file's tensors fit a model's: keys only the model has, keys only the file has, keys of another shape
    (`"key (file shape) vs (model shape)"`), and keys allowed to differ in shape (kept at their fresh values)."""

    missing: list[str]
    unexpected: list[str]
    mismatched: list[str]
    may_differ: list[str]

    @classmethod
    def compare(cls, model: Mapping[str, tuple[int, ...]], file: Mapping[str, tuple[int, ...]],
                may_differ: Callable[[str], bool] = lambda key: False) -> StateFit:
        """Compare key -> shape tables; `may_differ(key)` marks model keys whose shape may legitimately differ."""
        differing = [k for k in model if k in file and tuple(file[k]) != tuple(model[k])]
        allowed = [k for k in differing if may_differ(k)]
        return cls(
            missing=[k for k in model if k not in file],
            unexpected=[k for k in file if k not in model],
            mismatched=[f"{k} {tuple(file[k])} vs {tuple(model[k])}" for k in differing if k not in allowed],
            may_differ=allowed,
        )

    @property
    def problems(self) -> int:
        return len(self.missing) + len(self.unexpected) + len(self.mismatched)

    def describe(self, titles: Sequence[str] = FILE_TITLES, limit: int = 12) -> str:
        """One indented line per kind of problem, under `titles` (missing, unexpected, mis-shaped); "" if it fits."""
        groups = zip(titles, (self.missing, self.unexpected, self.mismatched))
        return "".join(format_keys(title, keys, limit) for title, keys in groups if keys)


def shapes(state: Mapping[str, object]) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a state dict's tensors."""
    return {key: tuple(value.shape) for key, value in state.items()}  # type: ignore[attr-defined]


def branch_hint(model_branches: int, file_dual: bool) -> str:
    """The usual cause when weights do not fit: yolov9 (dual-branch PGI) weights for a single-branch model, or
    single-branch weights (gelan, or yolov9 stripped to its inference form) for a yolov9 model; "" otherwise."""
    if model_branches == 1 and file_dual:
        return ("\n  hint: these are yolov9 (dual-branch) weights; use the matching yolov9-* model, strip them first "
                "(Detector.strip_auxiliary; official files: scripts/convert_official.py --strip), or start from a "
                "yolov9-*-converted name")
    if model_branches == 2 and not file_dual:
        return ("\n  hint: these are single-branch weights (gelan, or yolov9 stripped to its inference form); use the "
                "matching gelan-* model")
    return ""
