"""Is a change between two runs more than their noise? The regression gate's second question.

A tolerance says how much worse is too much (practical significance); it cannot say whether two
runs that differ by that much differ at all. With a hundred requests a p99 is the fifth
largest of them, and two runs of the same setup on a shared machine give p99s apart by more
than any useful tolerance. So a change counts as a regression only when it is worse than its
tolerance *and* the interval of the change, found by resampling each run's own requests,
excludes no change at all (statistical significance).

The interval is a percentile bootstrap of the relative change of the statistic: each run's
requests are resampled with replacement (each run on its own: they are independent samples),
the statistic taken of both resamples, and their ratio kept; the central `confidence` share of
those ratios is the interval. Resampling requests treats them as independent draws, which
understates the noise of what differs from run to run (a node's warm caches, a neighbour's
load): the false-alarm rate this leaves is measured, not assumed (`benchmarks/tools/`).
Per-level figures (throughputs, goodput) have one value per run and no samples to resample:
those are judged on their tolerance alone, and the gate says so. A run whose levels were
measured several times (`load.repeats`) is resampled over its repeats first, then over the
requests within each (`metrics/intervals.py`): the noise between loads is then in the interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from pytest_aifactory.metrics import intervals
from pytest_aifactory.metrics.intervals import pooled_statistic, repeat_groups, resample
from pytest_aifactory.metrics.stats import distribution, measured, succeeded

STATISTIC_POSITIONS = {name: i for i, name in enumerate(intervals.RESAMPLED_STATISTICS)}
"""Each resampled statistic's column in what `resample` returns."""

DEFAULT_CONFIDENCE = 0.95
RESAMPLES = 1000
SEED = 20_260_301
"""Fixed: the same two runs always get the same interval, so a gate's verdict is repeatable."""
RECORDS_FILE = "records.parquet"
RESAMPLED_STATISTICS = frozenset(STATISTIC_POSITIONS)
"""Statistics a bootstrap estimates well; a resampled min or max only repeats the sample's."""

Outcome = Literal["regressed", "within noise", "within tolerance", "tolerance alone"]
Samples = np.ndarray | Sequence[np.ndarray]
"""A run's values of one metric in one test: one array, or one per repeat."""


@dataclass(frozen=True)
class ChangeInterval:
    """The relative change (0.12 for +12%) and its interval, `confidence` sure."""

    change: float
    low: float
    high: float
    confidence: float
    baseline_count: int
    count: int

    def excludes_no_change(self) -> bool:
        return self.low > 0.0 or self.high < 0.0

    def describe(self) -> str:
        """`+12.0% [+3.1%, +21.4%]`."""
        return f"{self.change * 100:+.1f}% [{self.low * 100:+.1f}%, {self.high * 100:+.1f}%]"


def _groups(samples: Samples) -> list[np.ndarray]:
    if isinstance(samples, np.ndarray):
        return [samples]
    return list(samples)


def change_interval(
    baseline: Samples,
    values: Samples,
    statistic: str,
    confidence: float = DEFAULT_CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> ChangeInterval | None:
    """The relative change of a statistic from `baseline` to `values` and its interval: each
    run resampled on its own (over its repeats, then requests within each, where it has
    several: `metrics/intervals.py`). None when the statistic cannot be resampled, a run has
    fewer than two values, or the baseline's statistic is zero (no relative change)."""
    base_groups, groups = _groups(baseline), _groups(values)
    base_count = sum(g.size for g in base_groups)
    count = sum(g.size for g in groups)
    if statistic not in RESAMPLED_STATISTICS or base_count < 2 or count < 2:
        return None
    point_base = pooled_statistic(base_groups, statistic)
    point = pooled_statistic(groups, statistic)
    if point_base == 0.0 or not math.isfinite(point_base) or not math.isfinite(point):
        return None
    rng = np.random.default_rng(seed)
    column = STATISTIC_POSITIONS[statistic]
    base_boot = resample(base_groups, resamples, rng)[:, column]
    new_boot = resample(groups, resamples, rng)[:, column]
    size = min(len(base_boot), len(new_boot))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = new_boot[:size] / base_boot[:size] - 1.0
    ratios = ratios[np.isfinite(ratios)]
    if ratios.size == 0:
        return None
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(ratios, [tail, 100.0 - tail])
    return ChangeInterval(
        change=point / point_base - 1.0,
        low=float(low),
        high=float(high),
        confidence=confidence,
        baseline_count=base_count,
        count=count,
    )


class RunSamples:
    """A run's per-request values, read from its records once and kept for every metric."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._records: pd.DataFrame | None = None
        self._read = False

    def _frame(self) -> pd.DataFrame | None:
        if not self._read:
            self._read = True
            try:
                self._records = pd.read_parquet(self.root / RECORDS_FILE)
            except (OSError, ValueError):  # no records (every level failed to start)
                self._records = None
            except Exception:  # pyarrow's own errors for a damaged file
                self._records = None
        return self._records

    def values(self, client: str, level_label: str, metric: str) -> list[np.ndarray] | None:
        """The completed requests' values of a per-request metric in one test's measure
        phase, one array per repeat, as the summary's statistics were taken of them; None
        without records."""
        frame = self._frame()
        if frame is None or "client" not in frame or "level_label" not in frame:
            return None
        rows = measured(frame[(frame["client"] == client) & (frame["level_label"] == level_label)])
        if metric not in rows:
            return None
        return [
            distribution(part[succeeded(part).to_numpy()], metric) for part in repeat_groups(rows)
        ]
