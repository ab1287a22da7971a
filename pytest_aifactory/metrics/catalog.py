"""What a metric name means: its unit, its direction, whether it is per request.

The metrics every kind shares are here; each client kind declares its own beside its other
facts (`loadgen/kinds/`), and the registry joins both into one table
(`loadgen.kinds.all_metrics`), so SLO validation, statistics, comparisons and regression gates
all agree on what a name means and whether a larger value is better. docs/metrics.md defines
each one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

BoundKind = Literal["max", "min"]

STATISTICS: tuple[str, ...] = ("mean", "std", "min", "max", "p50", "p90", "p95", "p99", "p999")
"""Statistics computed for every per-request metric (p999 is the 99.9th percentile)."""

SLO_STATISTICS: tuple[str, ...] = ("mean", "max", "p50", "p90", "p95", "p99", "p999")
"""Statistics an SLO may bound."""


@dataclass(frozen=True)
class MetricInfo:
    """What a metric is: its unit, whether higher is better, and whether it is per request."""

    name: str
    unit: str
    higher_is_better: bool
    per_request: bool
    family: str
    description: str
    chart_title: str | None = None
    """Set for latencies drawn per request in reports (distributions, CDFs): the axis title."""


@dataclass(frozen=True)
class SloObjective:
    """One bound of a recipe's `slo:` section, normalised.

    `statistic` is None for per-level metrics (throughputs, error_rate, goodput) that are bounded
    directly; for per-request metrics it names the statistic (p99, mean, ...).
    """

    client: str
    metric: str
    statistic: str | None
    bound: BoundKind
    value: float

    @property
    def key(self) -> str:
        return f"{self.metric}.{self.statistic}" if self.statistic else self.metric


def metric(
    name: str,
    unit: str,
    higher: bool,
    per_request: bool,
    family: str,
    description: str,
    chart_title: str | None = None,
) -> MetricInfo:
    """A catalog row, written as one line per metric."""
    return MetricInfo(name, unit, higher, per_request, family, description, chart_title)


COMMON_METRICS: tuple[MetricInfo, ...] = (
    metric("request_throughput", "req/s", True, False, "any", "completed requests per second"),
    metric("goodput", "req/s", True, False, "any", "requests meeting every per-request SLO, per s"),
    metric("error_rate", "ratio", False, False, "any", "failed / sent"),
    metric("achieved_rate", "req/s", True, False, "any", "requests sent per second"),
    metric("queue_ms", "ms", False, True, "any", "client-side wait before sending"),
    metric("latency_ms", "ms", False, True, "any", "operation latency", "Latency (ms)"),
)
"""Metrics that mean the same for every kind that reports them; a kind lists those it reports
(`ClientKind.common_metrics`) and declares its own beside them (`ClientKind.metrics`)."""


@dataclass(frozen=True)
class Headline:
    """The figures that sum up a level of a kind at a glance: one throughput and one latency,
    as the field quotes them. Terminal summaries, report overviews and the
    throughput-latency charts all read this, so every kind reads the same way everywhere."""

    throughput: str
    """Per-level metric name (summary `per_level`)."""
    throughput_label: str
    latency: str
    """Per-request metric name (summary `per_request`)."""
    latency_label: str
