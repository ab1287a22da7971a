"""The constant-memory histogram's quantiles against exact ones."""

from __future__ import annotations

import numpy as np
import pytest

from pytest_aifactory.metrics.histogram import LogHistogram


def test_quantiles_match_exact_ones_within_a_bin() -> None:
    values = np.random.default_rng(7).lognormal(mean=0.0, sigma=1.5, size=200_000)
    histogram = LogHistogram()
    for chunk in np.array_split(values, 37):  # streamed in pieces, as a long run adds them
        histogram.add(chunk)
    assert histogram.total == values.size
    probabilities = [0.01, 0.5, 0.9, 0.99, 0.999]
    exact = np.percentile(values, [p * 100 for p in probabilities])
    assert histogram.quantiles(probabilities) == pytest.approx(exact, rel=0.005)
    assert histogram.quantiles([0.0, 1.0]).tolist() == [values.min(), values.max()]
    # the memory does not depend on how many values went in
    assert histogram.counts.nbytes < 100_000


def test_empty_and_non_finite() -> None:
    histogram = LogHistogram()
    assert np.isnan(histogram.quantiles([0.5])).all()
    histogram.add([np.nan, np.inf, 2.0])
    assert histogram.total == 1
    assert histogram.quantiles([0.5])[0] == pytest.approx(2.0)
