"""Statistics of one load level of an operation-based client (vector search, object storage,
relational transactions, Triton inferences) from its records.

Same shape as an LLM summary (`counts`, `per_request`, `per_level`, `errors`), so SLOs,
reports and comparisons read every kind alike, plus `by_op` for mixes (S3's PUT/GET/LIST/DELETE)
and the setup figures of a vector index (insert throughput, build time).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pandas as pd

from pytest_aifactory.loadgen.kind import ClientKind
from pytest_aifactory.loadgen.kinds import get_client_kind
from pytest_aifactory.metrics.catalog import SloObjective
from pytest_aifactory.metrics.stats import (
    _error_texts,
    _numeric,
    _rate,
    describe,
    distribution,
    error_class,
    good_requests,
    json_safe,
    measured,
    span_s,
    succeeded,
)

MIB = 1024 * 1024

OPERATION_METRICS: tuple[str, ...] = ("latency_ms", "ttfb_ms", "queue_ms")
"""Per-request metrics of an operation-based level, in the order summaries list them."""


def _op_figures(rows: pd.DataFrame, duration: float) -> dict[str, Any]:
    ok = succeeded(rows)
    done = rows[ok.to_numpy()]
    moved = float(_numeric(done, "bytes").fillna(0).sum())
    return {
        "count": len(rows),
        "failed": int((~ok).sum()),
        "ops_s": _rate(len(done), duration) if len(done) else 0.0,
        "throughput_mib_s": _rate(moved / MIB, duration) if moved else 0.0,
        "bytes": moved,
        "latency_ms": describe(distribution(done, "latency_ms")),
        "ttfb_ms": describe(distribution(done, "ttfb_ms")),
    }


def _setup_figures(records: pd.DataFrame) -> dict[str, float]:
    """Vector index setup: vectors inserted per second over the inserts' span (summed over the
    processes, each inserting its own share), and the slowest process's index build."""
    if "phase" not in records:
        return {}
    setup = records[records["phase"] == "setup"]
    if not len(setup):
        return {}
    ops = setup["op"] if "op" in setup else pd.Series([""] * len(setup), index=setup.index)
    figures: dict[str, float] = {}
    inserts = setup[(ops == "insert").to_numpy()]
    if len(inserts):
        rates = []
        for _, part in inserts.groupby("process"):
            items = float(_numeric(part, "items").fillna(0).sum())
            rates.append(_rate(items, span_s(part)))
        figures["insert_throughput"] = float(sum(r for r in rates if math.isfinite(r)))
    builds = setup[(ops == "index_build").to_numpy()]
    if len(builds):
        seconds = _numeric(builds, "latency_ms").dropna() / 1000.0
        if len(seconds):
            figures["index_build_s"] = float(seconds.max())
    return figures


def summarize_operations(
    records: pd.DataFrame,
    kind: ClientKind | str,
    requested_rate: float | None = None,
    objectives: Sequence[SloObjective] = (),
) -> dict[str, Any]:
    """Summary of one level of an operation-based client kind.

    Latency statistics use the successful operations, `queue_ms` every one sent. The duration
    runs from the first send to the last end; throughputs are completed operations (and their
    bytes) over it, completed operations also under the kind's own name (`throughput_metric`).
    The figures a kind declares decide the rest: `throughput_mib_s` (also whenever bytes
    moved), `recall_at_k` (the mean of the successful queries' recall), and the setup figures
    `insert_throughput` and `index_build_s`.
    """
    if isinstance(kind, str):
        kind = get_client_kind(kind)
    reported = set(kind.metric_names)
    rows = measured(records)
    ok = succeeded(rows)
    done = rows[ok.to_numpy()]
    sent, completed = len(rows), int(ok.sum())
    failed = sent - completed

    per_request = {
        metric: describe(distribution(rows if metric == "queue_ms" else done, metric))
        for metric in OPERATION_METRICS
    }
    duration = span_s(rows) if completed else math.nan

    def throughput(count: float) -> float:
        if sent and not completed:
            return 0.0
        return _rate(count, duration)

    moved = float(_numeric(done, "bytes").fillna(0).sum())
    good = int(good_requests(done, objectives).sum()) if completed else 0
    send = _numeric(rows, "send_ts").dropna()
    send_span = float(send.max() - send.min()) if len(send) >= 2 else math.nan
    per_level: dict[str, Any] = {
        "duration_s": duration,
        "request_throughput": throughput(completed),
        "error_rate": failed / sent if sent else math.nan,
        "goodput": throughput(good),
        "achieved_rate": _rate(len(send) - 1, send_span),
        "requested_rate": requested_rate,
    }
    per_level[kind.throughput_metric] = per_level["request_throughput"]
    if "throughput_mib_s" in reported or moved:
        per_level["throughput_mib_s"] = throughput(moved / MIB)
    if "recall_at_k" in reported:
        recall = _numeric(done, "recall").dropna()
        per_level["recall_at_k"] = float(recall.mean()) if len(recall) else math.nan
    if {"insert_throughput", "index_build_s"} & reported:
        per_level.update(_setup_figures(records))

    by_op: dict[str, Any] = {}
    if "op" in rows and len(rows):
        for op, part in rows.groupby("op", sort=True):
            if op:
                by_op[str(op)] = _op_figures(part, duration)

    errors = Counter(error_class(e) for e in _error_texts(rows) if e)
    return json_safe(
        {
            "counts": {"sent": sent, "completed": completed, "failed": failed, "good": good},
            "per_request": per_request,
            "per_level": per_level,
            "by_op": by_op,
            "errors": dict(errors.most_common()),
        }
    )
