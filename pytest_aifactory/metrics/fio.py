"""Statistics of one load level of a fio client, from fio's own figures in the records.

fio measures every I/O itself; each record carries one process's figures for one direction
(bandwidth, IOPS, completion latency statistics). The level's bandwidth and IOPS are the sums
over processes and directions. Latency means, deviations, minima and maxima are combined
exactly from the parts (weighted by I/O count); percentiles cannot be, since fio reports no
mergeable histogram, so each percentile is the worst part's: an upper bound of the true
percentile, exact when there is one process and one direction.

Same shape as the other kinds' summaries (`counts`, `per_request`, `per_level`, `by_op`,
`errors`), so SLOs, reports and comparisons read it alike.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from pytest_aifactory.loadgen.records import extra_of, records_frame
from pytest_aifactory.metrics.catalog import STATISTICS, SloObjective
from pytest_aifactory.metrics.stats import (
    _error_texts,
    _numeric,
    error_class,
    json_safe,
    measured,
    span_s,
    succeeded,
)

if TYPE_CHECKING:
    from pytest_aifactory.loadgen.kind import ClientKind

MIB = 1024 * 1024

LATENCY_METRICS: dict[str, str] = {"clat_ms": "clat_ms", "latency_ms": "lat_ms"}
"""Per-request metric -> the record's `extra` key: fio's completion latency, and its total
latency (submission + completion) as the operation latency every kind has."""

PERCENTILE_NAMES: tuple[str, ...] = tuple(s for s in STATISTICS if s.startswith("p"))


def combine_latency(parts: Iterable[Mapping[str, Any] | None]) -> dict[str, float]:
    """One statistics dict from several fio latency summaries (`n`, mean, std, min, max and
    percentiles each). Mean and std are pooled over the I/Os; each percentile is the largest
    of the parts' (an upper bound); NaN everywhere when no part timed an I/O."""
    usable = [p for p in parts if p and int(p.get("n") or 0) > 0]
    if not usable:
        return {name: math.nan for name in STATISTICS}
    counts = [int(p["n"]) for p in usable]
    total = sum(counts)
    means = [_float(p.get("mean")) for p in usable]
    mean = sum(n * m for n, m in zip(counts, means, strict=True)) / total
    variance = (
        sum(
            n * (_float(p.get("std")) ** 2 + (m - mean) ** 2)
            for n, m, p in zip(counts, means, usable, strict=True)
        )
        / total
    )
    result = {
        "mean": mean,
        "std": math.sqrt(variance) if math.isfinite(variance) else math.nan,
        "min": min(_float(p.get("min")) for p in usable),
        "max": max(_float(p.get("max")) for p in usable),
    }
    for name in PERCENTILE_NAMES:
        values = [_float(p.get(name)) for p in usable]
        finite = [v for v in values if math.isfinite(v)]
        result[name] = max(finite) if finite else math.nan
    return {name: result[name] for name in STATISTICS}


def _float(value: Any) -> float:
    try:
        return float(value) if value is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def _figures(rows: pd.DataFrame) -> dict[str, Any]:
    """Bandwidth, IOPS and latency of some records (fio's numbers, summed and combined)."""
    ok = succeeded(rows).to_numpy()
    extras = [extra_of(cell) for cell in rows["extra"]] if "extra" in rows else []
    done = [extra for extra, good in zip(extras, ok, strict=True) if good]
    figures: dict[str, Any] = {
        "bw_mib_s": sum(_float(e.get("bw_bytes")) for e in done) / MIB if done else 0.0,
        "iops": sum(_float(e.get("iops")) for e in done) if done else 0.0,
        "ios": int(_numeric(rows[ok], "items").fillna(0).sum()),
        "bytes": int(_numeric(rows[ok], "bytes").fillna(0).sum()),
    }
    for metric, key in LATENCY_METRICS.items():
        figures[metric] = combine_latency(e.get(key) for e in done)
    return figures


def summarize_fio(
    records: pd.DataFrame | Sequence[Mapping[str, Any]],
    requested_rate: float | None = None,
    objectives: Sequence[SloObjective] = (),
    *,
    kind: ClientKind | None = None,
) -> dict[str, Any]:
    """Summary of one fio load level (only measure-phase records count).

    `kind` is taken for the signature every kind's summary shares (`loadgen.kind.Summarizer`)
    and not needed here.

    `per_level`: `bw_mib_s` and `iops` summed over processes and directions (0 when every fio
    run failed), `duration_s` from the first process's start to the last one's end,
    `error_rate` (failed fio runs / runs), `achieved_rate` (= iops) and `requested_rate` (rate
    mode). `per_request`: `clat_ms` and `latency_ms` statistics (see the module: percentiles
    are upper bounds over processes). `by_op`: the same per direction, with IOPS and bandwidth
    also as `ops_s` and `throughput_mib_s` (the names of the other kinds' operation tables).
    `counts` count fio runs per direction (a record each), `counts.ios` the I/Os.
    `objectives` are accepted for a common signature: fio has no per-I/O values to judge
    goodput by.
    """
    del objectives
    frame = records if isinstance(records, pd.DataFrame) else records_frame(list(records))
    rows = measured(frame)
    ok = succeeded(rows)
    sent, completed = len(rows), int(ok.sum())
    failed = sent - completed
    figures = _figures(rows)

    def level(value: float) -> float:
        return value if sent else math.nan

    per_level: dict[str, Any] = {
        "duration_s": span_s(rows[ok.to_numpy()]) if completed else math.nan,
        "bw_mib_s": level(figures["bw_mib_s"]),
        "iops": level(figures["iops"]),
        "error_rate": failed / sent if sent else math.nan,
        "achieved_rate": level(figures["iops"]),
        "requested_rate": requested_rate,
    }
    per_request = {metric: figures[metric] for metric in LATENCY_METRICS}

    by_op: dict[str, Any] = {}
    if "op" in rows and len(rows):
        for op, part in rows.groupby("op", sort=True):
            if op:
                part_ok = succeeded(part)
                figures_of_op = _figures(part)
                by_op[str(op)] = {
                    "count": len(part),
                    "failed": int((~part_ok).sum()),
                    **figures_of_op,
                    # the names the other kinds' operation tables use
                    "ops_s": figures_of_op["iops"],
                    "throughput_mib_s": figures_of_op["bw_mib_s"],
                }

    processes = int(rows["process"].nunique()) if "process" in rows and len(rows) else 0
    errors = Counter(error_class(e) for e in _error_texts(rows) if e)
    summary: dict[str, Any] = json_safe(
        {
            "counts": {
                "sent": sent,
                "completed": completed,
                "failed": failed,
                "good": completed,
                "ios": figures["ios"],
                "bytes": figures["bytes"],
                "processes": processes,
            },
            "per_request": per_request,
            "per_level": per_level,
            "by_op": by_op,
            "errors": dict(errors.most_common()),
            "percentiles": "exact" if completed <= 1 else "upper bound (worst process)",
        }
    )
    return summary
