"""The summary of one load level, for any client kind: the kind's declaration names the function
that reads its records (`ClientKind.summarize`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from pytest_aifactory.loadgen.kinds import get_client_kind
from pytest_aifactory.metrics.catalog import SloObjective


def summarize(
    kind: str,
    records: pd.DataFrame,
    requested_rate: float | None = None,
    objectives: Sequence[SloObjective] = (),
) -> dict[str, Any]:
    """Counts, per-request statistics, per-level figures and errors of one level's records
    (every phase: setup rows feed a kind's setup figures, only measure rows its latencies)."""
    client_kind = get_client_kind(kind)
    return client_kind.summarizer()(
        records, kind=client_kind, requested_rate=requested_rate, objectives=objectives
    )
