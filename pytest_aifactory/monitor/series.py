"""The series a run collects: each service kind's key metrics, the node's and the clients'.

One definition serves three consumers: the Prometheus query that fills `metrics.parquet`, the
direct scraper used when no Prometheus binary exists, and the Grafana dashboard's panels. A
series names one Prometheus metric; counters are stored raw (rates are derived later), so the
same rows come out of Prometheus and of the direct scraper.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pytest_aifactory.services.base import ServiceConfigError, get_kind

SeriesType = Literal["counter", "gauge"]
SeriesSource = Literal["service", "node", "client", "gpu"]

RUN_LABEL = "aif_run"
ROLE_LABEL = "aif_role"
SERVICE_LABEL = "aif_service"
NODE_LABEL = "aif_node"
KIND_LABEL = "aif_kind"
EXTERNAL_KIND = "external"
"""The `KIND_LABEL` of a `kind: external` service: not the run's, so sent no key of the run's."""
AUTH_LABEL = "aif_auth"
BASIC_AUTH = "basic"
"""`AUTH_LABEL` of a service target served by an exporter that lets in only holders of the
run's monitoring password (HTTP basic authentication), not of the run's API key."""
REPLICA_LABEL = "aif_replica"
"""On each server of a service of several (replicas): which one, so its series stay apart."""
"""Labels every scrape target carries (file-based discovery sets them), so one Prometheus can
serve several runs and every sample says which service and node it came from."""

SOURCE_ROLES: dict[SeriesSource, str] = {
    "service": "service",
    "node": "node",
    "gpu": "node",
    "client": "pushgateway",
}
"""Where each source's series are scraped from (a target's `aif_role`)."""

RATE_WINDOW = "$__rate_interval"
"""Grafana's rate window; replaced by a concrete duration when a query runs outside Grafana."""


@dataclass(frozen=True)
class Series:
    """One metric worth keeping, and how to show it."""

    name: str
    """Short name used in `metrics.parquet` and `aifactory metrics --series`."""
    metric: str
    """The Prometheus metric name as the exporter writes it."""
    type: SeriesType
    source: SeriesSource
    unit: str
    help: str

    @property
    def role(self) -> str:
        """The `aif_role` of the targets this series is read from: a series is taken from
        nowhere else, so one pushed to the pushgateway (role `pushgateway`) never counts as a
        server's or a node's, whatever labels it was pushed with."""
        return SOURCE_ROLES[self.source]

    def run_labels(self, run_id: str) -> dict[str, str]:
        """What selects this series of one run."""
        return {RUN_LABEL: run_id, ROLE_LABEL: self.role}

    def selector(self, labels: dict[str, str] | None = None) -> str:
        """`metric{label="value",...}`; label values are escaped for PromQL."""
        if not labels:
            return self.metric
        matchers = [f'{key}="{_escape(value)}"' for key, value in sorted(labels.items())]
        return f"{self.metric}{{{','.join(matchers)}}}"

    def promql(self, labels: dict[str, str] | None = None, window: str = RATE_WINDOW) -> str:
        """What a chart plots: per-second rate for counters, the value for gauges."""
        selector = self.selector(labels)
        if self.type == "counter":
            return f"rate({selector}[{window}])"
        return selector


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


NODE_SERIES: tuple[Series, ...] = (
    Series(
        "node_cpu_seconds",
        "node_cpu_seconds_total",
        "counter",
        "node",
        "s",
        "CPU time per CPU and mode",
    ),
    Series("node_load1", "node_load1", "gauge", "node", "", "1-minute load average"),
    Series(
        "node_memory_available_bytes",
        "node_memory_MemAvailable_bytes",
        "gauge",
        "node",
        "bytes",
        "memory available for new work",
    ),
    Series(
        "node_memory_total_bytes",
        "node_memory_MemTotal_bytes",
        "gauge",
        "node",
        "bytes",
        "memory installed",
    ),
    Series(
        "node_network_receive_bytes",
        "node_network_receive_bytes_total",
        "counter",
        "node",
        "bytes",
        "bytes received per interface",
    ),
    Series(
        "node_network_transmit_bytes",
        "node_network_transmit_bytes_total",
        "counter",
        "node",
        "bytes",
        "bytes sent per interface",
    ),
)
"""From the node exporter on every node that runs a service or a client."""

GPU_SERIES: tuple[Series, ...] = (
    Series("gpu_utilization", "DCGM_FI_DEV_GPU_UTIL", "gauge", "gpu", "%", "GPU utilization"),
    Series(
        "gpu_memory_used_bytes",
        "DCGM_FI_DEV_FB_USED",
        "gauge",
        "gpu",
        "MiB",
        "GPU frame buffer in use",
    ),
    Series("gpu_power_watts", "DCGM_FI_DEV_POWER_USAGE", "gauge", "gpu", "W", "GPU power draw"),
    Series(
        "gpu_energy_millijoules",
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
        "counter",
        "gpu",
        "mJ",
        "GPU energy used",
    ),
)
"""From NVIDIA's DCGM exporter where a site runs one; absent series are simply not stored."""

CLIENT_SERIES: tuple[Series, ...] = (
    Series(
        "client_requests_completed",
        "aifactory_client_requests_completed_total",
        "counter",
        "client",
        "requests",
        "requests answered successfully",
    ),
    Series(
        "client_requests_failed",
        "aifactory_client_requests_failed_total",
        "counter",
        "client",
        "requests",
        "requests that ended in an error",
    ),
    Series(
        "client_output_tokens",
        "aifactory_client_output_tokens_total",
        "counter",
        "client",
        "tokens",
        "output tokens received",
    ),
    Series(
        "client_in_flight",
        "aifactory_client_in_flight",
        "gauge",
        "client",
        "requests",
        "requests sent and not yet finished",
    ),
)
"""Pushed by every load-generator process to the run's pushgateway while it runs; grouping
labels: `aif_run`, `client`, `level`, `node`, `process`."""

CLIENT_GROUP_LABELS = ("aif_run", "client", "level", "node", "process")


def service_series(kind: str) -> tuple[Series, ...]:
    """The key series a service kind declares (none for kinds without a metrics endpoint)."""
    try:
        return get_kind(kind).metric_series
    except ServiceConfigError:
        return ()


def find_series(name: str, kinds: list[str] | tuple[str, ...] = ()) -> Series | None:
    for series in (*NODE_SERIES, *GPU_SERIES, *CLIENT_SERIES, *_all_service_series(kinds)):
        if series.name == name:
            return series
    return None


def _all_service_series(kinds: list[str] | tuple[str, ...]) -> list[Series]:
    return [s for kind in kinds for s in service_series(kind)]
