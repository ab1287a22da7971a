"""Token counts per request: a fixed count, or a distribution each request draws from.

The recipe gives a count (`128`) or a mapping already checked by the recipe's `TokenLengths`
model and shipped to the job as plain data; this module turns either into one count per
request, from a generator of its own so lengths do not depend on how prompts are made.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

LengthSetting = int | Mapping[str, Any]


def length_bounds(setting: LengthSetting) -> tuple[int, int]:
    """The smallest and largest count a setting can give (normal: none above, so the mean
    plus six standard deviations stands for the top)."""
    if isinstance(setting, int):
        return setting, setting
    values = setting.get("values")
    if values:
        return min(values), max(values)
    mean = float(setting["mean"])
    if setting.get("distribution") == "normal" or setting.get("std") is not None:
        return 1, max(1, round(mean + 6 * float(setting["std"])))
    ratio = float(setting.get("range_ratio") or 0.0)
    return max(1, math.floor(mean * (1 - ratio))), max(1, math.ceil(mean * (1 + ratio)))


def draw_lengths(setting: LengthSetting, count: int, rng: np.random.Generator) -> list[int]:
    """`count` token counts, each at least 1, as the setting says."""
    if isinstance(setting, int):
        return [setting] * count
    values = setting.get("values")
    if values:
        if setting.get("order", "cycle") == "sample":
            return [int(v) for v in rng.choice(np.asarray(values), count)]
        return [int(values[i % len(values)]) for i in range(count)]
    mean = float(setting["mean"])
    if setting.get("distribution") == "normal" or setting.get("std") is not None:
        drawn = np.rint(rng.normal(mean, float(setting["std"]), count))
        return [int(v) for v in np.maximum(drawn, 1)]
    low, high = length_bounds(setting)
    return [int(v) for v in rng.integers(low, high + 1, count)]
