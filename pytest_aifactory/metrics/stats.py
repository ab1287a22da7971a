"""Statistics of one load level: per-request distributions, throughputs, errors and goodput.

Definitions follow docs/metrics.md, which follows vLLM's serving benchmark (`np.percentile` with
linear interpolation, population standard deviation), so numbers compare with that tool.
Everything here is a pure function of the request records; nothing is read from a server.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, overload

import numpy as np
import pandas as pd

from pytest_aifactory.loadgen.kinds import metric_info
from pytest_aifactory.metrics.catalog import STATISTICS, SloObjective
from pytest_aifactory.metrics.prefix_cache import prefix_cache_figures

if TYPE_CHECKING:
    from pytest_aifactory.loadgen.kind import ClientKind

PER_REQUEST_METRICS: tuple[str, ...] = (
    "ttft_ms",
    "ttfo_ms",
    "tpot_ms",
    "itl_ms",
    "e2el_ms",
    "queue_ms",
    "connect_ms",
    "output_tokens",
    "input_tokens",
    "reasoning_tokens",
)
"""Per-request metrics of an LLM load level, in the order summaries list them."""
CLIENT_SIDE_METRICS = frozenset({"queue_ms", "connect_ms"})
"""Taken of every request sent: a request that failed still waited and still connected."""

_PERCENTILES: dict[str, float] = {"p50": 50.0, "p90": 90.0, "p95": 95.0, "p99": 99.0, "p999": 99.9}


@overload
def json_safe(obj: Mapping[Any, Any]) -> dict[str, Any]: ...
@overload
def json_safe(obj: Any) -> Any: ...
def json_safe(obj: Any) -> Any:
    """A copy of `obj` that strict JSON accepts: NaN and infinities become None.

    numpy scalars and arrays become Python numbers and lists, tuples become lists, and mapping
    keys become strings, so `json.dumps(..., allow_nan=False)` never fails on a summary.
    """
    if isinstance(obj, Mapping):
        return {str(key): json_safe(value) for key, value in obj.items()}
    if isinstance(obj, np.ndarray):
        return [json_safe(v) for v in obj.tolist()]
    if isinstance(obj, list | tuple | set | frozenset):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is pd.NaT:
        return None
    return obj


def _finite(values: Iterable[Any]) -> np.ndarray:
    array = np.asarray(
        values if isinstance(values, np.ndarray | pd.Series) else list(values), dtype=float
    )
    array = array.ravel()
    finite: np.ndarray = array[np.isfinite(array)]
    return finite


def describe(values: Iterable[Any]) -> dict[str, float]:
    """The statistics of `catalog.STATISTICS` over the finite values (all NaN when none).

    Percentiles interpolate linearly and `std` is the population standard deviation, as in
    vLLM's benchmark; missing values (NaN) are left out rather than counted as zero.
    """
    array = _finite(values)
    if array.size == 0:
        return {name: math.nan for name in STATISTICS}
    result: dict[str, float] = {
        "mean": float(np.mean(array)),
        "std": float(np.std(array)),
        "min": float(np.min(array)),
        "max": float(np.max(array)),
    }
    quantiles = np.percentile(array, list(_PERCENTILES.values()))
    result.update({name: float(q) for name, q in zip(_PERCENTILES, quantiles, strict=True)})
    return {name: result[name] for name in STATISTICS}


def itl_gaps(value: Any) -> list[float]:
    """One record's `itl_ms` cell as a list; None, NaN or a missing list means no gaps."""
    if _missing(value) or np.ndim(value) == 0:
        return []
    return [float(v) for v in value]


def _column(records: pd.DataFrame, name: str, default: Any = math.nan) -> pd.Series:
    if name in records:
        return records[name]
    return pd.Series([default] * len(records), index=records.index, dtype=object)


def _numeric(records: pd.DataFrame, name: str) -> pd.Series:
    return pd.to_numeric(_column(records, name), errors="coerce").astype(float)


def measured(records: pd.DataFrame) -> pd.DataFrame:
    """The rows that count: the measure phase (all rows when there is no phase column)."""
    if "phase" in records:
        return records[records["phase"] == "measure"]
    return records


def _missing(value: Any) -> bool:
    """None, NaN or pd.NA in a cell (a list in a cell is never missing)."""
    return value is None or (np.ndim(value) == 0 and bool(pd.isna(value)))


def _error_texts(records: pd.DataFrame) -> pd.Series:
    """Each request's error text; a missing value (None, NaN) means no error."""
    return _column(records, "error", "").map(lambda e: "" if _missing(e) else str(e))


def succeeded(records: pd.DataFrame) -> pd.Series:
    """True for each request whose `error` is empty."""
    return (_error_texts(records) == "").astype(bool)


def error_class(error: str) -> str:
    """The part of an error text before its first ':' (`HTTPError: 503 ...` -> `HTTPError`)."""
    return error.split(":", 1)[0].strip() or "unknown"


def request_values(records: pd.DataFrame, metric: str) -> pd.Series:
    """Each request's own value of a per-request metric (NaN where it has none).

    For `itl_ms`, whose records hold a list of gaps, a request's value is its largest gap: a
    request meets an inter-token latency bound only if every one of its gaps does.
    """
    if metric == "itl_ms":
        gaps = _column(records, "itl_ms", None).map(itl_gaps)
        return gaps.map(lambda g: max(g) if g else math.nan).astype(float)
    return _numeric(records, metric)


def distribution(records: pd.DataFrame, metric: str) -> np.ndarray:
    """The finite values a per-request statistic is taken over, from the given rows.

    One value per request, except `itl_ms`, whose gaps are pooled over all requests (as vLLM
    does), so a long answer weighs more than a short one.
    """
    if metric == "itl_ms":
        values = [gap for cell in _column(records, "itl_ms", None) for gap in itl_gaps(cell)]
        return _finite(values)
    return _finite(_numeric(records, metric))


def good_requests(records: pd.DataFrame, objectives: Sequence[SloObjective] = ()) -> pd.Series:
    """Which requests count towards goodput.

    A request is good when it succeeded and, for every objective on a per-request metric
    (`ttft_ms`, `tpot_ms`, `itl_ms`, `e2el_ms`, ...), its own value meets the bound: `<=` for a
    `max` bound, `>=` for a `min` bound. The objective's statistic (p99, mean, ...) does not
    matter here: the bound applies to each request, as vLLM's `--goodput` does. For `itl_ms` the
    request's largest gap is used. A metric a request has no value for (`tpot_ms` of a
    one-token answer) does not count against it, as in vLLM.
    """
    good = succeeded(records).to_numpy(dtype=bool, copy=True)
    for objective in objectives:
        info = metric_info(objective.metric)
        if info is None or not info.per_request:
            continue
        values = request_values(records, objective.metric).to_numpy(dtype=float)
        bound = objective.value
        meets = values <= bound if objective.bound == "max" else values >= bound
        good = good & (meets | np.isnan(values))
    return pd.Series(good, index=records.index, dtype=bool)


def span_s(rows: pd.DataFrame) -> float:
    """First send to last end of these rows, in seconds (NaN when not measurable)."""
    start = _numeric(rows, "send_ts").dropna()
    end = _numeric(rows, "end_ts").dropna()
    if not len(start) or not len(end):
        return math.nan
    return float(end.max() - start.min())


def _rate(count: float, duration: float) -> float:
    if not math.isfinite(duration) or duration <= 0:
        return math.nan
    return count / duration


def summarize_llm(
    records: pd.DataFrame,
    requested_rate: float | None = None,
    objectives: Sequence[SloObjective] = (),
    *,
    kind: ClientKind | None = None,
) -> dict[str, Any]:
    """Summary of one LLM load level from its request records (only measure-phase rows count).

    `kind` is taken for the signature every kind's summary shares (`loadgen.kind.Summarizer`)
    and not needed here.

    Returns a strict-JSON-ready dict (NaN -> None) with `counts`, `per_request` statistics,
    `per_level` rates, `errors` by class, `tokens_estimated` and `prompt_tokens_exact` (every
    prompt's length counted by the server's tokenizer), and `prefix_cache` where the server
    said how many prompt tokens it served from its cache (`metrics.prefix_cache`).

    Latency and token statistics use the successful requests; `queue_ms` and `connect_ms` use
    every request sent, since a request that failed still waited in the client and still got a
    connection. `counts.resends` is how many sends found a pooled connection closed by the
    server and went again on a fresh one. The duration runs from the
    first send to the last completion; throughputs are completed requests / tokens over it.
    When nothing completed the throughputs are 0 and the duration has no value.

    Goodput is the number of good requests per second of that duration, where a request is good
    when it succeeded and each of its own per-request values meets every per-request objective
    (see `good_requests`); with no per-request objectives it equals `request_throughput`.
    """
    rows = measured(records)
    ok = succeeded(rows)
    done = rows[ok.to_numpy()]
    sent = len(rows)
    completed = int(ok.sum())
    failed = sent - completed

    per_request: dict[str, dict[str, float]] = {}
    for metric in PER_REQUEST_METRICS:
        chosen = rows if metric in CLIENT_SIDE_METRICS else done
        per_request[metric] = describe(distribution(chosen, metric))

    send = _numeric(rows, "send_ts").dropna()
    end = _numeric(done, "end_ts").dropna()
    duration = float(end.max() - send.min()) if len(end) and len(send) else math.nan
    output_tokens = float(_numeric(done, "output_tokens").fillna(0).sum())
    input_tokens = float(_numeric(done, "input_tokens").fillna(0).sum())
    good = int(good_requests(done, objectives).sum()) if completed else 0

    def throughput(count: float) -> float:
        if sent and not completed:
            return 0.0
        return _rate(count, duration)

    send_span = float(send.max() - send.min()) if len(send) >= 2 else math.nan
    hit_rate, prefix_cache = prefix_cache_figures(done)
    per_level = {
        "duration_s": duration,
        "request_throughput": throughput(completed),
        "output_throughput": throughput(output_tokens),
        "total_token_throughput": throughput(input_tokens + output_tokens),
        "error_rate": failed / sent if sent else math.nan,
        "goodput": throughput(good),
        "achieved_rate": _rate(len(send) - 1, send_span),
        "requested_rate": requested_rate,
        "prefix_cache_hit_rate": hit_rate,
    }

    errors = Counter(error_class(e) for e in _error_texts(rows) if e)
    estimated = _column(rows, "tokens_estimated", False).map(lambda v: not _missing(v) and bool(v))
    exact = _column(rows, "prompt_tokens_exact", False).map(lambda v: not _missing(v) and bool(v))
    summary = {
        "counts": {
            "sent": sent,
            "completed": completed,
            "failed": failed,
            "good": good,
            "resends": int(_numeric(rows, "resends").fillna(0).sum()),
        },
        "per_request": per_request,
        "per_level": per_level,
        "errors": dict(errors.most_common()),
        "tokens_estimated": bool(estimated.any()),
        "prompt_tokens_exact": bool(len(exact) and exact.all()),
    }
    if prefix_cache is not None:
        summary["prefix_cache"] = prefix_cache
    return json_safe(summary)


CPU_SATURATED_PERCENT = 90.0
"""A client process that used this share of one core had no room left to read on time."""
QUEUE_SATURATED_MS = 1.0
"""queue_ms p99 above this: requests left later than the load asked for."""
LOOP_LAG_SATURATED_MS = 10.0
"""Event-loop lag p99 above this: every timestamp the process took may be this late."""
MATERIAL_SHARE = 0.05
"""A client delay counts only when it is also this share of the median TTFT: 2 ms of lateness
says nothing about a server answering in 2 s, but everything about one answering in 10 ms. In a
closed loop, the share of its workers' time spent waiting on the client instead."""


def closed_loop_idle_share(rows: pd.DataFrame) -> float:
    """The share of a closed loop's worker time spent on the client's side of each request
    (`queue_ms`) rather than in flight (send to end): what lateness costs a concurrency load.
    A burst of responses ending together delays the next sends by the client's work on each,
    which only thins the load by this share; the latencies, timed from each write, keep it out.
    """
    queue_s = _numeric(rows, "queue_ms").fillna(0.0).sum() / 1000
    in_flight_s = (_numeric(rows, "end_ts") - _numeric(rows, "send_ts")).clip(lower=0).sum()
    total = queue_s + in_flight_s
    return float(queue_s / total) if total > 0 else math.nan


def client_health(
    records: pd.DataFrame,
    processes: Sequence[Mapping[str, Any]],
    cpu_is_workload: bool = False,
) -> dict[str, Any]:
    """Whether the load generator itself was in the way, from its records and the
    self-measurements of its processes (see `loadgen.selfcheck`).

    Saturated when a process used at least `CPU_SATURATED_PERCENT` of a core, when requests
    were sent late (rate mode: queue_ms p99 above `QUEUE_SATURATED_MS` and `MATERIAL_SHARE` of
    the median TTFT, not judged when a concurrency cap makes waiting part of the load;
    concurrency mode: workers waiting on the client for more than `MATERIAL_SHARE` of their
    time), or when its event loop woke late (lag p99 above `LOOP_LAG_SATURATED_MS`). Then the
    numbers include the client's own delays.
    `cpu_is_workload`: the client job itself is what is measured (FAISS searching in the
    client, fio), so its busy CPU, late sends and late wake-ups are the workload's, not a
    bottleneck in front of it: never judged saturated.
    """
    rows = measured(records)
    queue = describe(distribution(rows, "queue_ms"))
    cpu = [float(p["cpu_percent"]) for p in processes if p.get("cpu_percent") is not None]
    lags = [
        float(p["loop_lag_ms"]["p99"])
        for p in processes
        if isinstance(p.get("loop_lag_ms"), Mapping) and p["loop_lag_ms"].get("p99") is not None
    ]
    capped = any(bool(p.get("queue_capped")) for p in processes)
    closed_loop = bool(processes) and all(bool(p.get("closed_loop")) for p in processes)
    events = sum(int(p.get("events") or 0) for p in processes)
    walls = [float(p["wall_s"]) for p in processes if p.get("wall_s")]
    queue_p99 = queue["p99"]
    ttft = describe(distribution(rows, "ttft_ms"))["p50"]
    if not math.isfinite(ttft):  # kinds without tokens: the operation's own latency
        ttft = describe(distribution(rows, "latency_ms"))["p50"]
    material = MATERIAL_SHARE * ttft if math.isfinite(ttft) else 0.0
    idle_share = closed_loop_idle_share(rows) if closed_loop else math.nan
    if closed_loop:
        late = math.isfinite(idle_share) and idle_share > MATERIAL_SHARE
    else:
        late = (
            not capped
            and math.isfinite(queue_p99)
            and queue_p99 > max(QUEUE_SATURATED_MS, material)
        )
    reasons: list[str] = []
    if not cpu_is_workload:  # else the client's own work is what is measured
        if cpu and max(cpu) >= CPU_SATURATED_PERCENT:
            reasons.append(f"a client process used {max(cpu):.0f}% of a CPU core")
        if late and closed_loop:
            reasons.append(
                f"requests were sent late (workers waited on the client {100 * idle_share:.1f}% "
                f"of the time; queue_ms p99 {queue_p99:.2f} ms)"
            )
        elif late:
            reasons.append(f"requests were sent late (queue_ms p99 {queue_p99:.2f} ms)")
        if lags and max(lags) > max(LOOP_LAG_SATURATED_MS, material):
            reasons.append(f"the client's event loop woke late (lag p99 {max(lags):.1f} ms)")
    return json_safe(
        {
            "processes": len(processes),
            "cpu_percent": {
                "max": max(cpu) if cpu else math.nan,
                "mean": float(np.mean(cpu)) if cpu else math.nan,
            },
            "queue_ms_p99": queue_p99,
            "client_wait_share": idle_share,
            "loop_lag_ms_p99": max(lags) if lags else math.nan,
            "events_per_s": events / max(walls) if walls else math.nan,
            "saturated": bool(reasons),
            "reason": "; ".join(reasons),
        }
    )


def saturation_note(health: Mapping[str, Any]) -> str | None:
    """The plain-language warning for a saturated client (None when it was not)."""
    if not health.get("saturated"):
        return None
    return (
        f"load generator saturated: {health.get('reason')}; "
        "these numbers measure the client, not the server"
    )
