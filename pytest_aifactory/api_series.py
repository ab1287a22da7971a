"""A run's services' key series while it runs, from the run's own Prometheus.

Only the series each service kind declares (`monitor/series.py`) are asked for, so a chart of
them costs the Prometheus little; counters come back as per-second rates between consecutive
samples (a counter that went down was restarted: its new value is the increase), so a browser
plots them as they are.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

from pytest_aifactory.api_runs import find_own_run
from pytest_aifactory.api_shapes import ApiError, SeriesPoints, ServerSeries
from pytest_aifactory.cluster.run_records import RunRecord
from pytest_aifactory.monitor.credentials import read_credentials
from pytest_aifactory.monitor.layout import read_endpoints
from pytest_aifactory.monitor.query import PrometheusClient, PrometheusUnavailable
from pytest_aifactory.monitor.series import (
    NODE_LABEL,
    REPLICA_LABEL,
    SERVICE_LABEL,
    Series,
    service_series,
)

QUERY_TIMEOUT_S = 3.0
MAX_WINDOW_S = 24 * 3600.0


def per_second(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """A counter's samples as the rate over each interval, stamped at its end."""
    rates = []
    for (t0, v0), (t1, v1) in itertools.pairwise(points):
        if t1 <= t0:
            continue
        increase = v1 - v0 if v1 >= v0 else v1
        rates.append((t1, increase / (t1 - t0)))
    return rates


def run_services(record: RunRecord) -> list[tuple[str, str]]:
    """(name, kind) of each service the run started, once each (replicas share a name)."""
    found: dict[str, str] = {}
    for job in record.jobs:
        if job.service is not None:
            found.setdefault(job.service.name, job.service.kind)
    return sorted(found.items())


def _unit(series: Series) -> str:
    """A counter's points are rates: `requests` becomes `requests/s`."""
    return f"{series.unit}/s" if series.type == "counter" and series.unit else series.unit


def _label_suffix(labels: dict[str, str], shown: list[str]) -> str:
    parts = [f"{key}={labels[key]}" for key in shown if key in labels]
    return f"[{','.join(parts)}]" if parts else ""


def _fetch(
    client: PrometheusClient, run_id: str, service: str, series: Series, start: float, end: float
) -> list[SeriesPoints]:
    labels = {**series.run_labels(run_id), SERVICE_LABEL: service}
    found = client.raw_samples(series.selector(labels), start, end)
    several = len(found) > 1
    shown = []
    for metric, points in found:
        ordered = sorted(points)
        values = per_second(ordered) if series.type == "counter" else ordered
        where = _label_suffix(metric, [REPLICA_LABEL, NODE_LABEL]) if several else ""
        shown.append(
            SeriesPoints(
                name=series.name,
                service=service + where,
                unit=_unit(series),
                type=series.type,
                points=values,
            )
        )
    return shown


def series_of(record: RunRecord, window_s: float) -> ServerSeries:
    at = time.time()
    endpoints = read_endpoints(Path(record.run_dir))
    url = endpoints.prometheus_url if endpoints is not None else None
    if url is None:
        return ServerSeries(at=at, source="", note="the run has no Prometheus", series=[])
    services = run_services(record)
    if not any(service_series(kind) for _, kind in services):
        return ServerSeries(
            at=at, source=f"prometheus {url}", note="no service of the run has series", series=[]
        )
    credentials = read_credentials(Path(record.run_dir))
    client = PrometheusClient(
        url, timeout_s=QUERY_TIMEOUT_S, headers=credentials.header if credentials else None
    )
    collected: list[SeriesPoints] = []
    try:
        for service, kind in services:
            for series in service_series(kind):
                collected += _fetch(client, record.run_id, service, series, at - window_s, at)
    except PrometheusUnavailable as err:
        return ServerSeries(
            at=at,
            source=f"prometheus {url}",
            note=f"its Prometheus does not answer ({err})",
            series=[],
        )
    return ServerSeries(at=at, source=f"prometheus {url}", note=None, series=collected)


def server_series(ref: str, *, window_s: float = 300.0) -> ServerSeries:
    """The last `window_s` seconds of each of the run's services' key series, while the run's
    Prometheus answers; no series and a note saying why otherwise."""
    if not 0 < window_s <= MAX_WINDOW_S:
        raise ApiError(f"server_series: window_s must be in (0, {MAX_WINDOW_S:g}] (got {window_s})")
    return series_of(find_own_run(ref, "series"), window_s)
