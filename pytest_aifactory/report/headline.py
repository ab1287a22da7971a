"""The figures that sum up a level of each client kind at a glance (its declared `Headline`):
one throughput and one latency, as the field quotes them.

Terminal summaries, report overviews and the throughput-latency charts all read a test entry
through here, so every kind reads the same way everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pytest_aifactory.loadgen.kinds import headline_of
from pytest_aifactory.metrics.catalog import Headline
from pytest_aifactory.numbers import finite_number

__all__ = ["Headline", "headline_of", "headline_values"]


def headline_values(test: Mapping[str, Any]) -> dict[str, float | None]:
    """A test entry's throughput and latency p50/p99 by its kind's headline."""
    head = headline_of(test.get("kind"), test.get("api"))
    latency = ((test.get("per_request") or {}).get(head.latency)) or {}
    return {
        "throughput": finite_number((test.get("per_level") or {}).get(head.throughput)),
        "latency_p50": finite_number(latency.get("p50")),
        "latency_p99": finite_number(latency.get("p99")),
    }
