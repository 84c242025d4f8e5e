"""The one error type of weight loading, and how it lists offending keys."""
from __future__ import annotations

from collections.abc import Sequence


class WeightsError(ValueError):
    """Weights that do not fit the model, or a file that holds none; the message names the file and the keys."""


def format_keys(title: str, keys: Sequence[str], limit: int = 12) -> str:
    """`title (n): k1, k2, ... (m more)` on its own indented line."""
    shown = ", ".join(keys[:limit]) + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")
    return f"\n  {title} ({len(keys)}): {shown}"
