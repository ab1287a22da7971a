"""Statistics of one embeddings level (`openai` clients with `api: embeddings`): request
latency, requests, inputs and tokens per second (docs/metrics.md). There is no stream, so no
TTFT nor TPOT: an embeddings level is summed up by inputs per second and latency."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pandas as pd

from pytest_aifactory.loadgen.kinds.openai import EMBEDDINGS_OP
from pytest_aifactory.metrics.catalog import SloObjective
from pytest_aifactory.metrics.stats import (
    _column,
    _error_texts,
    _missing,
    _numeric,
    _rate,
    describe,
    distribution,
    error_class,
    good_requests,
    json_safe,
    measured,
    succeeded,
)

OP = EMBEDDINGS_OP

EMBEDDING_METRICS: tuple[str, ...] = ("latency_ms", "queue_ms", "connect_ms", "input_tokens")
"""Per-request metrics of an embeddings level, in the order summaries list them."""
_CLIENT_SIDE = frozenset({"queue_ms", "connect_ms"})


def embedding_figures(done: pd.DataFrame, duration: float) -> dict[str, Any]:
    """Latency, requests, inputs and input tokens per second of completed requests."""
    inputs = float(_numeric(done, "items").fillna(0).sum())
    tokens = float(_numeric(done, "input_tokens").fillna(0).sum())
    count = len(done)
    return {
        "latency_ms": describe(distribution(done, "latency_ms")),
        "request_throughput": _rate(count, duration) if count else 0.0,
        "embedding_throughput": _rate(inputs, duration) if count else 0.0,
        "total_token_throughput": _rate(tokens, duration) if count else 0.0,
    }


def summarize_embeddings(
    records: pd.DataFrame,
    requested_rate: float | None = None,
    objectives: Sequence[SloObjective] = (),
) -> dict[str, Any]:
    """Summary of one embeddings level, in the shape every kind shares (`counts`,
    `per_request`, `per_level`, `errors`) plus `api: embeddings`.

    Latency and input tokens use the successful requests, `queue_ms` and `connect_ms` every one
    sent. The duration runs from the first send to the last completion; the throughputs are
    completed requests, their inputs (`embedding_throughput`) and their input tokens
    (`total_token_throughput`: an embedding generates none) over it.
    """
    rows = measured(records)
    ok = succeeded(rows)
    done = rows[ok.to_numpy()]
    sent, completed = len(rows), int(ok.sum())
    per_request = {
        metric: describe(distribution(rows if metric in _CLIENT_SIDE else done, metric))
        for metric in EMBEDDING_METRICS
    }
    send = _numeric(rows, "send_ts").dropna()
    end = _numeric(done, "end_ts").dropna()
    duration = float(end.max() - send.min()) if len(end) and len(send) else math.nan
    figures = embedding_figures(done, duration)
    good = int(good_requests(done, objectives).sum()) if completed else 0
    send_span = float(send.max() - send.min()) if len(send) >= 2 else math.nan
    per_level = {
        "duration_s": duration,
        "request_throughput": figures["request_throughput"],
        "embedding_throughput": figures["embedding_throughput"],
        "total_token_throughput": figures["total_token_throughput"],
        "error_rate": (sent - completed) / sent if sent else math.nan,
        "goodput": _rate(good, duration) if completed else 0.0,
        "achieved_rate": _rate(len(send) - 1, send_span),
        "requested_rate": requested_rate,
    }
    errors = Counter(error_class(e) for e in _error_texts(rows) if e)
    estimated = _column(rows, "tokens_estimated", False).map(lambda v: not _missing(v) and bool(v))
    return json_safe(
        {
            "api": OP,
            "counts": {
                "sent": sent,
                "completed": completed,
                "failed": sent - completed,
                "good": good,
                "resends": int(_numeric(rows, "resends").fillna(0).sum()),
            },
            "per_request": per_request,
            "per_level": per_level,
            "errors": dict(errors.most_common()),
            "tokens_estimated": bool(estimated.any()),
        }
    )
