"""How agglib words a count in the lines it prints ("1 image", "12 images")."""

from __future__ import annotations

__all__ = ["counted"]


def counted(n: int, noun: str) -> str:
    """``n`` and ``noun``, the noun plural unless ``n`` is 1: ``counted(1, "image") == "1 image"``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
