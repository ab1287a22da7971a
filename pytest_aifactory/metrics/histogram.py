"""A distribution kept as counts in log-like bins: constant memory however many values, for
streams too long to keep (a report's pooled inter-token gaps, a client's event-loop lag over a
soak run)."""

from __future__ import annotations

import math

import numpy as np


class LogHistogram:
    """Counts in log-like bins.

    A bin is a float64's exponent and the top 8 bits of its mantissa (the value's bits shifted
    right), so binning needs no logarithm: each octave has 256 bins, 0.2-0.4% wide, and a
    quantile read back from the counts differs from the exact one by less than that. Values are
    clamped to [1e-3, 1e7]; the exact minimum and maximum are kept beside.
    """

    LOW = 1e-3
    HIGH = 1e7
    _SHIFT = 52 - 8
    _FIRST = int(np.array(LOW).view(np.int64)) >> _SHIFT
    _LAST = int(np.array(HIGH).view(np.int64)) >> _SHIFT

    def __init__(self) -> None:
        self.counts = np.zeros(self._LAST - self._FIRST + 1, np.int64)
        self.minimum = math.inf
        self.maximum = -math.inf

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def add(self, values: np.ndarray | list[float]) -> None:
        array = np.asarray(values, dtype=np.float64)
        finite = np.isfinite(array)
        if not finite.all():
            array = array[finite]
        if array.size == 0:
            return
        self.minimum = min(self.minimum, float(array.min()))
        self.maximum = max(self.maximum, float(array.max()))
        codes = np.clip(array, self.LOW, self.HIGH).view(np.int64)
        codes >>= self._SHIFT
        codes -= self._FIRST
        self.counts += np.bincount(codes, minlength=self.counts.size)

    def _edges(self) -> np.ndarray:
        codes = np.arange(self._FIRST, self._LAST + 2, dtype=np.int64) << self._SHIFT
        return codes.view(np.float64)

    def quantiles(self, probabilities: np.ndarray | list[float]) -> np.ndarray:
        """Values at these probabilities (0..1), interpolated inside a bin; the first and last
        of a range reaching 0 or 1 are the exact minimum and maximum. Empty: NaNs."""
        probabilities = np.asarray(probabilities, dtype=np.float64)
        total = self.total
        if total == 0:
            return np.full(probabilities.shape, np.nan)
        cumulative = np.cumsum(self.counts) / total
        index = np.searchsorted(cumulative, probabilities, side="left")
        index = np.minimum(index, self.counts.size - 1)
        before = np.where(index > 0, cumulative[index - 1], 0.0)
        width = cumulative[index] - before
        inside = np.where(width > 0, (probabilities - before) / np.where(width > 0, width, 1), 1)
        edges = self._edges()
        low, high = edges[index], edges[index + 1]
        values: np.ndarray = low + np.clip(inside, 0.0, 1.0) * (high - low)
        values = np.clip(values, self.minimum, self.maximum)
        values[probabilities <= 0] = self.minimum
        values[probabilities >= 1] = self.maximum
        return values
