"""Arrival schedules for rate-mode loads.

The whole schedule is drawn before the load starts, from a seeded generator, so a run can be
repeated with exactly the same send times and the hot path only has to sleep until the next one.

Random gaps are scaled so that the schedule's own rate, (n - 1) / span, is exactly the requested
rate: unscaled, n Poisson arrivals miss their rate by about 1/sqrt(n) (10% for 100 requests),
which would hide whether the client kept up. Scaling exponential gaps to a fixed sum gives the
arrival times of a Poisson process conditioned on its count (uniform order statistics), so the
arrivals stay Poisson in every other respect; gamma gaps keep their shape in the same way.
"""

from __future__ import annotations

import math

import numpy as np

ARRIVALS: tuple[str, ...] = ("poisson", "constant", "gamma")

_MAX_REQUESTS = 50_000_000
"""Guard against a duration-only schedule that would not fit in memory."""


def _gaps(
    rng: np.random.Generator, count: int, rate: float, arrival: str, burstiness: float
) -> np.ndarray:
    if arrival == "poisson":
        return rng.exponential(1.0 / rate, count)
    if arrival == "constant":
        return np.full(count, 1.0 / rate)
    if arrival == "gamma":
        # shape = burstiness keeps the mean gap at 1/rate; smaller shape = burstier arrivals.
        return rng.gamma(burstiness, 1.0 / (rate * burstiness), count)
    raise ValueError(f"unknown arrival '{arrival}' (expected one of {', '.join(ARRIVALS)})")


def arrival_offsets(
    n: int | None,
    rate: float,
    arrival: str = "poisson",
    burstiness: float = 1.0,
    seed: int = 0,
    duration_s: float | None = None,
) -> np.ndarray:
    """Send offsets in seconds from the load start: the first at 0, then seeded gaps whose
    mean is exactly 1/rate.

    At most `n` offsets, and only those before `duration_s` when that is given (with no `n`:
    ceil(duration_s * rate) offsets, all inside the duration); at least one of the two must
    bound the schedule.
    """
    if arrival not in ARRIVALS:
        raise ValueError(f"unknown arrival '{arrival}' (expected one of {', '.join(ARRIVALS)})")
    if rate <= 0:
        raise ValueError(f"rate must be positive, got {rate}")
    if arrival == "gamma" and burstiness <= 0:
        raise ValueError(f"burstiness must be positive, got {burstiness}")
    if n is None and duration_s is None:
        raise ValueError("a schedule needs a number of requests or a duration")
    if n is not None and n <= 0:
        return np.zeros(0)
    rng = np.random.default_rng(seed)
    if n is None:
        # as many arrivals as the duration holds at exactly this rate, the last inside it
        n = min(math.ceil(duration_s * rate), _MAX_REQUESTS)  # type: ignore[operator]
    if arrival == "constant" or n == 1:
        # multiples rather than a running sum, so no rounding drift over long schedules
        offsets = np.arange(n) / rate
    else:
        gaps = _gaps(rng, n - 1, rate, arrival, burstiness)
        offsets = np.concatenate(([0.0], np.cumsum(gaps)))
        offsets *= ((n - 1) / rate) / offsets[-1]
    if duration_s is not None:
        offsets = offsets[offsets < duration_s]
    return offsets
