"""Wording shared by messages: counts with the right noun form ("1 class", "3 classes")."""
from __future__ import annotations


def counted(count: int, singular: str, plural: str | None = None) -> str:
    """`count` followed by the noun in the form that fits it."""
    return f"{count} {singular if count == 1 else (plural or singular + 's')}"


def class_count(count: int) -> str:
    return counted(count, "class", "classes")
