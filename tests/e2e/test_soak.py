"""The soak script, shortened: not part of `make test` (run with `pytest -m soak`)."""

from __future__ import annotations

import pytest

from benchmarks.soak import soak, verdicts

pytestmark = pytest.mark.soak


def test_a_steady_load_keeps_its_rate_and_memory() -> None:
    result = soak(minutes=2, rate=20.0, timing={"ttft_ms": 10.0, "gap_ms": 2.0})
    assert result["failed"] == 0
    v = verdicts(result["per_minute"], 20.0)
    assert abs(v["rate_drift_percent"]) < 5.0, result["per_minute"]
    assert v["rss_growth_percent"] < 10.0, result["per_minute"]
