"""Every metric name of the project, with its unit and direction.

One table, so SLO validation, statistics, comparisons and regression gates all agree on what a
name means and whether a larger value is better.
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


def _m(
    name: str, unit: str, higher: bool, per_request: bool, family: str, description: str
) -> MetricInfo:
    return MetricInfo(name, unit, higher, per_request, family, description)


_ALL: tuple[MetricInfo, ...] = (
    # LLM serving, per request
    _m("ttft_ms", "ms", False, True, "llm", "time to first content event"),
    _m("e2el_ms", "ms", False, True, "llm", "start to last content event"),
    _m("itl_ms", "ms", False, True, "llm", "gap between consecutive content events (pooled)"),
    _m("tpot_ms", "ms", False, True, "llm", "(e2el - ttft) / (output_tokens - 1)"),
    _m("queue_ms", "ms", False, True, "llm", "client-side wait before sending"),
    _m("connect_ms", "ms", False, True, "llm", "time to get a connection (0: pooled one reused)"),
    _m("output_tokens", "tokens", True, True, "llm", "generated tokens per request"),
    _m("input_tokens", "tokens", True, True, "llm", "prompt tokens per request"),
    # LLM serving, per level
    _m("request_throughput", "req/s", True, False, "llm", "completed requests per second"),
    _m("output_throughput", "tok/s", True, False, "llm", "generated tokens per second"),
    _m("total_token_throughput", "tok/s", True, False, "llm", "prompt + generated tokens/s"),
    _m("goodput", "req/s", True, False, "llm", "requests meeting every per-request SLO, per s"),
    _m("error_rate", "ratio", False, False, "any", "failed / sent"),
    _m("achieved_rate", "req/s", True, False, "any", "requests sent per second"),
    # vector search
    _m("recall_at_k", "ratio", True, False, "vectordb", "overlap with exact top-k"),
    _m("qps", "q/s", True, False, "vectordb", "queries per second"),
    _m("latency_ms", "ms", False, True, "any", "operation latency"),
    _m("insert_throughput", "vec/s", True, False, "vectordb", "vectors inserted per second"),
    _m("index_build_s", "s", False, False, "vectordb", "index build time"),
    # object storage
    _m("throughput_mib_s", "MiB/s", True, False, "s3", "bytes moved per second"),
    _m("ops_s", "op/s", True, False, "s3", "operations per second"),
    _m("ttfb_ms", "ms", False, True, "s3", "GET time to first byte"),
    # file storage
    _m("bw_mib_s", "MiB/s", True, False, "fio", "bandwidth"),
    _m("iops", "op/s", True, False, "fio", "I/O operations per second"),
    _m("clat_ms", "ms", False, True, "fio", "completion latency"),
    # relational
    _m("tps", "tx/s", True, False, "sql", "transactions per second"),
)

METRICS: dict[str, MetricInfo] = {m.name: m for m in _ALL}

CLIENT_KIND_FAMILIES: dict[str, tuple[str, ...]] = {
    "openai": ("llm", "any"),
    "vectordb": ("vectordb", "any"),
    "s3": ("s3", "any"),
    "fio": ("fio", "any"),
    "sql": ("sql", "any"),
    "triton": ("any",),
}


SHARED_REQUEST_METRICS: dict[str, tuple[str, ...]] = {
    "vectordb": ("request_throughput", "goodput", "queue_ms"),
    "s3": ("request_throughput", "goodput", "queue_ms"),
    "sql": ("request_throughput", "goodput", "queue_ms"),
    "triton": ("request_throughput", "goodput", "queue_ms"),
}
"""LLM-family metrics that mean the same for an operation-based kind (completed operations
per second, operations meeting every per-request objective, the client's own queueing)."""


def metrics_for_client_kind(kind: str) -> dict[str, MetricInfo]:
    """Metric names an SLO of a client of this kind may use."""
    families = CLIENT_KIND_FAMILIES.get(kind, ("any",))
    shared = SHARED_REQUEST_METRICS.get(kind, ())
    return {
        name: info for name, info in METRICS.items() if info.family in families or name in shared
    }


def higher_is_better(metric: str) -> bool:
    """Direction of a metric; a name with a statistic suffix (`ttft_ms.p99`) uses its base."""
    return METRICS[metric.split(".", 1)[0]].higher_is_better
