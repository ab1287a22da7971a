"""Arrival schedules: seeded, starting at zero, with the documented gap distributions."""

from __future__ import annotations

import numpy as np
import pytest

from pytest_aifactory.loadgen.schedule import arrival_offsets


@pytest.mark.parametrize("arrival", ["poisson", "constant", "gamma"])
def test_schedules_start_at_zero_and_increase(arrival: str) -> None:
    offsets = arrival_offsets(100, 10.0, arrival, burstiness=0.5, seed=1)
    assert len(offsets) == 100
    assert offsets[0] == 0.0
    assert np.all(np.diff(offsets) >= 0)


@pytest.mark.parametrize("arrival", ["poisson", "gamma"])
def test_same_seed_same_schedule(arrival: str) -> None:
    first = arrival_offsets(500, 4.0, arrival, burstiness=2.0, seed=42)
    again = arrival_offsets(500, 4.0, arrival, burstiness=2.0, seed=42)
    other = arrival_offsets(500, 4.0, arrival, burstiness=2.0, seed=43)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_constant_gaps_are_exact() -> None:
    offsets = arrival_offsets(1000, 20.0, "constant")
    assert np.allclose(np.diff(offsets), 0.05)
    assert offsets[-1] == pytest.approx(999 / 20)


@pytest.mark.parametrize(
    ("arrival", "burstiness", "cv"),
    [("poisson", 1.0, 1.0), ("gamma", 0.25, 2.0), ("gamma", 4.0, 0.5)],
)
def test_mean_gap_and_spread(arrival: str, burstiness: float, cv: float) -> None:
    """Mean gap 1/rate for every arrival; the coefficient of variation is 1/sqrt(shape)."""
    gaps = np.diff(arrival_offsets(20_001, 8.0, arrival, burstiness=burstiness, seed=3))
    assert gaps.mean() == pytest.approx(1 / 8, rel=0.05)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.1)


@pytest.mark.parametrize("arrival", ["poisson", "constant", "gamma"])
def test_duration_bounds_the_schedule(arrival: str) -> None:
    offsets = arrival_offsets(None, 50.0, arrival, seed=5, duration_s=200.0)
    assert offsets.max() < 200.0
    assert offsets.max() > 199.0
    assert len(offsets) == pytest.approx(50 * 200, rel=0.05)
    capped = arrival_offsets(30, 50.0, arrival, seed=5, duration_s=200.0)
    assert len(capped) == 30


def test_constant_rate_over_a_duration_has_no_extra_request() -> None:
    assert len(arrival_offsets(None, 20.0, "constant", duration_s=2.0)) == 40


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown arrival 'bursty'"):
        arrival_offsets(10, 1.0, "bursty")
    with pytest.raises(ValueError, match="rate must be positive"):
        arrival_offsets(10, 0.0)
    with pytest.raises(ValueError, match="requests or a duration"):
        arrival_offsets(None, 1.0)
    with pytest.raises(ValueError, match="burstiness"):
        arrival_offsets(10, 1.0, "gamma", burstiness=0)
    assert len(arrival_offsets(0, 1.0)) == 0
