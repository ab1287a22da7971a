"""The summary of one level of an `openai` client: a generation level (`stats.summarize_llm`)
or an embeddings level (`metrics.embeddings`), and, when its requests named several models (a
mix), the same figures per model (`by_model`).

Per-model throughputs are over the whole level's duration, the models' requests being
interleaved in it, so the models' figures add up to the level's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from pytest_aifactory.metrics.catalog import SloObjective
from pytest_aifactory.metrics.conversations import has_sessions, session_counts, turn_figures
from pytest_aifactory.metrics.embeddings import OP, embedding_figures, summarize_embeddings
from pytest_aifactory.metrics.replicas import replica_figures
from pytest_aifactory.metrics.stats import (
    _numeric,
    _rate,
    describe,
    distribution,
    json_safe,
    measured,
    succeeded,
    summarize_llm,
)

if TYPE_CHECKING:
    from pytest_aifactory.loadgen.kind import ClientKind

MODEL_LATENCIES: tuple[str, ...] = ("ttft_ms", "tpot_ms", "e2el_ms")
"""Per-request statistics a generation level gives per model."""


def is_embeddings(records: pd.DataFrame) -> bool:
    """Whether these are the records of an embeddings level (their `op` says so)."""
    return "op" in records and bool((records["op"] == OP).any())


def summarize_openai(
    records: pd.DataFrame,
    requested_rate: float | None = None,
    objectives: Sequence[SloObjective] = (),
    *,
    kind: ClientKind | None = None,
) -> dict[str, Any]:
    """The level's summary; `api: embeddings` for an embeddings level; `by_model` when its
    requests named more than one model, `by_replica` when they went to several servers;
    `by_turn` and `sessions` when they were turns of multi-turn sessions."""
    if is_embeddings(records):
        summary = summarize_embeddings(records, requested_rate, objectives)
        figures: Callable[[pd.DataFrame, float], dict[str, Any]] = embedding_figures
    else:
        summary = summarize_llm(records, requested_rate, objectives, kind=kind)
        figures = generation_figures
    models = model_figures(records, summary["per_level"].get("duration_s"), figures)
    if models:
        summary["by_model"] = models
    replicas = replica_figures(records, summary["per_level"].get("duration_s"), figures)
    if replicas:
        summary["by_replica"] = replicas
    if has_sessions(records):
        summary["by_turn"] = json_safe(turn_figures(records))
        summary["sessions"] = json_safe(session_counts(records))
    return summary


def generation_figures(done: pd.DataFrame, duration: float) -> dict[str, Any]:
    """TTFT, TPOT and end-to-end latency, requests and generated tokens per second of one
    model's completed requests."""
    output_tokens = float(_numeric(done, "output_tokens").fillna(0).sum())
    figures: dict[str, Any] = {m: describe(distribution(done, m)) for m in MODEL_LATENCIES}
    figures["request_throughput"] = _rate(len(done), duration) if len(done) else 0.0
    figures["output_throughput"] = _rate(output_tokens, duration) if len(done) else 0.0
    return figures


def model_figures(
    records: pd.DataFrame,
    duration: float | None,
    figures: Callable[[pd.DataFrame, float], dict[str, Any]],
) -> dict[str, dict[str, Any]]:
    """Counts and `figures` of each model the level's requests named; {} for a single model."""
    rows = measured(records)
    if "model" not in rows:
        return {}
    names = rows["model"].fillna("").astype(str)
    if names[names != ""].nunique() < 2:
        return {}
    span = float(duration) if duration is not None else float("nan")
    out: dict[str, dict[str, Any]] = {}
    for name in sorted(names[names != ""].unique()):
        part = rows[(names == name).to_numpy()]
        ok = succeeded(part)
        done = part[ok.to_numpy()]
        out[name] = {
            "counts": {
                "sent": len(part),
                "completed": int(ok.sum()),
                "failed": int((~ok).sum()),
            },
            **figures(done, span),
        }
    safe: dict[str, dict[str, Any]] = json_safe(out)
    return safe
