"""The figures that sum up a level of each client kind at a glance: one throughput and one
latency, as the field quotes them (tokens/s and TTFT for LLM serving, QPS for vector search,
MiB/s for object storage, tps for databases, bandwidth and completion latency for fio).

Terminal summaries, report overviews and the throughput-latency charts all use this one table,
so every kind reads the same way everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pytest_aifactory.numbers import finite_number


@dataclass(frozen=True)
class Headline:
    throughput: str
    """Per-level metric name (summary `per_level`)."""
    throughput_label: str
    latency: str
    """Per-request metric name (summary `per_request`)."""
    latency_label: str


LLM = Headline("output_throughput", "out tok/s", "ttft_ms", "TTFT")
HEADLINES: dict[str, Headline] = {
    "openai": LLM,
    "vectordb": Headline("qps", "QPS", "latency_ms", "latency"),
    "s3": Headline("throughput_mib_s", "MiB/s", "latency_ms", "latency"),
    "sql": Headline("tps", "tps", "latency_ms", "latency"),
    "triton": Headline("request_throughput", "req/s", "latency_ms", "latency"),
    "fio": Headline("bw_mib_s", "MiB/s", "clat_ms", "clat"),
}


def headline_of(kind: str | None) -> Headline:
    """A kind's headline figures (LLM serving's for an unknown kind, as in older runs)."""
    return HEADLINES.get(str(kind or "openai"), LLM)


def headline_values(test: Mapping[str, Any]) -> dict[str, float | None]:
    """A test entry's throughput and latency p50/p99 by its kind's headline."""
    head = headline_of(test.get("kind"))
    latency = ((test.get("per_request") or {}).get(head.latency)) or {}
    return {
        "throughput": finite_number((test.get("per_level") or {}).get(head.throughput)),
        "latency_p50": finite_number(latency.get("p50")),
        "latency_p99": finite_number(latency.get("p99")),
    }
