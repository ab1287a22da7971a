"""What one test cost the loaded service's nodes: energy, GPUs and CPU time per output token and
per request.

Throughput alone does not compare setups of different size or hardware: two GPUs serving twice
the tokens of one are no better. The clients count what was delivered (output tokens, completed
requests) and when; the node and GPU exporters count what the service's nodes spent in the same
window; the figures are the one divided by the other.

Pure functions on a test window's sample table (`monitor/samples.py`) and the test's records,
so every figure can be checked without a server. A figure appears only where its series cover
the whole window in every one of their sub-series (each GPU, each CPU and mode): a counter read
before the window started or after it ended would be a guess. The value at each edge of the
window is interpolated between the samples on either side of it, so a figure holds the window's
own energy and CPU time, not up to two scrape intervals more.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from pytest_aifactory.metrics.stats import measured, succeeded
from pytest_aifactory.monitor.series import EXTERNAL_KIND
from pytest_aifactory.monitor.window import SUB_SERIES
from pytest_aifactory.numbers import finite_number

if TYPE_CHECKING:
    from pytest_aifactory.endpoints import Endpoint

EnergySource = Literal["counter", "power x time"]
Spans = Sequence[tuple[float, float]]
"""A window: (start, end) spans in epoch seconds, in time order (`LoadWindow.spans`)."""

ENERGY_SERIES = "gpu_energy_millijoules"
"""DCGM's energy counter (mJ, per GPU): the first choice, exact whatever the power did."""
POWER_SERIES = "gpu_power_watts"
"""DCGM's power gauge (W, per GPU): integrated over the window where the counter is missing."""
CPU_SERIES = "node_cpu_seconds"
NOT_BUSY_MODES = frozenset({"idle", "iowait", "steal"})
"""CPU time that did no work on the node: idle, idle with I/O outstanding, and time a
hypervisor gave to another machine."""
GPU_IDENTITY_LABELS = ("UUID", "gpu")
"""What tells one GPU from another in DCGM's series (the UUID where the exporter gives it)."""
_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "[::]"})


@dataclass(frozen=True)
class FigureInfo:
    """One efficiency figure: its key in the summary, unit and meaning (docs/metrics.md)."""

    key: str
    unit: str
    label: str
    higher_is_better: bool = False
    """Tokens served per GPU or node: more is better; every cost per token or request: less."""


FIGURES: tuple[FigureInfo, ...] = (
    FigureInfo("energy_per_output_token_j", "J/token", "GPU energy per output token"),
    FigureInfo("energy_per_request_j", "J/request", "GPU energy per completed request"),
    FigureInfo("energy_j", "J", "GPU energy over the window"),
    FigureInfo("average_power_w", "W", "average GPU power over the window"),
    FigureInfo("output_throughput_per_gpu", "tok/s/GPU", "output tokens per second per GPU", True),
    FigureInfo(
        "output_throughput_per_node", "tok/s/node", "output tokens per second per node", True
    ),
    FigureInfo("cpu_seconds_per_output_token", "CPU-s/token", "busy CPU time per output token"),
    FigureInfo("cpu_seconds_per_request", "CPU-s/request", "busy CPU time per completed request"),
    FigureInfo("cpu_seconds", "CPU-s", "busy CPU time over the window"),
    FigureInfo("busy_cores", "cores", "average busy cores over the window"),
)
"""The figures in the order a report shows them; each appears only where its series exist."""


@dataclass(frozen=True)
class LoadWindow:
    """The measured load of one test and what it delivered. Each span runs from a first request
    sent to a last one ended (failed ones included: the server worked on them too); a level
    measured in several repeats has one span per repeat, and the pauses between them, when the
    service only idled, are no part of the window."""

    spans: tuple[tuple[float, float], ...]
    """(start, end) in epoch seconds, in time order, not overlapping."""
    output_tokens: float | None
    """Output tokens of the completed requests (the count `output_throughput` is made of);
    None for a kind whose requests make no tokens."""
    requests: int
    """Completed requests: energy spent on failed ones counts against these."""
    output_throughput: float | None = None
    """The test's own `per_level.output_throughput` (tokens/s)."""

    @property
    def duration_s(self) -> float:
        return sum(end - start for start, end in self.spans)


@dataclass(frozen=True)
class Placement:
    """Where the loaded service ran: the node series of these nodes are its."""

    service: str
    nodes: frozenset[str]
    """Node names (a sample's `node`): each server's node."""
    hosts: frozenset[str] = frozenset()
    """Addresses of the service's servers, every rank of one over several nodes: a node series
    scraped from one of them (its `instance`) is on the service's nodes too."""
    gpus_per_node: int = 0
    """GPUs the recipe asked for on each node (0: none declared)."""

    @property
    def node_count(self) -> int:
        return max(len(self.nodes), len(self.hosts), 1)


def service_placement(endpoint: Endpoint, gpus_per_node: int = 0) -> Placement:
    """The nodes and addresses of every server of the service (each replica, each rank)."""
    servers = endpoint.all_replicas()
    hosts = {_host(address) for server in servers for address in server.nodes}
    hosts |= {server.host for server in servers}
    return Placement(
        service=endpoint.name,
        nodes=frozenset(server.node for server in servers if server.node),
        hosts=frozenset(hosts - _WILDCARD_HOSTS),
        gpus_per_node=gpus_per_node,
    )


def _host(address: str) -> str:
    """`host` of `host:port` (`[v6]:port` too)."""
    host = address.rsplit(":", 1)[0] if ":" in address else address
    return host.strip("[]")


def load_window(
    records: pd.DataFrame, per_level: Mapping[str, Any] | None = None
) -> LoadWindow | None:
    """The measured requests' spans (one per repeat) and what they delivered; None without
    measured requests with times."""
    rows = measured(records)
    if rows.empty or "send_ts" not in rows or "end_ts" not in rows:
        return None
    times = pd.DataFrame(
        {
            "repeat": rows["repeat"].fillna(0) if "repeat" in rows else 0,
            "send": pd.to_numeric(rows["send_ts"], errors="coerce"),
            "end": pd.to_numeric(rows["end_ts"], errors="coerce"),
        }
    )
    bounds = times.groupby("repeat").agg(start=("send", "min"), end=("end", "max")).dropna()
    spans = merged_spans(zip(bounds["start"], bounds["end"], strict=True))
    if not spans:
        return None
    ok = succeeded(rows).to_numpy()
    tokens: float | None = None
    if "output_tokens" in rows:
        counted = pd.to_numeric(rows["output_tokens"], errors="coerce")
        if counted.notna().any():
            tokens = float(counted[ok].fillna(0).sum())
    throughput = finite_number((per_level or {}).get("output_throughput"))
    return LoadWindow(spans, tokens, int(ok.sum()), output_throughput=throughput)


def merged_spans(spans: Iterable[tuple[float, float]]) -> tuple[tuple[float, float], ...]:
    """Spans of positive length in time order, overlapping ones joined (no second counts
    twice)."""
    out: list[tuple[float, float]] = []
    for start, end in sorted((float(a), float(b)) for a, b in spans if b > a):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return tuple(out)


# -- reading series -----------------------------------------------------------------------------


def _labels(rows: pd.DataFrame, key: str) -> pd.Series:
    """One label's value on each row ("" where it has none), each distinct label set parsed
    once: a node's CPU series repeat a few dozen label sets over thousands of samples."""
    texts = rows["labels"].fillna("").astype(str)
    parsed = {text: str(json.loads(text or "{}").get(key, "")) for text in texts.unique()}
    return texts.map(parsed).astype(str)


def on_nodes(samples: pd.DataFrame, placement: Placement) -> pd.DataFrame:
    """The node and GPU samples of the service's nodes."""
    rows = samples[samples["source"].isin(["node", "gpu"])]
    if rows.empty:
        return rows
    instances = rows["instance"].fillna("").astype(str)
    hosts = instances.map({instance: _host(instance) for instance in instances.unique()})
    return rows[rows["node"].isin(placement.nodes) | hosts.isin(placement.hosts)]


def _sub_series(rows: pd.DataFrame) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(times, values) of each sub-series, in time order, one value per time."""
    # one sort for all: a node's CPUs and modes are a thousand sub-series
    ordered = rows.dropna(subset=["timestamp", "value"]).sort_values(
        [*SUB_SERIES, "timestamp"], kind="stable"
    )
    ordered = ordered.drop_duplicates([*SUB_SERIES, "timestamp"], keep="last")
    if ordered.empty:
        return
    # sorted by sub-series, each one's rows are together: cut where the sub-series changes
    codes = ordered.groupby(SUB_SERIES, dropna=False, sort=False).ngroup().to_numpy()
    cuts = np.flatnonzero(np.diff(codes)) + 1
    times = np.split(ordered["timestamp"].to_numpy(dtype=float), cuts)
    values = np.split(ordered["value"].to_numpy(dtype=float), cuts)
    yield from zip(times, values, strict=True)


def _covers(times: np.ndarray, spans: Spans) -> bool:
    return len(times) > 0 and times[0] <= spans[0][0] and times[-1] >= spans[-1][1]


def covered_increase(rows: pd.DataFrame, spans: Spans) -> float | None:
    """How much a counter grew over the spans, summed over its sub-series. A drop is a restart
    from zero (as `window.counter_increase` and Prometheus count it), so the value after it
    counts in full; each edge's value is interpolated between its neighbouring samples. None
    when there are no rows or spans, or some sub-series lacks a sample on either side of the
    window."""
    if rows.empty or not spans:
        return None
    starts, ends = (np.array(edge, dtype=float) for edge in zip(*spans, strict=True))
    total = 0.0
    for times, values in _sub_series(rows):
        if not _covers(times, spans):
            return None
        steps = np.diff(values)
        grown = np.concatenate(([0.0], np.cumsum(np.where(steps >= 0, steps, values[1:]))))
        total += float((np.interp(ends, times, grown) - np.interp(starts, times, grown)).sum())
    return total


def covered_integral(rows: pd.DataFrame, spans: Spans) -> float | None:
    """A gauge integrated over the spans (trapezoids between its samples, each edge's value
    interpolated), summed over its sub-series: watts to joules. None as for
    `covered_increase`."""
    if rows.empty or not spans:
        return None
    total = 0.0
    for times, values in _sub_series(rows):
        if not _covers(times, spans):
            return None
        for start, end in spans:
            inside = (times > start) & (times < end)
            at = np.concatenate(([start], times[inside], [end]))
            edges = np.interp([start, end], times, values)
            level = np.concatenate(([edges[0]], values[inside], [edges[1]]))
            total += float(np.trapezoid(level, at))
    return total


def gpu_energy(gpu_rows: pd.DataFrame, spans: Spans) -> tuple[float, EnergySource] | None:
    """Joules the GPUs used in the window: the energy counter's increase, else power x time;
    None when neither covers the window."""
    counter = covered_increase(gpu_rows[gpu_rows["series"] == ENERGY_SERIES], spans)
    if counter is not None:
        return counter / 1000.0, "counter"
    power = covered_integral(gpu_rows[gpu_rows["series"] == POWER_SERIES], spans)
    if power is not None:
        return power, "power x time"
    return None


def gpus_seen(gpu_rows: pd.DataFrame) -> int:
    """Distinct GPUs in DCGM's series: per node, by UUID (else index, else label set)."""
    if gpu_rows.empty:
        return 0
    identity = gpu_rows["labels"].astype(str)
    for label in reversed(GPU_IDENTITY_LABELS):
        value = _labels(gpu_rows, label)
        identity = value.where(value != "", identity)
    return int(pd.DataFrame({"node": gpu_rows["node"], "gpu": identity}).drop_duplicates().shape[0])


def node_cpus(cpu_rows: pd.DataFrame) -> int:
    """Distinct CPUs in the node exporter's CPU series, over the nodes."""
    if cpu_rows.empty:
        return 0
    frame = pd.DataFrame({"node": cpu_rows["node"], "cpu": _labels(cpu_rows, "cpu")})
    return int(frame.drop_duplicates().shape[0])


def busy_cpu_seconds(cpu_rows: pd.DataFrame, spans: Spans) -> float | None:
    """CPU time in every mode but `NOT_BUSY_MODES` over the window, all CPUs together."""
    if cpu_rows.empty:
        return None
    busy = cpu_rows[~_labels(cpu_rows, "mode").isin(NOT_BUSY_MODES)]
    return covered_increase(busy, spans)


# -- the figures --------------------------------------------------------------------------------


def efficiency(
    samples: pd.DataFrame, window: LoadWindow, placement: Placement
) -> dict[str, Any] | None:
    """The test's efficiency figures (keys of `FIGURES`) with what they were made of; None when
    no figure can be made. Figures whose series are missing or do not cover the window are left
    out, and `notes` says why where series were there."""
    duration = window.duration_s
    if duration <= 0:
        return None
    mine = on_nodes(samples, placement)
    gpu_rows = mine[mine["source"] == "gpu"]
    cpu_rows = mine[mine["series"] == CPU_SERIES]
    nodes = placement.node_count
    tokens = window.output_tokens if window.output_tokens else None
    requests = window.requests or None
    notes: list[str] = []
    figures: dict[str, Any] = {}

    seen = gpus_seen(gpu_rows)
    declared = placement.gpus_per_node * nodes
    gpus = seen or declared
    if window.output_throughput is not None:
        figures["output_throughput_per_node"] = window.output_throughput / nodes
        if gpus:
            figures["output_throughput_per_gpu"] = window.output_throughput / gpus
    if seen and declared and seen != declared:
        notes.append(
            f"the nodes' DCGM series show {seen} GPUs, the recipe asked for {declared}: every "
            "GPU of the nodes is counted, those of other jobs on them too"
        )

    energy = gpu_energy(gpu_rows, window.spans)
    if energy is not None:
        joules, source = energy
        figures.update(energy_j=joules, average_power_w=joules / duration, energy_source=source)
        if tokens:
            figures["energy_per_output_token_j"] = joules / tokens
        if requests:
            figures["energy_per_request_j"] = joules / requests
        if source == "power x time" and (gpu_rows["series"] == ENERGY_SERIES).any():
            notes.append("the GPU energy counter does not cover the window: power x time used")
    elif gpu_rows["series"].isin([ENERGY_SERIES, POWER_SERIES]).any():
        notes.append("the GPU energy and power series do not cover the window: no energy figure")

    cpu_seconds = busy_cpu_seconds(cpu_rows, window.spans)
    if cpu_seconds is not None:
        figures.update(cpu_seconds=cpu_seconds, busy_cores=cpu_seconds / duration)
        figures["node_cpus"] = node_cpus(cpu_rows)
        if tokens:
            figures["cpu_seconds_per_output_token"] = cpu_seconds / tokens
        if requests:
            figures["cpu_seconds_per_request"] = cpu_seconds / requests
    elif not cpu_rows.empty:
        notes.append("the nodes' CPU series do not cover the window: no CPU-time figure")

    if not any(info.key in figures for info in FIGURES):
        return None
    context: dict[str, Any] = {
        "service": placement.service,
        "window_s": duration,
        "requests": window.requests,
        "nodes": nodes,
    }
    if window.output_tokens is not None:
        context["output_tokens"] = window.output_tokens
    if gpus:
        context.update(gpus=gpus, gpus_from="DCGM series" if seen else "recipe")
    # summary.json is strict JSON: a figure that is no finite number is left out
    figures = {
        key: value
        for key, value in figures.items()
        if isinstance(value, str) or finite_number(value) is not None
    }
    if notes:
        figures["notes"] = notes
    return {**context, **figures}


def efficiency_figures(
    samples: pd.DataFrame,
    records: pd.DataFrame,
    summary: Mapping[str, Any],
    endpoint: Endpoint,
    gpus_per_node: int = 0,
) -> dict[str, Any] | None:
    """A test's `efficiency` block: its measured load against the series of the nodes of
    `endpoint`, the service it loaded. None for a service the run does not run (external):
    its nodes' series are not the run's."""
    if endpoint.kind == EXTERNAL_KIND:
        return None
    window = load_window(records, summary.get("per_level"))
    if window is None:
        return None
    return efficiency(samples, window, service_placement(endpoint, gpus_per_node))
