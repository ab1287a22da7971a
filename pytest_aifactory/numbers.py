"""Numbers read from documents people and programs write (summaries, recipes, YAML, JSON)."""

from __future__ import annotations

import math
from typing import Any


def finite_number(value: Any) -> float | None:
    """`value` as a finite float, or None: for missing values, booleans (YAML's `true` is no
    1), text that is no number, NaN and infinities alike, so a caller tests one thing."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None
