"""The configurations of a recipe's matrix side by side: which gives the most throughput for
the hardware it takes while meeting every objective.

Each configuration was benchmarked as a run of its own (`aifactory matrix`); this reads their
summaries. A point is one load level of one configuration: its headline throughput per unit of
hardware (per GPU where the service asked for GPUs, else per node) against its headline
latency's median (TTFT for LLM serving). The Pareto front holds the points no other point beats
on both; the best configuration is the one whose every test passed with the highest throughput
per unit at any of its levels. A second front sets the same throughput against what each user
sees stream (tokens/s per user), where the test has a time per output token.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import altair as alt
import pandas as pd

from pytest_aifactory.atomic import write_text_atomic
from pytest_aifactory.numbers import finite_number
from pytest_aifactory.report.headline import headline_of, headline_values
from pytest_aifactory.report.html_report import (
    EMBED_SCRIPT,
    inline_script,
    json_for_script,
    vega_bundle,
)

MATRIX_JSON = "matrix.json"
MATRIX_HTML = "matrix.html"


@dataclass(frozen=True)
class ConfigRun:
    """One configuration and the run that benchmarked it (None: its session made none)."""

    index: int
    config_id: str
    label: str
    run_dir: Path | None
    summary: Mapping[str, Any] | None
    exit_code: int


def hardware(summary: Mapping[str, Any], test: Mapping[str, Any]) -> tuple[float, str]:
    """What the test's service ran on: its GPUs where it asked for some, else its nodes."""
    document = (summary.get("recipe") or {}).get("document") or {}
    clients = document.get("clients") or {}
    service_name = (clients.get(test.get("client")) or {}).get("service")
    service = (document.get("services") or {}).get(service_name) or {}
    copies = int(service.get("nodes") or 1) * int(service.get("replicas") or 1)
    gpus = int(service.get("gpus_per_node") or 0)
    if gpus:
        return float(gpus * copies), "GPU"
    return float(copies), "node"


def points(runs: Sequence[ConfigRun]) -> pd.DataFrame:
    """One row per level of each configuration that has a headline throughput."""
    rows = []
    for run in runs:
        if run.summary is None:
            continue
        for test in run.summary.get("tests") or []:
            values = headline_values(test)
            throughput = values["throughput"]
            if throughput is None:
                continue
            head = headline_of(test.get("kind"), test.get("api"))
            units, unit = hardware(run.summary, test)
            tpot = finite_number(((test.get("per_request") or {}).get("tpot_ms") or {}).get("p50"))
            rows.append(
                {
                    "config": run.label,
                    "config_id": run.config_id,
                    "client": str(test.get("client") or ""),
                    "level": str(test.get("level_label") or ""),
                    "passed": bool(test.get("passed")),
                    "throughput": throughput,
                    "throughput_per_unit": throughput / units,
                    "unit": unit,
                    "throughput_name": head.throughput_label,
                    "latency_p50": values["latency_p50"],
                    "latency_name": head.latency_label,
                    "per_user_tokens_s": 1000.0 / tpot if tpot else None,
                }
            )
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class FrontAxis:
    """What a Pareto front sets against throughput per unit of hardware: a column of `points`,
    its direction, how the chart names it and the column that marks the front's points."""

    column: str
    higher_is_better: bool
    title: str
    front_column: str


LATENCY_AXIS = FrontAxis("latency_p50", False, "{latency} p50 (ms)", "on_front")
USER_SPEED_AXIS = FrontAxis(
    "per_user_tokens_s", True, "tokens/s per user (1000 / TPOT p50)", "on_user_front"
)
"""The serving trade-off as GPU vendors chart it: what one user sees stream (the inverse of the
time per output token) against what the hardware serves in all."""
FRONT_AXES = (LATENCY_AXIS, USER_SPEED_AXIS)


def pareto_front(frame: pd.DataFrame, axis: FrontAxis = LATENCY_AXIS) -> pd.Series:
    """Which points no other point beats on both throughput per unit (higher) and the axis
    (latency lower, per-user speed higher); a point without a value on the axis is on the
    front only by throughput."""
    on_front = pd.Series(False, index=frame.index)
    if not len(frame) or axis.column not in frame:
        return on_front
    values = pd.to_numeric(frame[axis.column], errors="coerce").astype(float)
    cost = (-values if axis.higher_is_better else values).fillna(math.inf)
    throughput = frame["throughput_per_unit"].astype(float)
    for index in frame.index:
        beaten = (
            (cost <= cost[index])
            & (throughput >= throughput[index])
            & ((cost < cost[index]) | (throughput > throughput[index]))
        )
        on_front[index] = not bool(beaten.any())
    return on_front


def best_config(runs: Sequence[ConfigRun], frame: pd.DataFrame) -> ConfigRun | None:
    """The configuration whose every test passed, with the highest throughput per unit at any
    of its levels; None when no configuration met every objective."""
    passing = [r for r in runs if r.summary is not None and r.summary.get("verdict") == "pass"]
    best: tuple[float, ConfigRun] | None = None
    for run in passing:
        mine = frame[frame["config_id"] == run.config_id] if len(frame) else frame
        if not len(mine):
            continue
        peak = float(mine["throughput_per_unit"].max())
        if best is None or peak > best[0]:
            best = (peak, run)
    return best[1] if best else None


def matrix_result(recipe_name: str, runs: Sequence[ConfigRun]) -> dict[str, Any]:
    """What `matrix.json` holds: each configuration's run and figures, the front, the best."""
    frame = points(runs)
    fronts = {axis.front_column: pareto_front(frame, axis) for axis in FRONT_AXES}
    best = best_config(runs, frame)
    configs = []
    for run in runs:
        mine = frame[frame["config_id"] == run.config_id] if len(frame) else frame
        ordered = mine.sort_values("throughput_per_unit", ascending=False) if len(mine) else mine
        top = ordered.iloc[0] if len(ordered) else None
        configs.append(
            {
                "index": run.index,
                "id": run.config_id,
                "label": run.label,
                "run_dir": str(run.run_dir) if run.run_dir else None,
                "run_id": (run.summary or {}).get("run_id"),
                "verdict": (run.summary or {}).get("verdict", "no run"),
                "exit_code": run.exit_code,
                "tests": len((run.summary or {}).get("tests") or []),
                "passed": sum(
                    bool(t.get("passed")) for t in (run.summary or {}).get("tests") or []
                ),
                "peak_throughput_per_unit": None
                if top is None
                else float(top["throughput_per_unit"]),
                "peak_level": None if top is None else str(top["level"]),
                "peak_latency_p50": None if top is None else finite_number(top["latency_p50"]),
            }
        )
    rows = frame.assign(**fronts).to_dict("records") if len(frame) else []
    return {
        "recipe": recipe_name,
        "unit": str(frame["unit"].iloc[0]) if len(frame) else "node",
        "configurations": configs,
        "points": rows,
        "best": None if best is None else {"id": best.config_id, "label": best.label},
    }


def pareto_chart(frame: pd.DataFrame, axis: FrontAxis = LATENCY_AXIS) -> alt.LayerChart | None:
    """Throughput per unit against the axis, a point per level and configuration, the front
    joined by a line."""
    if axis.column not in frame or axis.front_column not in frame:
        return None
    data = frame.dropna(subset=[axis.column, "throughput_per_unit"])
    if not len(data):
        return None
    unit = str(data["unit"].iloc[0])
    throughput_name = str(data["throughput_name"].iloc[0])
    latency_name = str(data["latency_name"].iloc[0])
    x = alt.X(
        f"{axis.column}:Q",
        title=axis.title.format(latency=latency_name),
        scale=alt.Scale(zero=False),
    )
    y = alt.Y("throughput_per_unit:Q", title=f"{throughput_name} per {unit}")
    dots = (
        alt.Chart(data)
        .mark_point(filled=True, size=70)
        .encode(
            x=x,
            y=y,
            color=alt.Color("config:N", title="configuration"),
            shape=alt.Shape("passed:N", title="objectives met"),
            tooltip=[
                "config:N",
                "level:N",
                "throughput_per_unit:Q",
                f"{axis.column}:Q",
                "passed:N",
            ],
        )
    )
    front = data[data[axis.front_column].astype(bool)].sort_values(axis.column)
    line = alt.Chart(front).mark_line(color="#888", strokeDash=[4, 3]).encode(x=x, y=y)
    # no facet encodings, so alt.layer gives a LayerChart (never a hoisted FacetChart)
    layered = cast(alt.LayerChart, alt.layer(line, dots))
    better = "faster for each user" if axis.higher_is_better else "less latency"
    return layered.properties(
        width=560, height=320, title=f"Pareto front: more throughput for the hardware, {better}"
    )


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _number(value: Any) -> str:
    number = finite_number(value)
    return "—" if number is None else f"{number:,.2f}"


STYLE = (
    "body{font:14px/1.45 system-ui,sans-serif;margin:24px;max-width:1100px;color:#1f2328}"
    "table{border-collapse:collapse;margin:8px 0}th,td{border-bottom:1px solid #d0d7de;"
    "padding:4px 10px;text-align:left}td.num{text-align:right}tr.best td{background:#dafbe1}"
    ".muted{color:#656d76}"
)


def render_matrix_html(result: Mapping[str, Any], report_links: Mapping[str, str]) -> str:
    """The page: best configuration, every configuration's figures and run, the chart."""
    frame = pd.DataFrame(result.get("points") or [])
    charts = [pareto_chart(frame, axis) for axis in FRONT_AXES] if len(frame) else []
    drawn = [chart for chart in charts if chart is not None]
    best: Mapping[str, Any] | None = result.get("best")
    unit = result.get("unit") or "node"
    rows = []
    for config in result.get("configurations") or []:
        is_best = best is not None and config["id"] == best["id"]
        link = report_links.get(config["id"])
        run = f"<a href='{_e(link)}'>{_e(config['run_id'])}</a>" if link else _e(config["run_id"])
        rows.append(
            f"<tr class='{'best' if is_best else ''}'><td>{_e(config['label'])}"
            f"{' <b>(best)</b>' if is_best else ''}</td><td>{run}</td>"
            f"<td>{_e(config['verdict'])}</td><td class='num'>{config['passed']}/"
            f"{config['tests']}</td><td class='num'>{_number(config['peak_throughput_per_unit'])}"
            f"</td><td>{_e(config['peak_level'] or '—')}</td>"
            f"<td class='num'>{_number(config['peak_latency_p50'])}</td></tr>"
        )
    headline = (
        f"<p><b>Best configuration:</b> {_e(best['label'])}: every objective met, the most "
        f"throughput per {_e(unit)}.</p>"
        if best
        else "<p><b>No configuration met every objective.</b></p>"
    )
    chart_html = "<h2>Pareto fronts</h2>" if drawn else ""
    for number, chart in enumerate(drawn):
        chart_html += (
            f"<div class='chart' id='chart-{number}' data-spec='chart-{number}-spec'>"
            f"</div><script type='application/json' id='chart-{number}-spec'>"
            f"{json_for_script(chart.to_dict())}</script>"
        )
    headers = (
        "Configuration",
        "Run",
        "Verdict",
        "Tests passed",
        f"Peak throughput per {unit}",
        "at level",
        "latency p50 (ms) there",
    )
    return "\n".join(
        [
            "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
            f"<title>Configurations of {_e(result.get('recipe'))}</title>",
            f"<style>{STYLE}</style>",
            inline_script(vega_bundle()) if drawn else "",
            "</head><body>",
            f"<h1>Configurations of {_e(result.get('recipe'))}</h1>",
            headline,
            "<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in headers) + "</tr>",
            *rows,
            "</table>",
            "<p class='muted'>Each configuration is a run of its own, with its own report.</p>",
            chart_html,
            inline_script(EMBED_SCRIPT) if drawn else "",
            "</body></html>",
        ]
    )


def write_matrix_report(folder: Path, recipe_name: str, runs: Sequence[ConfigRun]) -> Path:
    """`matrix.json` and `matrix.html` in `folder`; returns the page's path."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    result = matrix_result(recipe_name, runs)
    write_text_atomic(folder / MATRIX_JSON, json.dumps(result, indent=2, default=str) + "\n")
    links = {
        run.config_id: str(Path("..") / run.run_dir.name / "report.html")
        for run in runs
        if run.run_dir is not None and run.run_dir.parent == folder.parent
    }
    page = folder / MATRIX_HTML
    write_text_atomic(page, render_matrix_html(result, links))
    return page
