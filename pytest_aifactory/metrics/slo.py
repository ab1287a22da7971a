"""SLO verdicts for one load level, and the lines a failed test prints.

A breach line names the client, the level, the metric, its value, the bound and the unit, so a
failing test says at a glance what broke without opening a report.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pytest_aifactory.loadgen.kinds import metric_info
from pytest_aifactory.metrics.catalog import SloObjective
from pytest_aifactory.metrics.intervals import interval_of
from pytest_aifactory.numbers import finite_number


@dataclass(frozen=True)
class SloOutcome:
    """One objective checked against one level's summary.

    `margin` is the relative headroom: `(bound - value) / bound` for a `max` bound and
    `(value - bound) / bound` for a `min` bound, so it is negative exactly when the objective
    is broken. It is None when there is no value or the bound is zero. `detail` says why a
    value is missing.

    `value` is what was judged: the figure itself (`judged_on` "estimate"), or the end of its
    interval on the side the bound guards (`judged_on` "interval": the upper end for a `max`
    bound), so an objective holds only if the whole interval meets it. `estimate` is the
    figure itself either way, `interval` its interval ([] when it has none).
    """

    objective: SloObjective
    value: float | None
    passed: bool
    margin: float | None
    detail: str = ""
    judged_on: Literal["estimate", "interval"] = "estimate"
    estimate: float | None = None
    interval: list[float] = field(default_factory=list)
    confidence: float | None = None

    def to_dict(self) -> dict[str, Any]:
        o = self.objective
        return {
            "client": o.client,
            "key": o.key,
            "metric": o.metric,
            "statistic": o.statistic,
            "bound": o.bound,
            "limit": o.value,
            "unit": _unit(o.metric),
            "value": self.value,
            "passed": self.passed,
            "margin": self.margin,
            "detail": self.detail,
            "judged_on": self.judged_on,
            "estimate": self.value if self.estimate is None else self.estimate,
            "interval": list(self.interval),
        }


def _unit(metric: str) -> str:
    info = metric_info(metric)
    return info.unit if info else ""


def _lookup(summary: Mapping[str, Any], objective: SloObjective) -> Any:
    if objective.statistic:
        stats = (summary.get("per_request") or {}).get(objective.metric) or {}
        return stats.get(objective.statistic)
    return (summary.get("per_level") or {}).get(objective.metric)


def _why_missing(summary: Mapping[str, Any], objective: SloObjective) -> str:
    counts = summary.get("counts") or {}
    sent = int(counts.get("sent") or 0)
    completed = int(counts.get("completed") or 0)
    if not sent:
        return "no requests were sent"
    if not completed:
        return f"0 of {sent} requests succeeded"
    if objective.metric == "achieved_rate" and sent < 2:
        return "only one request was sent"
    return f"{completed} of {sent} requests succeeded, none gave a {objective.metric} value"


def _margin(objective: SloObjective, value: float) -> float | None:
    if objective.value == 0:
        return None
    if objective.bound == "max":
        return (objective.value - value) / objective.value
    return (value - objective.value) / objective.value


def evaluate(
    summary: Mapping[str, Any],
    objectives: Sequence[SloObjective],
    judged_on: Literal["estimate", "interval"] = "estimate",
) -> list[SloOutcome]:
    """Check each objective against a level's summary.

    Per-request metrics are read as `per_request[metric][statistic]`, per-level ones as
    `per_level[metric]`. A missing value fails the objective: when every request failed there is
    no p99 to show the service met its bound. `judged_on` "interval": the figure's interval
    (`summary["intervals"]`) must meet the bound; a figure without one (a per-level figure of
    one repeat) is judged on itself, and its outcome says so.
    """
    confidence = finite_number((summary.get("intervals") or {}).get("confidence"))
    outcomes: list[SloOutcome] = []
    for objective in objectives:
        value = finite_number(_lookup(summary, objective))
        if value is None:
            outcomes.append(
                SloOutcome(objective, None, False, None, detail=_why_missing(summary, objective))
            )
            continue
        interval = interval_of(summary, objective.metric, objective.statistic)
        judged = value
        rule: Literal["estimate", "interval"] = "estimate"
        if judged_on == "interval" and interval:
            judged = interval[1] if objective.bound == "max" else interval[0]
            rule = "interval"
        limit = objective.value
        passed = judged <= limit if objective.bound == "max" else judged >= limit
        outcomes.append(
            SloOutcome(
                objective,
                judged,
                passed,
                _margin(objective, judged),
                judged_on=rule,
                estimate=value,
                interval=interval,
                confidence=confidence,
            )
        )
    return outcomes


def _format_value(value: float) -> str:
    """One decimal, except below 1 where that would hide the value (an error rate of 0.0156)."""
    if value == 0 or abs(value) >= 1:
        return f"{value:.1f}"
    return f"{value:.3g}"


def _format_bound(bound: float) -> str:
    return format(bound, ".15g")


def breach_line(client: str, level_label: str, outcome: SloOutcome) -> str:
    """`chat[concurrency=8] ttft_ms.p99 = 2315.2 ms > max 2000`, one line per broken bound."""
    o = outcome.objective
    if outcome.value is None:
        shown = f"no value ({outcome.detail or 'not measured'})"
    else:
        unit = _unit(o.metric)
        shown = f"{_format_value(outcome.value)} {unit}".rstrip()
        if outcome.judged_on == "interval" and outcome.estimate is not None:
            end = "upper" if o.bound == "max" else "lower"
            sure = f"{outcome.confidence * 100:g}% " if outcome.confidence else ""
            shown += (
                f" ({end} end of its {sure}interval; estimate {_format_value(outcome.estimate)})"
            )
    relation = ">" if o.bound == "max" else "<"
    return (
        f"{client}[{level_label}] {o.key} = {shown} {relation} {o.bound} {_format_bound(o.value)}"
    )


def failure_message(client: str, level_label: str, outcomes: Sequence[SloOutcome]) -> str:
    """One breach line per failed objective; empty when every objective held."""
    return "\n".join(breach_line(client, level_label, o) for o in outcomes if not o.passed)
