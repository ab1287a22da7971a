"""How sure a level's figures are: an interval for every statistic, from repeats and requests.

A p99 from a hundred requests is the fifth largest of them; the next run of the same setup
gives another. Two sources of noise make them differ: which requests happened to be slow
(sampling), and what differs from one load to the next (prompts drawn, caches warmed, a
neighbour's job). Resampling a run's requests sees only the first; repeating the load sees both.

The interval of a per-request statistic is a two-stage percentile bootstrap: draw the repeats
with replacement, then within each drawn repeat its requests with replacement, pool, take the
statistic; the central `confidence` share of those statistics is the interval. With one repeat
this is the plain bootstrap over requests. Two stages count the sampling noise once more than a
perfect estimate would, so the interval errs wide: right for a verdict that must not pass by
luck. A per-level figure (a throughput, goodput, an error rate) has one value per repeat; its
interval is a bootstrap of their mean over repeats, and with one repeat there is none. Few
repeats give a per-level interval no wider than the range of their values: five or more
repeats make it meaningful.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from pytest_aifactory.metrics.stats import (
    CLIENT_SIDE_METRICS,
    describe,
    distribution,
    json_safe,
    measured,
    succeeded,
)

RESAMPLES = 1000
MIN_RESAMPLES = 200
RESAMPLED_VALUES = 20_000_000
"""Values drawn per metric at most (beyond `MIN_RESAMPLES`): a second or so per metric."""
CHUNK_VALUES = 2_000_000
"""Resampled values held at once (16 MB of floats), whatever the number of requests."""
SEED = 20_261_203
"""Fixed: the same records always get the same intervals, so a verdict is repeatable."""
RESAMPLED_STATISTICS: dict[str, float | None] = {
    "mean": None,
    "p50": 50.0,
    "p90": 90.0,
    "p95": 95.0,
    "p99": 99.0,
    "p999": 99.9,
}
"""Statistics a bootstrap estimates (a resampled min or max only repeats the sample's), with
their percentile (None: the mean)."""
REPEAT_COLUMN = "repeat"
REQUESTS_METHOD = "bootstrap over requests"
REPEATS_METHOD = "bootstrap over repeats, then requests within each"


def repeat_groups(records: pd.DataFrame) -> list[pd.DataFrame]:
    """The measured rows of each repeat, in repeat order (one group without a repeat
    column)."""
    rows = measured(records)
    if REPEAT_COLUMN not in rows or not len(rows):
        return [rows]
    return [part for _, part in rows.groupby(REPEAT_COLUMN, sort=True)]


_PERCENTILES = [p for p in RESAMPLED_STATISTICS.values() if p is not None]


def _quantiles(values: np.ndarray) -> np.ndarray:
    """Every resampled statistic of `values`, in `RESAMPLED_STATISTICS` order."""
    return np.concatenate(([values.mean()], np.percentile(values, _PERCENTILES)))


def _request_resamples(values: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """The statistics of `resamples` resamples of one repeat's requests, drawn in batches
    (one row per resample) rather than one by one: this runs after every level."""
    taken = np.empty((resamples, len(RESAMPLED_STATISTICS)))
    rows = max(1, CHUNK_VALUES // values.size)
    for first in range(0, resamples, rows):
        count = min(rows, resamples - first)
        drawn = values[rng.integers(0, values.size, (count, values.size))]
        taken[first : first + count, 0] = drawn.mean(axis=1)
        taken[first : first + count, 1:] = np.percentile(drawn, _PERCENTILES, axis=1).T
    return taken


def resample(
    groups: Sequence[np.ndarray],
    resamples: int = RESAMPLES,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """The statistics of `RESAMPLED_STATISTICS` (columns, in that order) of `resamples`
    two-stage resamples of the values pooled over `groups` (one array per repeat; empty ones
    left out); no rows when there are no values. A large level gets fewer resamples (at least
    `MIN_RESAMPLES`): enough for a steady interval, and quick."""
    kept = [g for g in groups if g.size]
    if not kept:
        return np.empty((0, len(RESAMPLED_STATISTICS)))
    rng = rng if rng is not None else np.random.default_rng(SEED)
    total = sum(g.size for g in kept)
    resamples = max(MIN_RESAMPLES, min(resamples, RESAMPLED_VALUES // max(total, 1)))
    if len(kept) == 1:
        return _request_resamples(kept[0], resamples, rng)
    taken = np.empty((resamples, len(RESAMPLED_STATISTICS)))
    for index in range(resamples):
        chosen = rng.integers(0, len(kept), len(kept))
        drawn = [kept[i][rng.integers(0, kept[i].size, kept[i].size)] for i in chosen]
        taken[index] = _quantiles(np.concatenate(drawn))
    return taken


def statistic_intervals(
    groups: Sequence[np.ndarray],
    confidence: float,
    resamples: int = RESAMPLES,
    rng: np.random.Generator | None = None,
) -> dict[str, tuple[float, float]]:
    """Interval of each statistic of `RESAMPLED_STATISTICS` of the values pooled over
    `groups` (one array per repeat), by the two-stage bootstrap; {} when there are none."""
    taken = resample(groups, resamples, rng)
    if not len(taken):
        return {}
    tail = (1.0 - confidence) / 2.0
    low = np.quantile(taken, tail, axis=0)
    high = np.quantile(taken, 1.0 - tail, axis=0)
    return {name: (float(low[i]), float(high[i])) for i, name in enumerate(RESAMPLED_STATISTICS)}


def pooled_statistic(groups: Sequence[np.ndarray], statistic: str) -> float:
    """One statistic of `RESAMPLED_STATISTICS` of the values pooled over `groups`."""
    values = np.concatenate([g for g in groups if g.size] or [np.empty(0)])
    if not values.size:
        return math.nan
    return float(_quantiles(values)[list(RESAMPLED_STATISTICS).index(statistic)])


def mean_interval(
    values: Sequence[float],
    confidence: float,
    resamples: int = RESAMPLES,
    rng: np.random.Generator | None = None,
) -> tuple[float, float] | None:
    """Interval of the mean of per-repeat values by a bootstrap over repeats; None with
    fewer than two finite values (one value says nothing about its spread)."""
    array = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if array.size < 2:
        return None
    rng = rng or np.random.default_rng(SEED)
    means = array[rng.integers(0, array.size, (resamples, array.size))].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    return float(np.quantile(means, tail)), float(np.quantile(means, 1.0 - tail))


def _metric_groups(groups: Sequence[pd.DataFrame], metric: str) -> list[np.ndarray]:
    """Each repeat's values of a per-request metric, taken as its summary takes them: of
    every request sent for client-side waits, of the answered ones otherwise."""
    arrays = []
    for rows in groups:
        chosen = rows if metric in CLIENT_SIDE_METRICS else rows[succeeded(rows).to_numpy()]
        arrays.append(distribution(chosen, metric))
    return arrays


def _agrees(estimates: Mapping[str, Any], pooled: Mapping[str, float]) -> bool:
    """The summary's statistics are the ones the pooled values give: then their intervals
    are intervals of those very figures (a kind that summarizes otherwise gets none)."""
    for name in RESAMPLED_STATISTICS:
        shown, own = estimates.get(name), pooled.get(name)
        if shown is None or own is None or not math.isfinite(own):
            return False
        if not math.isclose(float(shown), own, rel_tol=1e-9, abs_tol=1e-9):
            return False
    return True


def level_intervals(
    records: pd.DataFrame,
    summary: Mapping[str, Any],
    per_repeat: Sequence[Mapping[str, Any]],
    confidence: float,
) -> dict[str, Any]:
    """The `intervals` block of a level's summary: per-request statistics' intervals (where
    the summary's figures are statistics of the records' values) and per-level figures'
    intervals over `per_repeat` (each repeat's own summary)."""
    groups = repeat_groups(records)
    per_request: dict[str, dict[str, list[float]]] = {}
    for metric, estimates in (summary.get("per_request") or {}).items():
        if not isinstance(estimates, Mapping):
            continue
        arrays = _metric_groups(groups, metric)
        pooled = np.concatenate(arrays) if arrays else np.empty(0)
        if not pooled.size or not _agrees(estimates, describe(pooled)):
            continue
        found = statistic_intervals(arrays, confidence)
        per_request[metric] = {name: [low, high] for name, (low, high) in found.items()}
    per_level: dict[str, list[float]] = {}
    figures = {k for s in per_repeat for k, v in (s.get("per_level") or {}).items()}
    for figure in sorted(figures):
        values = [_number((s.get("per_level") or {}).get(figure)) for s in per_repeat]
        interval = mean_interval([v for v in values if v is not None], confidence)
        if interval is not None:
            per_level[figure] = list(interval)
    return json_safe(
        {
            "confidence": confidence,
            "repeats": len(groups),
            "method": REPEATS_METHOD if len(groups) > 1 else REQUESTS_METHOD,
            "per_request": per_request,
            "per_level": per_level,
        }
    )


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def interval_of(summary: Mapping[str, Any], metric: str, statistic: str | None) -> list[float]:
    """A figure's interval from a summary's `intervals` block ([] when it has none)."""
    block = summary.get("intervals") or {}
    if statistic:
        found = ((block.get("per_request") or {}).get(metric) or {}).get(statistic)
    else:
        found = (block.get("per_level") or {}).get(metric)
    if isinstance(found, list) and len(found) == 2 and all(_number(v) is not None for v in found):
        return [float(found[0]), float(found[1])]
    return []
