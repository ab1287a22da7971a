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
from pytest_aifactory.monitor.efficiency import FIGURES as EFFICIENCY_FIGURES
from pytest_aifactory.monitor.efficiency import FigureInfo
from pytest_aifactory.numbers import finite_number

__all__ = [
    "Headline",
    "efficiency_headline",
    "efficiency_headline_figure",
    "headline_of",
    "headline_values",
]


def headline_values(test: Mapping[str, Any]) -> dict[str, float | None]:
    """A test entry's throughput and latency p50/p99 by its kind's headline."""
    head = headline_of(test.get("kind"), test.get("api"))
    latency = ((test.get("per_request") or {}).get(head.latency)) or {}
    return {
        "throughput": finite_number((test.get("per_level") or {}).get(head.throughput)),
        "latency_p50": finite_number(latency.get("p50")),
        "latency_p99": finite_number(latency.get("p99")),
    }


EFFICIENCY_HEADLINES: tuple[str, ...] = (
    "energy_per_output_token_j",
    "output_throughput_per_gpu",
    "cpu_seconds_per_output_token",
    "energy_per_request_j",
    "cpu_seconds_per_request",
)
"""The efficiency figure that sums up a test, the first it has: what a token costs in GPU
energy, else how many tokens a GPU serves, else what a token costs in CPU time; per request for
kinds without tokens."""


def efficiency_headline_figure(test: Mapping[str, Any]) -> tuple[FigureInfo, float] | None:
    """A test entry's headline efficiency figure (which one, and its value); None without one."""
    block = test.get("efficiency") or {}
    infos = {info.key: info for info in EFFICIENCY_FIGURES}
    for key in EFFICIENCY_HEADLINES:
        value = finite_number(block.get(key))
        if value is not None:
            return infos[key], value
    return None


def efficiency_headline(test: Mapping[str, Any]) -> tuple[float, str] | None:
    """A test entry's headline efficiency figure and its unit; None without one."""
    found = efficiency_headline_figure(test)
    return None if found is None else (found[1], found[0].unit)
