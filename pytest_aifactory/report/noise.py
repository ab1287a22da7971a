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
those are judged on their tolerance alone, and the gate says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from pytest_aifactory.metrics.stats import distribution, measured, succeeded

DEFAULT_CONFIDENCE = 0.95
RESAMPLES = 1000
CHUNK_VALUES = 2_000_000
"""Resampled values held at once (16 MB of floats), whatever the number of requests."""
SEED = 20_260_301
"""Fixed: the same two runs always get the same interval, so a gate's verdict is repeatable."""
RECORDS_FILE = "records.parquet"
_PERCENTILES = {"p50": 50.0, "p90": 90.0, "p95": 95.0, "p99": 99.0, "p999": 99.9}
RESAMPLED_STATISTICS = frozenset({*_PERCENTILES, "mean"})
"""Statistics a bootstrap estimates well; a resampled min or max only repeats the sample's."""

Outcome = Literal["regressed", "within noise", "within tolerance", "tolerance alone"]


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


def _statistic(values: np.ndarray, statistic: str) -> np.ndarray:
    """The statistic of each row of `values` (a batch of resamples)."""
    if statistic == "mean":
        result: np.ndarray = values.mean(axis=1)
        return result
    taken: np.ndarray = np.percentile(values, _PERCENTILES[statistic], axis=1)
    return taken


def bootstrap(
    values: np.ndarray,
    statistic: str,
    resamples: int = RESAMPLES,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """The statistic of `resamples` resamples (with replacement) of `values`."""
    rng = rng if rng is not None else np.random.default_rng(SEED)
    size = len(values)
    per_chunk = max(1, CHUNK_VALUES // max(size, 1))
    out = np.empty(resamples)
    for start in range(0, resamples, per_chunk):
        stop = min(resamples, start + per_chunk)
        picks = rng.integers(0, size, size=(stop - start, size))
        out[start:stop] = _statistic(values[picks], statistic)
    return out


def change_interval(
    baseline: np.ndarray,
    values: np.ndarray,
    statistic: str,
    confidence: float = DEFAULT_CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> ChangeInterval | None:
    """None when the statistic cannot be resampled, a run has fewer than two values, or the
    baseline's statistic is zero (no relative change)."""
    if statistic not in RESAMPLED_STATISTICS or len(baseline) < 2 or len(values) < 2:
        return None
    point_base = float(_statistic(baseline[np.newaxis, :], statistic)[0])
    point = float(_statistic(values[np.newaxis, :], statistic)[0])
    if point_base == 0.0 or not math.isfinite(point_base) or not math.isfinite(point):
        return None
    rng = np.random.default_rng(seed)
    base_boot = bootstrap(baseline, statistic, resamples, rng)
    new_boot = bootstrap(values, statistic, resamples, rng)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = new_boot / base_boot - 1.0
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
        baseline_count=len(baseline),
        count=len(values),
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

    def values(self, client: str, level_label: str, metric: str) -> np.ndarray | None:
        """The completed requests' values of a per-request metric in one test's measure
        phase, as the summary's statistics were taken of them; None without records."""
        frame = self._frame()
        if frame is None or "client" not in frame or "level_label" not in frame:
            return None
        rows = measured(frame[(frame["client"] == client) & (frame["level_label"] == level_label)])
        if metric not in rows:
            return None
        done = rows[succeeded(rows).to_numpy()]
        found: np.ndarray = distribution(done, metric)
        return found
