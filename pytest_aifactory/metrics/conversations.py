"""Figures of a level that sent multi-turn sessions (a `conversation` dataset): per turn index
(`by_turn`), since a later turn carries a longer history and its TTFT shows what the server
does with it (prefill, or a prefix cache that kept the history), and the sessions themselves.
Pure functions of the records, as the rest of a summary."""

from __future__ import annotations

from typing import Any

import pandas as pd

from pytest_aifactory.metrics.stats import _numeric, describe, distribution, measured, succeeded

TURN_STATISTICS = ("mean", "p50", "p99")


def _turns(rows: pd.DataFrame) -> pd.Series:
    return _numeric(rows, "turn")


def has_sessions(records: pd.DataFrame) -> bool:
    """Whether these records are turns of sessions (their `turn` says so)."""
    return "turn" in records and bool(_turns(measured(records)).notna().any())


def turn_figures(records: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """For each turn index (0 first): requests sent and failed, TTFT (mean, p50, p99 of the
    completed turns) and the mean input tokens the server counted."""
    rows = measured(records)
    turns = _turns(rows)
    out: dict[str, dict[str, Any]] = {}
    for turn in sorted(int(t) for t in turns.dropna().unique()):
        part = rows[(turns == turn).to_numpy()]
        ok = succeeded(part)
        done = part[ok.to_numpy()]
        ttft = describe(distribution(done, "ttft_ms"))
        out[str(turn)] = {
            "requests": len(part),
            "failed": int((~ok).sum()),
            "ttft_ms": {name: ttft[name] for name in TURN_STATISTICS},
            "input_tokens_mean": describe(distribution(done, "input_tokens"))["mean"],
        }
    return out


def session_counts(records: pd.DataFrame) -> dict[str, Any]:
    """Sessions the level opened (those with a measured turn) and completed (every one of
    their turns sent and answered), and the mean turns a session sent."""
    rows = measured(records)
    rows = rows[_turns(rows).notna().to_numpy()]
    if not len(rows):
        return {"started": 0, "completed": 0, "turns_mean": float("nan")}
    frame = pd.DataFrame(
        {
            "process": _numeric(rows, "process").fillna(0),
            "repeat": _numeric(rows, "repeat").fillna(0),
            "session": _numeric(rows, "session_id"),
            "ok": succeeded(rows).astype(int),
            "planned": _numeric(rows, "session_turns"),
        },
        index=rows.index,
    )
    grouped = frame.groupby(["repeat", "process", "session"], sort=False)
    sent = grouped["ok"].size()
    answered = grouped["ok"].sum()
    planned = grouped["planned"].max()
    completed = int(((answered == planned) & (sent == planned)).sum())
    return {
        "started": len(sent),
        "completed": completed,
        "turns_mean": float(sent.mean()),
    }
