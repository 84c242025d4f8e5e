"""Bad-input bookkeeping shared by the format loaders, the dataset and check-data.

Every problem names the file it was found in. Loaders always collect problems; `enforce_policy` then either raises
(`on_bad_sample='error'`, the default: fail fast) or logs one warning per problem and a summary (`'skip'`).
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Literal

logger = logging.getLogger("pgi_detect.data")

OnBadSample = Literal["error", "skip"]
Severity = Literal["error", "warning"]

# How many per-file warnings are logged before only the summary is.
MAX_LOGGED_PROBLEMS = 50


class DataError(ValueError):
    """Bad input data; the message names the file and the problem."""


@dataclass(frozen=True)
class DataProblem:
    """One problem with one file.

    severity 'error' makes the sample (image or annotation) unusable: it stops loading by default, or is dropped with
    on_bad_sample='skip'. 'warning' is always just reported: the data was repaired (box clipped, degenerate box
    dropped) or is irrelevant to training (label file without image).
    """

    file: str
    message: str
    kind: str
    severity: Severity = "error"

    def __str__(self) -> str:
        return f"{self.file}: {self.message}"


def check_policy(on_bad_sample: str) -> OnBadSample:
    if on_bad_sample not in ("error", "skip"):
        raise ValueError(f"on_bad_sample must be 'error' or 'skip', got {on_bad_sample!r}")
    return on_bad_sample  # type: ignore[return-value]


def summarize(problems: list[DataProblem]) -> str:
    counts = Counter(f"{p.severity}:{p.kind}" for p in problems)
    return ", ".join(f"{n} {key}" for key, n in sorted(counts.items()))


def enforce_policy(problems: list[DataProblem], on_bad_sample: str, source: str) -> None:
    """Raise on error-level problems (policy 'error'), otherwise log them; warnings are always only logged."""
    check_policy(on_bad_sample)
    errors = [p for p in problems if p.severity == "error"]
    if errors and on_bad_sample == "error":
        more = f" (and {len(errors) - 1} more; run check-data for the full list)" if len(errors) > 1 else ""
        raise DataError(f"{errors[0]}{more}. To drop bad samples instead pass --data.on_bad_sample skip (on_bad_sample='skip' in Python).")
    for problem in problems[:MAX_LOGGED_PROBLEMS]:
        logger.warning("%s (%s)", problem, "skipped" if problem.severity == "error" else problem.kind)
    if problems:
        logger.warning("%s: %d data problem(s): %s", source, len(problems), summarize(problems))
