"""Range checks for settings, in one place: every option with a valid range (a probability, a count, a size) is
checked where its settings object is built, so a value outside it is one error naming the option
(`model.optim.momentum must be in [0, 1), got 1.5`) instead of a traceback from deep inside torch or OpenCV, or a
run that silently does something else. `pgi-detect` reports a `SettingError` in one line.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any


class SettingError(ValueError):
    """An option outside its valid range; the message names the option and the range."""


@dataclass(frozen=True)
class Range:
    """A closed or half-open interval of valid values (None: unbounded), optionally a multiple of `step`."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    step: int | None = None
    optional: bool = False  # None is allowed too

    def problem(self, value: Any) -> str | None:
        if value is None:
            return None if self.optional else "must be set"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            return f"must be a number, got {value!r}"
        too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        too_high = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        if too_low or too_high or (self.step and value % self.step):
            return f"must be {self.describe()}, got {value!r}"
        return None

    def describe(self) -> str:
        if self.step:
            return f"a positive multiple of {self.step}"
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{_number(self.low)}, {_number(self.high)}" \
                   f"{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {_number(self.low)}"
        return f"{'<' if self.high_open else '<='} {_number(self.high)}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


PROBABILITY = Range(0, 1)
NON_NEGATIVE = Range(0)
POSITIVE = Range(0, low_open=True)
AT_LEAST_ONE = Range(1)


def check_ranges(values: Mapping[str, Any] | Any, ranges: Mapping[str, Range], prefix: str = "") -> None:
    """Raise one SettingError listing every value of `values` (a mapping or an object's attributes) outside its
    range; `prefix` is the options' path (`model.optim.`)."""
    get = values.get if isinstance(values, Mapping) else (lambda name: getattr(values, name))
    problems = [f"{prefix}{name} {problem}" for name, valid in ranges.items()
                if (problem := valid.problem(get(name))) is not None]
    if problems:
        raise SettingError("; ".join(problems))


@contextmanager
def option_prefix(prefix: str) -> Iterator[None]:
    """Re-raise a SettingError from inside with the options' path in front (`eval_nms` -> `model.eval_nms.`)."""
    try:
        yield
    except SettingError as error:
        raise SettingError("; ".join(prefix + part for part in str(error).split("; "))) from None
