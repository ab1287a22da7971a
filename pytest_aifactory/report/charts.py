"""Charts of a run: pure functions from records, samples and summaries to Altair charts.

Vega renders in a browser and vl-convert renders files, and neither copes with a million rows:
every chart here is drawn from a few hundred precomputed points (quantiles for distributions,
time bins for series), however many requests the run made. The same functions serve the
run's report page and anyone who wants one chart of a test (pytest-html, notebooks).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import math
from collections.abc import Collection, Iterable, Mapping
from typing import Any, cast

import altair as alt
import numpy as np
import pandas as pd

from pytest_aifactory.loadgen.kinds import all_metrics
from pytest_aifactory.metrics.histogram import LogHistogram as BaseLogHistogram
from pytest_aifactory.metrics.intervals import interval_of
from pytest_aifactory.monitor.series import find_series
from pytest_aifactory.report.headline import headline_of, headline_values
from pytest_aifactory.services.base import ServiceConfigError, get_kind

LATENCY_TITLES: dict[str, str] = {
    name: info.chart_title for name, info in all_metrics().items() if info.chart_title
}
"""Per-request latencies drawn as distributions, with their axis titles (each kind declares
which of its metrics are drawn; a kind draws those its records have)."""
LATENCY_METRICS: tuple[str, ...] = tuple(LATENCY_TITLES)

CHART_TITLES: dict[str, str] = {
    "latency_cdf": "Latency distributions",
    "errors": "Failed requests by kind over time",
    "timeline": "Client throughput and server series over time",
    "throughput_latency": "Throughput vs latency across load levels",
    "goodput": "Goodput and throughput vs load",
    "latency_by_level": "Latency distributions by load level",
}
"""What each chart name of `charts_for_test` / `charts_for_client` shows."""

CDF_POINTS = 160
"""Points per distribution: enough for a smooth curve, with a dense tail (p99, p99.9)."""
MAX_TIME_BINS = 600
"""Time bins per series: one second each, wider for windows longer than this many seconds."""
MAX_LEVEL_POINTS = 3000
"""Points of a by-level distribution chart in all; fewer per level when there are many."""

WIDTH = 620
PANEL_HEIGHT = 120
_IDLE_MODES = frozenset({"idle", "iowait"})


# -- rows that count ---------------------------------------------------------------------------


def _numeric(records: pd.DataFrame, column: str) -> np.ndarray:
    if column not in records:
        return np.full(len(records), np.nan)
    return pd.to_numeric(records[column], errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def _texts(records: pd.DataFrame, column: str) -> pd.Series:
    """A text column as plain strings, missing values empty (for small selections only)."""
    if column not in records:
        return pd.Series([""] * len(records), index=records.index, dtype=object)
    values = records[column].astype(object)
    return values.where(values.notna(), "").astype(str)


def _equals(records: pd.DataFrame, column: str, value: str) -> np.ndarray:
    """`column == value` per row, without turning a million strings into Python objects
    (works on plain, Arrow-backed and categorical text columns alike)."""
    if column not in records:
        return np.zeros(len(records), dtype=bool)
    return (records[column] == value).to_numpy(dtype=bool, na_value=False)


def succeeded_mask(records: pd.DataFrame) -> np.ndarray:
    """True for each request with an empty (or missing) `error`, as `metrics.stats` counts."""
    if "error" not in records:
        return np.ones(len(records), dtype=bool)
    error = records["error"]
    mask: np.ndarray = error.isna().to_numpy(dtype=bool) | _equals(records, "error", "")
    return mask


def measured_mask(records: pd.DataFrame) -> np.ndarray:
    """True for measure-phase rows (every row when there is no phase column)."""
    if "phase" not in records:
        return np.ones(len(records), dtype=bool)
    return _equals(records, "phase", "measure")


def latency_rows(records: pd.DataFrame) -> pd.DataFrame:
    """The rows latency statistics are taken over: measured and successful."""
    return cast(pd.DataFrame, records[measured_mask(records) & succeeded_mask(records)])


def pooled_itl(records: pd.DataFrame) -> np.ndarray:
    """Every inter-token gap of the given rows in one array (docs/metrics.md pools them).

    Arrow-backed list columns are flattened without a Python loop; object columns of lists
    (what `loadgen.records` gives) are converted once.
    """
    # deferred: pyarrow.compute is slow to import and only Arrow-backed gaps need it
    import pyarrow as pa
    import pyarrow.compute as pc

    if "itl_ms" not in records or not len(records):
        return np.empty(0)
    column = records["itl_ms"]
    try:
        array = cast(
            "pa.ListArray[Any]", pa.array(column, type=pa.list_(pa.float64()), from_pandas=True)
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError):
        cells = [np.asarray(c, dtype=float).ravel() for c in column if _is_list(c)]
        values = np.concatenate(cells) if cells else np.empty(0)
    else:
        values = pc.list_flatten(array).to_numpy(zero_copy_only=False)
    values = np.asarray(values, dtype=float)
    return values[np.isfinite(values)]


def _is_list(cell: Any) -> bool:
    return cell is not None and np.ndim(cell) == 1


# -- distributions -------------------------------------------------------------------------------


def cdf_probabilities(points: int = CDF_POINTS) -> np.ndarray:
    """Cumulative fractions to sample: even steps to 0.99, then log steps to 0.9999, then 1."""
    tail = max(points // 4, 4)
    body = np.linspace(0.0, 0.99, max(points - tail - 1, 2), endpoint=False)
    return np.concatenate([body, 1.0 - np.logspace(-2, -4, tail), [1.0]])


def cdf_points(values: Iterable[float] | np.ndarray, points: int = CDF_POINTS) -> pd.DataFrame:
    """The empirical CDF of `values` as (value, fraction) points.

    A small sample keeps every value; a large one is sampled at `cdf_probabilities` with
    linear interpolation, as the summary's percentiles are.
    """
    array = np.asarray(values if isinstance(values, np.ndarray) else list(values), dtype=float)
    array = array[np.isfinite(array)]
    if array.size == 0:
        return pd.DataFrame({"value": pd.Series(dtype=float), "fraction": pd.Series(dtype=float)})
    if array.size <= points:
        ordered = np.sort(array)
        fractions = np.arange(1, ordered.size + 1) / ordered.size
        return pd.DataFrame({"value": ordered, "fraction": fractions})
    probabilities = cdf_probabilities(points)
    return pd.DataFrame({"value": np.quantile(array, probabilities), "fraction": probabilities})


class LogHistogram(BaseLogHistogram):
    """A `metrics.histogram.LogHistogram` that draws its CDF."""

    def cdf(self, points: int = CDF_POINTS) -> pd.DataFrame:
        """(value, fraction) points at `cdf_probabilities`, interpolated inside a bin."""
        if self.total == 0:
            return cdf_points(np.empty(0))
        probabilities = cdf_probabilities(points)
        values = self.quantiles(probabilities)
        values[0], values[-1] = self.minimum, self.maximum
        return pd.DataFrame({"value": values, "fraction": probabilities})


def latency_cdf_points(
    records: pd.DataFrame,
    metrics: Collection[str] = LATENCY_METRICS,
    points: int = CDF_POINTS,
    pooled: Mapping[str, pd.DataFrame] | None = None,
) -> pd.DataFrame:
    """CDF points of each latency metric over the measured, successful rows.

    Columns `metric, value, fraction`. `pooled` gives points computed elsewhere for some
    metrics (the report streams `itl_ms` through a `LogHistogram` rather than load it).
    """
    rows = latency_rows(records) if len(records) else records
    frames = []
    for metric in metrics:
        if pooled is not None and metric in pooled:
            points_frame = pooled[metric]
        elif metric == "itl_ms":
            points_frame = cdf_points(pooled_itl(rows), points)
        else:
            points_frame = cdf_points(_numeric(rows, metric), points)
        if len(points_frame):
            frames.append(points_frame.assign(metric=metric)[["metric", "value", "fraction"]])
    if not frames:
        return pd.DataFrame(
            {
                "metric": pd.Series(dtype=object),
                "value": pd.Series(dtype=float),
                "fraction": pd.Series(dtype=float),
            }
        )
    return pd.concat(frames, ignore_index=True)


# -- time series ---------------------------------------------------------------------------------


def _epoch(text: Any) -> float | None:
    if not text:
        return None
    try:
        return dt.datetime.fromisoformat(str(text)).timestamp()
    except ValueError:
        return None


def window_of(test: Mapping[str, Any], records: pd.DataFrame) -> tuple[float, float] | None:
    """The test's time span in epoch seconds: its start and end as recorded, widened to cover
    every request's send and completion; None when neither says anything."""
    starts = [_epoch(test.get("started_at"))]
    ends = [_epoch(test.get("ended_at"))]
    for column in ("send_ts", "scheduled_ts"):
        values = _numeric(records, column)
        values = values[np.isfinite(values)]
        if values.size:
            starts.append(float(values.min()))
            ends.append(float(values.max()))
    values = _numeric(records, "end_ts")
    values = values[np.isfinite(values)]
    if values.size:
        ends.append(float(values.max()))
    start = min((s for s in starts if s is not None), default=None)
    end = max((e for e in ends if e is not None), default=None)
    if start is None or end is None:
        return None
    return start, max(end, start + 1.0)


def bin_width(span_s: float, max_bins: int = MAX_TIME_BINS) -> float:
    """One second, or whole seconds wide enough to keep a window under `max_bins` bins."""
    return float(max(1, math.ceil(span_s / max_bins)))


def _edges(start: float, end: float) -> tuple[np.ndarray, float]:
    width = bin_width(end - start)
    count = max(1, math.ceil((end - start) / width))
    return start + width * np.arange(count + 1), width


def client_throughput(records: pd.DataFrame, start: float, end: float) -> pd.DataFrame:
    """Completed requests and output tokens per second, in time bins by completion time.

    Columns `t` (seconds since `start` at the bin's start), `panel` (`requests` / `tokens`),
    `name`, `value`. Every phase counts: the timeline shows the whole window, warmup included.
    """
    ok = succeeded_mask(records)
    ends = _numeric(records, "end_ts")[ok]
    raw_tokens = _numeric(records, "output_tokens")[ok]
    tokens = np.nan_to_num(raw_tokens, nan=0.0)
    keep = np.isfinite(ends)
    edges, width = _edges(start, end)
    done, _ = np.histogram(ends[keep], edges)
    starts = edges[:-1] - start
    frame = pd.DataFrame(
        {
            "t": starts,
            "panel": ["requests"] * len(starts),
            "name": ["client: completed req/s"] * len(starts),
            "value": done / width,
        }
    )
    if not np.isfinite(raw_tokens).any() and len(records):
        return frame  # a kind without tokens (vector search, storage): requests only
    generated, _ = np.histogram(ends[keep], edges, weights=tokens[keep])
    tokens_frame = pd.DataFrame(
        {
            "t": starts,
            "panel": ["tokens"] * len(starts),
            "name": ["client: output tok/s"] * len(starts),
            "value": generated / width,
        }
    )
    return pd.concat([frame, tokens_frame], ignore_index=True)


def error_timeline(records: pd.DataFrame, start: float, end: float) -> pd.DataFrame:
    """Failed requests per time bin and error kind (`HTTPError`, `TimeoutError`, ...).

    Columns `t` (bin start, seconds since `start`), `t_end`, `kind`, `count`; bins without a
    failure are left out. A failure is placed at its end, else its send, else its schedule.
    """
    failed = records[~succeeded_mask(records)]
    columns = {"t": float, "t_end": float, "kind": object, "count": np.int64}
    if not len(failed):
        return pd.DataFrame({name: pd.Series(dtype=kind) for name, kind in columns.items()})
    when = _numeric(failed, "end_ts")
    for column in ("send_ts", "scheduled_ts"):
        when = np.where(np.isfinite(when), when, _numeric(failed, column))
    texts = _texts(failed, "error")
    kinds = texts.str.split(":", n=1).str[0].str.strip().replace("", "unknown")
    edges, width = _edges(start, end)
    index = np.clip(((when - start) // width), 0, len(edges) - 2)
    frame = pd.DataFrame({"bin": index, "kind": kinds.to_numpy(dtype=object)})
    frame = frame[np.isfinite(when)]
    counts = frame.groupby(["bin", "kind"]).size().reset_index(name="count")
    counts["t"] = counts["bin"] * width
    counts["t_end"] = counts["t"] + width
    return cast(pd.DataFrame, counts[["t", "t_end", "kind", "count"]])


@functools.cache
def _catalogue(name: str, kinds: tuple[str, ...]) -> tuple[str, str, str] | None:
    series = find_series(name, kinds)
    return (series.type, series.unit, series.source) if series else None


def _answered(kinds: Collection[str]) -> set[str]:
    """The counters of requests the service kinds answered (`request_count_series`)."""
    found = set()
    for kind in kinds:
        with contextlib.suppress(ServiceConfigError):
            series = get_kind(kind).request_count_series
            if series:
                found.add(series)
    return found


def _kinds(summary: Mapping[str, Any]) -> tuple[str, ...]:
    services = summary.get("services") or {}
    return tuple(sorted({str(s.get("kind")) for s in services.values() if s.get("kind")}))


def _generated_series(test: Mapping[str, Any]) -> set[str]:
    server = test.get("server") or {}
    return {str(s["series"]) for s in server.values() if isinstance(s, dict) and s.get("series")}


def _counter_rates(rows: pd.DataFrame) -> pd.DataFrame:
    """Per-second rates of raw counter samples, per (service, instance, labels) series, each
    placed at the start of its interval; a drop (a restarted server) counts from zero, as
    Prometheus' rate() does."""
    keys = ["series", "service", "node", "instance", "labels"]
    ordered = rows.sort_values([*keys, "timestamp"])
    grouped = ordered.groupby(keys, dropna=False, sort=False)
    d_value = grouped["value"].diff()
    d_time = grouped["timestamp"].diff()
    d_value = d_value.where(d_value >= 0, ordered["value"])
    rate = d_value / d_time
    out = ordered.assign(value=rate, timestamp=ordered["timestamp"] - d_time)
    return cast(
        pd.DataFrame,
        out[np.isfinite(out["value"].to_numpy(dtype=float)) & (d_time > 0).to_numpy()],
    )


def _label(labels: pd.Series, key: str) -> pd.Series:
    """One label's value from each sample's JSON labels (parsed once per distinct text)."""

    def value(text: Any) -> str:
        try:
            found = json.loads(str(text))
        except ValueError:
            return ""
        return str(found.get(key, "")) if isinstance(found, dict) else ""

    return labels.map({text: value(text) for text in labels.unique()}).astype(str)


def _cpu_busy(rows: pd.DataFrame) -> pd.DataFrame:
    """Percent of CPU time not idle per node, from the node exporter's raw per-mode counters."""
    idle = _label(rows["labels"], "mode").isin(_IDLE_MODES)
    frame = rows.assign(idle=np.where(idle, rows["value"], 0.0))
    sums = frame.groupby(["node", "instance", "timestamp"], dropna=False)[["value", "idle"]].sum()
    sums = sums.reset_index().sort_values(["node", "instance", "timestamp"])
    grouped = sums.groupby(["node", "instance"], dropna=False, sort=False)
    d_total = grouped["value"].diff()
    d_idle = grouped["idle"].diff()
    busy = 100.0 * (1.0 - d_idle / d_total)
    d_time = grouped["timestamp"].diff()
    out = sums.assign(
        value=busy,
        name=sums["node"].astype(str) + ": CPU busy %",
        timestamp=sums["timestamp"] - d_time,
    )
    valid = (d_total > 0).to_numpy() & np.isfinite(busy.to_numpy(dtype=float))
    return cast(pd.DataFrame, out[valid])


def _line_name(row_series: pd.Series, frame: pd.DataFrame, suffix: str = "") -> pd.Series:
    base = frame["service"].fillna("").astype(str)
    base = base.where(base != "", frame["node"].fillna("").astype(str))
    name = base + ": " + row_series.astype(str) + suffix
    if frame.groupby(["series", "service"], dropna=False)["instance"].nunique().max() > 1:
        name = name + " @ " + frame["instance"].fillna("").astype(str)
    return name


def server_timeline(
    metrics: pd.DataFrame | None,
    start: float,
    end: float,
    kinds: Collection[str] = (),
    generated: Collection[str] = (),
) -> pd.DataFrame:
    """Server and node series of one window, ready to plot: columns `t, panel, name, value`.

    Panels: `tokens` (generated tokens/s from the service's raw counter), `requests-client`
    (requests/s the server counted answering, beside the client's completed requests: Triton's
    successes, PostgreSQL's transactions), `requests` (the service's request gauges:
    processing, deferred, running, waiting), `cpu` (node CPU busy %) and `gpu` (GPU
    utilization %). `generated` names the token counters to use (the summary's
    `server[*].series`); without it, service counters named `*_generated_tokens` are used.
    """
    empty = pd.DataFrame(
        {
            "t": pd.Series(dtype=float),
            "panel": pd.Series(dtype=object),
            "name": pd.Series(dtype=object),
            "value": pd.Series(dtype=float),
        }
    )
    if metrics is None or not len(metrics):
        return empty
    rows = metrics[(metrics["timestamp"] >= start - 60) & (metrics["timestamp"] <= end + 60)]
    if not len(rows):
        return empty
    rows = rows.assign(
        series=rows["series"].astype(str),
        source=rows["source"].astype(str),
        service=rows["service"].astype(object).fillna(""),
        node=rows["node"].astype(object).fillna(""),
        instance=rows["instance"].astype(object).fillna(""),
        labels=rows["labels"].astype(object).fillna("{}"),
    )
    kinds = tuple(sorted(kinds))
    info = {name: _catalogue(name, kinds) for name in rows["series"].unique()}
    wanted_tokens = set(generated) or {n for n in info if n.endswith("_generated_tokens")}
    parts: list[pd.DataFrame] = []

    tokens = rows[(rows["source"] == "service") & rows["series"].isin(wanted_tokens)]
    if len(tokens):
        rates = _counter_rates(tokens)
        label = rates["series"].str.replace(r"^[a-z0-9]+_", "", regex=True).str.replace("_", " ")
        parts.append(rates.assign(panel="tokens", name=_line_name(label, rates, "/s (server)")))

    answered = rows[(rows["source"] == "service") & rows["series"].isin(_answered(kinds))]
    if len(answered):
        rates = _counter_rates(answered)
        name = _line_name(rates["series"], rates, "/s (server)")
        parts.append(rates.assign(panel="requests-client", name=name))

    gauges = [
        n
        for n, i in info.items()
        if i is not None and i[0] == "gauge" and i[2] == "service" and i[1] == "requests"
    ]
    requests = rows[(rows["source"] == "service") & rows["series"].isin(gauges)]
    if len(requests):
        parts.append(
            requests.assign(panel="requests", name=_line_name(requests["series"], requests))
        )

    cpu = rows[rows["series"] == "node_cpu_seconds"]
    if len(cpu):
        parts.append(_cpu_busy(cpu).assign(panel="cpu"))

    gpu = rows[(rows["series"] == "gpu_utilization")]
    if len(gpu):
        label = "GPU " + _label(gpu["labels"], "gpu")
        parts.append(gpu.assign(panel="gpu", name=gpu["node"].astype(str) + ": " + label + " %"))

    if not parts:
        return empty
    frame = pd.concat([p[["timestamp", "panel", "name", "value"]] for p in parts])
    frame = frame[(frame["timestamp"] >= start) & (frame["timestamp"] <= end)]
    frame = frame.assign(t=frame["timestamp"] - start)
    width = bin_width(end - start)
    if len(frame) and frame.groupby(["panel", "name"]).size().max() > MAX_TIME_BINS:
        frame = frame.assign(t=(frame["t"] // width) * width)
        # as_index=False: a DataFrame with the group keys as columns
        frame = cast(
            pd.DataFrame, frame.groupby(["panel", "name", "t"], as_index=False)["value"].mean()
        )
    return frame[["t", "panel", "name", "value"]].reset_index(drop=True)


# -- levels of one client ----------------------------------------------------------------------


def _number(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number if math.isfinite(number) else math.nan


def client_tests(summary: Mapping[str, Any], client: str) -> list[dict[str, Any]]:
    """The client's tests in load order (by level, then by start)."""
    tests = [t for t in summary.get("tests") or [] if t.get("client") == client]
    return sorted(tests, key=lambda t: (_number(t.get("level")), str(t.get("started_at") or "")))


def _interval_columns(
    test: Mapping[str, Any], name: str, metric: str, statistic: str | None
) -> dict[str, float]:
    low, high = interval_of(test, metric, statistic) or [math.nan, math.nan]
    return {f"{name}_low": low, f"{name}_high": high}


def client_levels(summary: Mapping[str, Any], client: str) -> pd.DataFrame:
    """One row per load level of a client: throughputs, goodput, and the p50 and p99 of its
    kind's headline latency (TTFT for LLM serving; see `report.headline`), with the names of
    the headline figures in `throughput_name` / `latency_name`; each with the ends of its
    interval (`<column>_low`, `<column>_high`: NaN without one)."""
    rows = []
    for test in client_tests(summary, client):
        per_level = test.get("per_level") or {}
        head = headline_of(test.get("kind"), test.get("api"))
        values = headline_values(test)
        rows.append(
            {
                **_interval_columns(test, "throughput", head.throughput, None),
                **_interval_columns(test, "goodput", "goodput", None),
                **_interval_columns(test, "latency_p50", head.latency, "p50"),
                **_interval_columns(test, "latency_p99", head.latency, "p99"),
                "level": _number(test.get("level")),
                "level_label": str(test.get("level_label") or test.get("level") or ""),
                "mode": str(test.get("mode") or ""),
                "passed": bool(test.get("passed")),
                "throughput": _number(values["throughput"]),
                "throughput_name": f"{head.throughput} ({head.throughput_label})",
                "request_throughput": _number(per_level.get("request_throughput")),
                "goodput": _number(per_level.get("goodput")),
                "achieved_rate": _number(per_level.get("achieved_rate")),
                "latency_p50": _number(values["latency_p50"]),
                "latency_p99": _number(values["latency_p99"]),
                "latency_name": head.latency_label,
            }
        )
    return pd.DataFrame(rows)


# -- charts ------------------------------------------------------------------------------------


def _title(text: str, subtitle: str = "") -> alt.TitleParams:
    return alt.TitleParams(text=text, subtitle=subtitle or alt.Undefined, anchor="start")


def latency_cdf_chart(points: pd.DataFrame, title: str = "") -> alt.HConcatChart | None:
    """One CDF panel per latency metric of one test (columns `metric, value, fraction`)."""
    panels = []
    for metric in LATENCY_METRICS:
        data = points[points["metric"] == metric]
        if not len(data):
            continue
        panels.append(
            alt.Chart(data[["value", "fraction"]])
            .mark_line(interpolate="step-after")
            .encode(
                x=alt.X("value:Q", title=LATENCY_TITLES[metric], scale=alt.Scale(zero=False)),
                y=alt.Y("fraction:Q", title="fraction of requests", scale=alt.Scale(domain=[0, 1])),
                tooltip=[
                    alt.Tooltip("value:Q", title=LATENCY_TITLES[metric], format=".1f"),
                    alt.Tooltip("fraction:Q", format=".4f"),
                ],
            )
            .properties(width=190, height=160)
        )
    if not panels:
        return None
    return alt.hconcat(*panels).properties(title=_title(title or CHART_TITLES["latency_cdf"]))


def latency_by_level_chart(
    points: pd.DataFrame, order: list[str], title: str = ""
) -> alt.VConcatChart | None:
    """CDF of each latency metric with one line per load level (columns `metric,
    level_label, value, fraction`), on a log axis since levels span orders of magnitude."""
    points = points[points["value"] > 0]
    colour = alt.Color(
        "level_label:N", title="level", sort=order, scale=alt.Scale(scheme="viridis")
    )
    panels = []
    for metric in LATENCY_METRICS:
        data = points[points["metric"] == metric]
        if not len(data):
            continue
        panels.append(
            alt.Chart(data[["level_label", "value", "fraction"]])
            .mark_line(interpolate="step-after")
            .encode(
                x=alt.X("value:Q", title=LATENCY_TITLES[metric], scale=alt.Scale(type="log")),
                y=alt.Y("fraction:Q", title="fraction", scale=alt.Scale(domain=[0, 1])),
                color=colour,
                tooltip=[
                    alt.Tooltip("level_label:N", title="level"),
                    alt.Tooltip("value:Q", title=LATENCY_TITLES[metric], format=".1f"),
                    alt.Tooltip("fraction:Q", format=".4f"),
                ],
            )
            .properties(width=280, height=160)
        )
    if not panels:
        return None
    rows = [alt.hconcat(*panels[i : i + 2]) for i in range(0, len(panels), 2)]
    return alt.vconcat(*rows).properties(title=_title(title or CHART_TITLES["latency_by_level"]))


def time_unit(span_s: float) -> tuple[float, str]:
    """Seconds per axis unit and its name: seconds for a short test, minutes or hours for a
    long one, so tick labels stay short."""
    if span_s > 3 * 3600:
        return 3600.0, "hours"
    if span_s > 20 * 60:
        return 60.0, "minutes"
    return 1.0, "seconds"


def _time_axis(span: float) -> alt.X:
    """Times in the data are seconds; the axis shows them in `time_unit(span)`."""
    divisor, unit = time_unit(span)
    return alt.X(
        "t_axis:Q", title=f"{unit} since test start", scale=alt.Scale(domain=[0, span / divisor])
    )


def _in_time_unit(frame: pd.DataFrame, span: float) -> pd.DataFrame:
    divisor = time_unit(span)[0]
    return frame.assign(t_axis=frame["t"] / divisor)


_PANELS: tuple[tuple[str, str], ...] = (
    ("requests-client", "completed requests/s"),
    ("tokens", "output tokens/s"),
    ("requests", "server requests"),
    ("cpu", "node CPU busy %"),
    ("gpu", "GPU utilization %"),
)


def timeline_chart(
    client: pd.DataFrame, server: pd.DataFrame, span: float, title: str = ""
) -> alt.VConcatChart | None:
    """Client throughput and server series of one test, stacked on one shared time axis.

    `client` comes from `client_throughput` and `server` from `server_timeline`; panels with no
    data are left out.
    """
    client = client.assign(panel=client["panel"].replace({"requests": "requests-client"}))
    frame = pd.concat([client, server], ignore_index=True)
    panels = []
    for panel, label in _PANELS:
        data = frame[frame["panel"] == panel]
        if not len(data) or not np.isfinite(data["value"].to_numpy(dtype=float)).any():
            continue
        panels.append(
            alt.Chart(_in_time_unit(data[["t", "name", "value"]], span))
            .mark_line(interpolate="step-after")
            .encode(
                x=_time_axis(span),
                y=alt.Y("value:Q", title=label),
                color=alt.Color(
                    "name:N", title=None, legend=alt.Legend(orient="right", labelLimit=320)
                ),
                tooltip=[
                    alt.Tooltip("name:N", title="series"),
                    alt.Tooltip("t:Q", title="s", format=".1f"),
                    alt.Tooltip("value:Q", format=".2f"),
                ],
            )
            .properties(width=WIDTH, height=PANEL_HEIGHT)
        )
    if not panels:
        return None
    chart: alt.VConcatChart = (
        alt.vconcat(*panels)
        .resolve_scale(color="independent", x="shared")
        .properties(title=_title(title or CHART_TITLES["timeline"]))
    )
    return chart


def errors_chart(errors: pd.DataFrame, span: float, title: str = "") -> alt.Chart | None:
    """Stacked failed requests per time bin, coloured by error kind (from `error_timeline`)."""
    if not len(errors):
        return None
    data = _in_time_unit(errors, span).assign(t_axis_end=lambda f: f["t_end"] / time_unit(span)[0])
    chart: alt.Chart = (
        alt.Chart(data)
        .mark_bar()
        .encode(
            x=_time_axis(span),
            x2="t_axis_end:Q",
            y=alt.Y("sum(count):Q", title="failed requests", stack="zero"),
            color=alt.Color("kind:N", title="error kind"),
            tooltip=[
                alt.Tooltip("kind:N", title="error kind"),
                alt.Tooltip("t:Q", title="from s", format=".0f"),
                alt.Tooltip("sum(count):Q", title="failed"),
            ],
        )
        .properties(width=WIDTH, height=PANEL_HEIGHT, title=_title(title or CHART_TITLES["errors"]))
    )
    return chart


def _interval_bars(
    data: pd.DataFrame, along: str, figure: str, at: tuple[str, str]
) -> list[alt.Chart]:
    """A rule along axis `along` from `<figure>_low` to `<figure>_high` at each point (its
    place on the other axis: `at`), coloured as the point's line; none without intervals."""
    bars = data.dropna(subset=[f"{figure}_low", f"{figure}_high"])
    if not len(bars):
        return []
    ends = {along: f"{figure}_low:Q", f"{along}2": f"{figure}_high:Q"}
    position = {at[0]: f"{at[1]}:Q"}
    colour = alt.Color("statistic:N", title=None)
    return [alt.Chart(bars).mark_rule().encode(**position, **ends, color=colour)]


def throughput_latency_chart(levels: pd.DataFrame, title: str = "") -> alt.LayerChart | None:
    """The kind's headline throughput against its headline latency's p50 and p99 (output
    tokens/s against TTFT for LLM serving), one point per level in load order: where the line
    turns upward, more load buys latency and no throughput (the knee)."""
    if not len(levels):
        return None
    latency_name = str(levels["latency_name"].iloc[0])
    throughput_name = str(levels["throughput_name"].iloc[0])
    parts = []
    for statistic in ("p50", "p99"):
        column = f"latency_{statistic}"
        part = levels[["level", "level_label", "throughput", "passed"]].copy()
        part["statistic"] = f"{latency_name} {statistic}"
        part["latency_ms"] = levels[column]
        part["latency_low"] = levels.get(f"{column}_low", math.nan)
        part["latency_high"] = levels.get(f"{column}_high", math.nan)
        part["throughput_low"] = levels.get("throughput_low", math.nan)
        part["throughput_high"] = levels.get("throughput_high", math.nan)
        parts.append(part)
    data = pd.concat(parts, ignore_index=True).dropna(subset=["throughput", "latency_ms"])
    if not len(data):
        return None
    base = alt.Chart(data).encode(
        x=alt.X("throughput:Q", title=throughput_name),
        y=alt.Y("latency_ms:Q", title=f"{latency_name} (ms)"),
        color=alt.Color("statistic:N", title=None),
        order=alt.Order("level:Q"),
        tooltip=[
            alt.Tooltip("level_label:N", title="level"),
            alt.Tooltip("statistic:N"),
            alt.Tooltip("throughput:Q", title=throughput_name, format=".1f"),
            alt.Tooltip("latency_ms:Q", title=f"{latency_name} ms", format=".2f"),
            alt.Tooltip("passed:N", title="SLOs held"),
        ],
    )
    lines = base.mark_line(point=True)
    labels = (
        base.transform_filter(alt.datum.statistic == f"{latency_name} p99")
        .mark_text(align="left", dx=6, dy=-6, fontSize=10)
        .encode(text="level_label:N")
    )
    layers: list[alt.Chart] = [lines, labels]
    # each figure's interval (docs/metrics.md), where the run has one
    layers += _interval_bars(data, "y", "latency", at=("x", "throughput"))
    layers += _interval_bars(data, "x", "throughput", at=("y", "latency_ms"))
    # no facet encodings, so alt.layer gives a LayerChart (never a hoisted FacetChart)
    layered = cast(alt.LayerChart, alt.layer(*layers))
    return layered.properties(
        width=WIDTH, height=260, title=_title(title or CHART_TITLES["throughput_latency"])
    )


def goodput_chart(levels: pd.DataFrame, title: str = "") -> alt.Chart | None:
    """Goodput and completed requests per second against the load level."""
    columns = {"goodput": "goodput", "request_throughput": "completed req/s"}
    data = levels.melt(
        id_vars=["level", "level_label"],
        value_vars=list(columns),
        var_name="quantity",
        value_name="req_s",
    ).dropna(subset=["level", "req_s"])
    if not len(data):
        return None
    data["quantity"] = data["quantity"].map(columns)
    mode = str(levels["mode"].iloc[0]) if len(levels) else ""
    axis = {
        "rate": "requested rate (req/s)",
        "concurrency": "concurrency",
        "replay": "replay speed (x the trace's)",
    }.get(mode, "load level")
    chart: alt.Chart = (
        alt.Chart(data)
        .mark_line(point=True)
        .encode(
            x=alt.X("level:Q", title=axis),
            y=alt.Y("req_s:Q", title="requests/s"),
            color=alt.Color("quantity:N", title=None),
            tooltip=[
                alt.Tooltip("level_label:N", title="level"),
                alt.Tooltip("quantity:N"),
                alt.Tooltip("req_s:Q", title="req/s", format=".3f"),
            ],
        )
        .properties(width=WIDTH, height=220, title=_title(title or CHART_TITLES["goodput"]))
    )
    return chart


# -- per test, per client ----------------------------------------------------------------------


def records_of_test(test: Mapping[str, Any], records: pd.DataFrame) -> pd.DataFrame:
    """The rows of one test: by `test_id` where records carry one, else by client and level."""
    if not len(records):
        return records
    if "test_id" in records and test.get("test_id"):
        return records[_equals(records, "test_id", str(test["test_id"]))]
    mask = np.ones(len(records), dtype=bool)
    for column in ("client", "level_label"):
        if column in records and test.get(column) is not None:
            mask &= _equals(records, column, str(test[column]))
    return records[mask]


def metrics_of_test(test: Mapping[str, Any], metrics: pd.DataFrame | None) -> pd.DataFrame | None:
    if metrics is None or not len(metrics) or "test_id" not in metrics:
        return metrics
    return metrics[_equals(metrics, "test_id", str(test.get("test_id")))]


def charts_for_test(
    summary: Mapping[str, Any],
    test: Mapping[str, Any],
    records: pd.DataFrame,
    metrics: pd.DataFrame | None = None,
    *,
    cdf: pd.DataFrame | None = None,
) -> dict[str, alt.TopLevelMixin]:
    """The charts of one test (one client at one load level), by name.

    `latency_cdf` (TTFT, TPOT, pooled ITL and E2EL), `errors` (when a request failed) and
    `timeline` (client throughput over server series). `records` and `metrics` may hold the
    whole run: the test's rows are picked by `test_id`. `cdf`: precomputed
    `latency_cdf_points` of the test, to skip recomputing them.
    """
    rows = records_of_test(test, records)
    label = f"{test.get('client', '')} [{test.get('level_label', '')}]"
    charts: dict[str, alt.TopLevelMixin] = {}
    points = cdf if cdf is not None else latency_cdf_points(rows)
    chart = latency_cdf_chart(points, f"{CHART_TITLES['latency_cdf']}: {label}")
    if chart is not None:
        charts["latency_cdf"] = chart
    window = window_of(test, rows)
    if window is None:
        return charts
    start, end = window
    span = end - start
    errors = errors_chart(error_timeline(rows, start, end), span, f"Failed requests: {label}")
    if errors is not None:
        charts["errors"] = errors
    client = client_throughput(rows, start, end)
    client = client if len(rows) else client.iloc[0:0]
    server = server_timeline(
        metrics_of_test(test, metrics), start, end, _kinds(summary), _generated_series(test)
    )
    timeline = timeline_chart(client, server, span, f"{CHART_TITLES['timeline']}: {label}")
    if timeline is not None:
        charts["timeline"] = timeline
    return charts


def charts_for_client(
    summary: Mapping[str, Any],
    client: str,
    records: pd.DataFrame,
    *,
    cdf: pd.DataFrame | None = None,
) -> dict[str, alt.TopLevelMixin]:
    """The charts across one client's load levels, by name.

    `throughput_latency` and `goodput` come from the summary alone; `latency_by_level` from
    the records (or from `cdf`: precomputed points with a `level_label` column).
    """
    charts: dict[str, alt.TopLevelMixin] = {}
    levels = client_levels(summary, client)
    if len(levels):
        knee = throughput_latency_chart(levels, f"{CHART_TITLES['throughput_latency']}: {client}")
        if knee is not None:
            charts["throughput_latency"] = knee
        good = goodput_chart(levels, f"{CHART_TITLES['goodput']}: {client}")
        if good is not None:
            charts["goodput"] = good
    tests = client_tests(summary, client)
    order = list(dict.fromkeys(str(t.get("level_label") or "") for t in tests))
    if cdf is None:
        per_level = max(20, MAX_LEVEL_POINTS // (len(LATENCY_METRICS) * max(len(tests), 1)))
        frames = [
            latency_cdf_points(records_of_test(t, records), points=per_level).assign(
                level_label=str(t.get("level_label") or "")
            )
            for t in tests
            if len(records)
        ]
        cdf = pd.concat(frames, ignore_index=True) if frames else None
    if cdf is not None and len(cdf):
        chart = latency_by_level_chart(cdf, order, f"{CHART_TITLES['latency_by_level']}: {client}")
        if chart is not None:
            charts["latency_by_level"] = chart
    return charts


def run_clients(summary: Mapping[str, Any]) -> list[str]:
    """Client names in the order their first test ran."""
    return list(dict.fromkeys(str(t.get("client") or "") for t in summary.get("tests") or []))


# -- files ---------------------------------------------------------------------------------------


@functools.cache
def vegalite_version() -> str | None:
    """The Vega-Lite version Altair writes specs for, as vl-convert names it (None: latest)."""
    # deferred: vl_convert is a large native library, loaded only to render images
    import vl_convert as vlc

    wanted = alt.SCHEMA_VERSION.lstrip("v").rsplit(".", 1)[0]
    return wanted if wanted in vlc.get_vegalite_versions() else None


def to_spec(chart: alt.TopLevelMixin) -> dict[str, Any]:
    """The chart's Vega-Lite spec (data inline)."""
    return chart.to_dict()


def to_svg(chart: alt.TopLevelMixin | Mapping[str, Any]) -> str:
    # deferred: vl_convert is a large native library, loaded only to render images
    import vl_convert as vlc

    spec = chart if isinstance(chart, Mapping) else to_spec(chart)
    # vl-convert takes any mapping; its stub names only dict
    return vlc.vegalite_to_svg(cast(dict[str, Any], spec), vl_version=vegalite_version())


def to_png(chart: alt.TopLevelMixin | Mapping[str, Any], scale: float = 1.5) -> bytes:
    """The chart as PNG, `scale` times its CSS pixel size (drawn from its SVG)."""
    return png_from_svg(to_svg(chart), scale)


def png_from_svg(svg: str, scale: float = 1.5) -> bytes:
    """A PNG of an SVG from `to_svg`: three times faster than running Vega a second time."""
    # deferred: vl_convert is a large native library, loaded only to render images
    import vl_convert as vlc

    return vlc.svg_to_png(svg, scale=scale)
