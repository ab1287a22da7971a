"""One test window's samples, and what the server says it did in that window.

The server's own counters are the independent witness of the clients' figures: generated
tokens counted by the server over the window should match the tokens the clients received.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from pytest_aifactory.monitor.samples import empty_samples, normalize
from pytest_aifactory.monitor.series import (
    AUTH_LABEL,
    KIND_LABEL,
    NODE_LABEL,
    ROLE_LABEL,
    RUN_LABEL,
    SERVICE_LABEL,
    Series,
)

CROSS_CHECK_TOLERANCE = 0.10
"""Server and client figures further apart than this are flagged in the summary."""
_OWN_LABELS = {
    "__name__",
    "job",
    "instance",
    RUN_LABEL,
    ROLE_LABEL,
    SERVICE_LABEL,
    KIND_LABEL,
    AUTH_LABEL,  # how the run's Prometheus scraped it, nothing the series says
}


def sample_rows(
    series: Series,
    found: Iterable[tuple[dict[str, str], list[tuple[float, float]]]],
    origin: str,
) -> list[dict[str, Any]]:
    """Rows of the sample table from (labels, [(time, value)]) pairs of one series."""
    rows: list[dict[str, Any]] = []
    for labels, values in found:
        extra = {k: v for k, v in labels.items() if k not in _OWN_LABELS and k != NODE_LABEL}
        # a client's counters come through the pushgateway: their own `node` label says where
        # the client ran, `aif_node` only where the gateway did
        if series.source == "client":
            node = labels.get("node") or labels.get(NODE_LABEL, "")
        else:
            node = labels.get(NODE_LABEL) or labels.get("node", "")
        common = {
            "series": series.name,
            "metric": series.metric,
            "source": series.source,
            "service": labels.get(SERVICE_LABEL, ""),
            "node": node,
            "instance": labels.get("instance", ""),
            "labels": json.dumps(extra, sort_keys=True),
            "origin": origin,
        }
        rows.extend({**common, "timestamp": t, "value": v} for t, v in values)
    return rows


def to_frame(rows: list[dict[str, Any]], test_id: str) -> pd.DataFrame:
    if not rows:
        frame = empty_samples()
        return frame
    frame = pd.DataFrame(rows)
    frame["test_id"] = test_id
    return normalize(frame)


SUB_SERIES = ["service", "node", "instance", "labels"]
"""What tells apart the sub-series of one series: a counter grows (and restarts) on its own in
each server, node, client process and label set."""


def counter_increase(
    samples: pd.DataFrame,
    series_name: str,
    start: float | None = None,
    end: float | None = None,
) -> float | None:
    """How much a counter grew, summed over its sub-series, counted as Prometheus'
    `increase()` counts it: a drop means the counter restarted from zero (a restarted server),
    so the value after the drop counts in full.

    With `start` and `end`, each sub-series counts from its last sample at or before `start` to
    its first at or after `end`; without them, over all its samples. None when the series has
    no samples, or some sub-series lacks a sample on either side of the window (the window is
    not covered, so the sum would fall short)."""
    rows = samples[samples["series"] == series_name]
    if rows.empty:
        return None
    total = 0.0
    for _, group in rows.groupby(SUB_SERIES, dropna=False):
        ordered = group.sort_values("timestamp")
        times = ordered["timestamp"].to_numpy()
        values = ordered["value"].to_numpy(dtype=float)
        first, last = 0, len(values) - 1
        if start is not None:
            before = np.flatnonzero(times <= start)
            if not len(before):
                return None
            first = int(before[-1])
        if end is not None:
            after = np.flatnonzero(times >= end)
            if not len(after):
                return None
            last = int(after[0])
        span = values[first : last + 1]
        steps = np.diff(span)
        total += float(np.where(steps >= 0, steps, span[1:]).sum())
    return total


def cross_check(
    metric: str, client: float, server: float | None, server_extra: float = 0.0
) -> dict[str, Any]:
    """The client's and the server's figure for one quantity, and whether they disagree.

    `server_extra`: how many more the server may count in a window without the clients'
    doing (a database's own background transactions): within it, a server ahead is no
    disagreement, however small the load."""
    check: dict[str, Any] = {
        "metric": metric,
        "client": client,
        "server": server,
        "difference": None,
        "flagged": False,
    }
    if server_extra:
        check["server_extra_allowed"] = server_extra
    if server is None:
        return check
    reference = max(abs(server), abs(client))
    difference = 0.0 if reference == 0 else (client - server) / reference
    explained = 0 <= server - client <= server_extra
    check["difference"] = difference
    check["flagged"] = abs(difference) > CROSS_CHECK_TOLERANCE and not explained
    return check


def cross_check_warning(check: dict[str, Any], service: str) -> str | None:
    if not check["flagged"]:
        return None
    return (
        f"server '{service}' counted {check['server']:.0f} {check['metric'].replace('_', ' ')}, "
        f"the clients {check['client']:.0f} ({abs(check['difference']):.1%} apart, more than "
        f"{CROSS_CHECK_TOLERANCE:.0%}): one side miscounts"
    )
