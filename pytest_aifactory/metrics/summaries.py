"""The summary of one load level, for any client kind: the one place that knows which
statistics function reads which kind's records."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from pytest_aifactory.metrics.catalog import SloObjective


def summarize(
    kind: str,
    records: pd.DataFrame,
    requested_rate: float | None = None,
    objectives: Sequence[SloObjective] = (),
) -> dict[str, Any]:
    """Counts, per-request statistics, per-level figures and errors of one level's records
    (every phase: setup rows feed a kind's setup figures, only measure rows its latencies)."""
    if kind == "openai":
        from pytest_aifactory.metrics.stats import summarize_llm

        return summarize_llm(records, requested_rate=requested_rate, objectives=objectives)
    if kind == "fio":
        from pytest_aifactory.metrics.fio import summarize_fio

        return summarize_fio(records, requested_rate=requested_rate, objectives=objectives)
    from pytest_aifactory.metrics.operations import summarize_operations

    return summarize_operations(records, kind, requested_rate=requested_rate, objectives=objectives)
