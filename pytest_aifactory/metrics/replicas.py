"""Per-replica figures of a level whose requests went to several servers of one service
(`by_replica`): how the client spread its load, and how each server answered its share.

Each replica's throughputs are over the whole level's duration, the replicas' requests being
interleaved in it, so the replicas' figures add up to the level's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

from pytest_aifactory.metrics.stats import json_safe, measured, succeeded


def replica_figures(
    records: pd.DataFrame,
    duration: float | None,
    figures: Callable[[pd.DataFrame, float], dict[str, Any]],
) -> dict[str, dict[str, Any]]:
    """Counts, the server's `address` (host:port) and `figures` of each replica the level's
    requests went to, by replica index ("0", "1", ...); {} when they all went to the first
    (a service of one server)."""
    rows = measured(records)
    if "replica" not in rows or rows.empty:
        return {}
    indices = pd.to_numeric(rows["replica"], errors="coerce")
    seen = sorted(int(i) for i in indices.dropna().unique())
    if not seen or seen == [0]:
        return {}
    addresses = (
        rows["replica_address"].fillna("").astype(str)
        if "replica_address" in rows
        else pd.Series("", index=rows.index)
    )
    span = float(duration) if duration is not None else float("nan")
    out: dict[str, dict[str, Any]] = {}
    for index in seen:
        mask = (indices == index).to_numpy()
        part = rows[mask]
        ok = succeeded(part)
        done = part[ok.to_numpy()]
        named = addresses[mask]
        out[str(index)] = {
            "address": str(named.iloc[0]) if len(named) else "",
            "counts": {
                "sent": len(part),
                "completed": int(ok.sum()),
                "failed": int((~ok).sum()),
            },
            **figures(done, span),
        }
    safe: dict[str, dict[str, Any]] = json_safe(out)
    return safe
