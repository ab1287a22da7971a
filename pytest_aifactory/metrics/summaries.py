"""The summary of one load level, for any client kind: the kind's declaration names the function
that reads its records (`ClientKind.summarize`).

A level measured several times (`load.repeats`) is summarized twice over: its per-request
statistics over every repeat's requests pooled, its per-level figures (rates over a span of
time) as the mean of each repeat's own, since a span that ran across repeats would count the
pauses between them. Every figure gets its interval (`metrics/intervals.py`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from pytest_aifactory.loadgen.kinds import get_client_kind
from pytest_aifactory.metrics.catalog import SloObjective
from pytest_aifactory.metrics.intervals import REPEAT_COLUMN, level_intervals
from pytest_aifactory.metrics.stats import json_safe

DEFAULT_CONFIDENCE = 0.95


def summarize(
    kind: str,
    records: pd.DataFrame,
    requested_rate: float | None = None,
    objectives: Sequence[SloObjective] = (),
    confidence: float = DEFAULT_CONFIDENCE,
) -> dict[str, Any]:
    """Counts, per-request statistics, per-level figures, errors and intervals of one level's
    records (every phase: setup rows feed a kind's setup figures, only measure rows its
    latencies)."""
    client_kind = get_client_kind(kind)
    summarizer = client_kind.summarizer()

    def one(rows: pd.DataFrame) -> dict[str, Any]:
        return summarizer(
            rows, kind=client_kind, requested_rate=requested_rate, objectives=objectives
        )

    summary = one(records)
    per_repeat = [summary]
    repeats = split_repeats(records)
    if len(repeats) > 1:
        per_repeat = [one(rows) for rows in repeats]
        summary["per_level"] = mean_figures([s.get("per_level") or {} for s in per_repeat])
        summary["repeats"] = {
            "count": len(per_repeat),
            "per_level": [s.get("per_level") or {} for s in per_repeat],
        }
    summary["intervals"] = level_intervals(records, summary, per_repeat, confidence)
    return summary


def split_repeats(records: pd.DataFrame) -> list[pd.DataFrame]:
    """Each repeat's rows (every phase), in repeat order."""
    if REPEAT_COLUMN not in records or not len(records):
        return [records]
    return [rows for _, rows in records.groupby(REPEAT_COLUMN, sort=True)]


def mean_figures(figures: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Each per-level figure's mean over repeats (those that have a value); a duration is
    their sum. A figure no repeat has a value for stays None."""
    names = list(dict.fromkeys(name for f in figures for name in f))
    combined: dict[str, Any] = {}
    for name in names:
        values = [f.get(name) for f in figures]
        numbers = [
            float(v)
            for v in values
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        ]
        if not numbers:
            combined[name] = next((v for v in values if v is not None), None)
        elif name == "duration_s":
            combined[name] = float(np.sum(numbers))
        else:
            combined[name] = float(np.mean(numbers))
    safe: dict[str, Any] = json_safe(combined)
    return safe
