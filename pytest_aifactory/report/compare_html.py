"""A comparison of runs as one self-contained HTML page: the table, colored by direction, and
charts that overlay the runs (each metric against the load level, TTFT distributions).

Clusters have no internet, so Vega, Vega-Lite and vega-embed are inlined from vl-convert's
bundle; the page opens from a file with nothing fetched.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path

import altair as alt
import numpy as np
import pandas as pd

from pytest_aifactory.loadgen.kinds import all_metrics, client_kinds
from pytest_aifactory.report.charts import CDF_POINTS, cdf_points
from pytest_aifactory.report.compare import (
    Comparison,
    Regression,
    format_change,
    format_value,
    metric_unit,
    run_letters,
)
from pytest_aifactory.report.html_report import EMBED_SCRIPT, json_for_script, vega_bundle

CHART_METRICS: tuple[str, ...] = (
    *dict.fromkeys(
        [
            *(kind.headline.throughput for kind in client_kinds().values()),
            "request_throughput",
            "goodput",
            "error_rate",
        ]
    ),
    *(
        f"{name}.{statistic}"
        for name, info in all_metrics().items()
        if info.chart_title
        for statistic in ("p50", "p99")
    ),
)
"""Metrics charted against the load level, when the comparison has them (else its first few):
each kind's headline throughput, the common rates, the p50 and p99 of drawn latencies."""
MAX_CHARTS = 8
RECORD_COLUMNS = ["client", "level_label", "phase", "ttft_ms", "error"]

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; }
th { background: #f4f4f4; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.better { background: #e3f6e3; color: #145214; }
td.worse { background: #fbe3e3; color: #8a1212; }
td.same { color: #666; }
.regressions li { color: #8a1212; }
.chart { margin: 0.5em 0 1.5em; }
.note { color: #666; }
"""


def _script(code: str) -> str:
    """`</script` inside the code would end the element early; `<\\/` means the same in JS."""
    return "<script>" + code.replace("</script", "<\\/script") + "</script>"


def _e(value: object) -> str:
    return html.escape(str(value))


# -- charts -------------------------------------------------------------------------------------


def _run_names(comparison: Comparison) -> list[str]:
    letters = run_letters(len(comparison.runs))
    return [f"{letter}: {run.run_id}" for letter, run in zip(letters, comparison.runs, strict=True)]


def level_frame(comparison: Comparison) -> pd.DataFrame:
    """One row per run, test and metric: the value against the numeric load level."""
    names = _run_names(comparison)
    rows = [
        {
            "run": names[i],
            "client": row.client,
            "level": row.level,
            "level_label": row.level_label,
            "metric": f"{row.metric} ({row.unit})" if row.unit else row.metric,
            "value": cell.value,
        }
        for row in comparison.rows
        for i, cell in enumerate(row.cells)
        if cell.value is not None and row.level is not None
    ]
    return pd.DataFrame(rows)


def _chart_metrics(comparison: Comparison) -> list[str]:
    chosen = [m for m in CHART_METRICS if m in comparison.metrics]
    return (chosen or list(comparison.metrics))[:MAX_CHARTS]


def level_charts(comparison: Comparison) -> dict[str, alt.TopLevelMixin]:
    """Per client: each metric against the load level, one line per run."""
    frame = level_frame(comparison)
    if frame.empty:
        return {}
    wanted = {
        f"{m} ({metric_unit(m)})" if metric_unit(m) else m for m in _chart_metrics(comparison)
    }
    frame = frame[frame["metric"].isin(wanted)]
    charts: dict[str, alt.TopLevelMixin] = {}
    for client, data in frame.groupby("client", sort=False):
        base = (
            alt.Chart(data)
            .mark_line(point=True)
            .encode(
                x=alt.X("level:Q", title="load level"),
                y=alt.Y("value:Q", title=None),
                color=alt.Color("run:N", legend=alt.Legend(orient="bottom", labelLimit=400)),
                tooltip=["run", "level_label", "metric", alt.Tooltip("value:Q", format=".4g")],
            )
            .properties(width=240, height=160)
        )
        charts[f"{client}: metrics by load level"] = base.facet(
            facet=alt.Facet("metric:N", title=None), columns=4
        ).resolve_scale(y="independent")
    return charts


def read_ttft(run_root: Path) -> pd.DataFrame:
    """The measured, successful requests' TTFT of a run (empty when it saved no records)."""
    path = run_root / "records.parquet"
    if not path.is_file():
        return pd.DataFrame(columns=RECORD_COLUMNS)
    try:
        frame = pd.read_parquet(path, columns=RECORD_COLUMNS)
    except (OSError, ValueError, KeyError):
        return pd.DataFrame(columns=RECORD_COLUMNS)
    ok = (frame["phase"] == "measure") & (frame["error"].fillna("") == "")
    frame = frame[ok]
    return frame[np.isfinite(frame["ttft_ms"].astype(float))]


def ttft_frame(comparison: Comparison) -> pd.DataFrame:
    names = _run_names(comparison)
    wanted = set(comparison.tests)
    frames = []
    for name, run in zip(names, comparison.runs, strict=True):
        records = read_ttft(run.root)
        for (client, level), group in records.groupby(["client", "level_label"], sort=False):
            if (client, level) not in wanted:
                continue
            points = cdf_points(group["ttft_ms"].to_numpy(), CDF_POINTS)
            points = points.rename(columns={"value": "ttft_ms"})
            frames.append(points.assign(run=name, client=str(client), level_label=str(level)))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def ttft_charts(comparison: Comparison) -> dict[str, alt.TopLevelMixin]:
    """Per client: the TTFT distribution of each run at each level, overlaid."""
    frame = ttft_frame(comparison)
    charts: dict[str, alt.TopLevelMixin] = {}
    if frame.empty:
        return charts
    for client, data in frame.groupby("client", sort=False):
        line = (
            alt.Chart(data)
            .mark_line(interpolate="step-after")
            .encode(
                x=alt.X("ttft_ms:Q", title="TTFT (ms)"),
                y=alt.Y("fraction:Q", title="fraction of requests", axis=alt.Axis(format="%")),
                color=alt.Color("run:N", legend=alt.Legend(orient="bottom", labelLimit=400)),
                tooltip=["run", "level_label", alt.Tooltip("ttft_ms:Q", format=".1f")],
            )
            .properties(width=240, height=160)
        )
        charts[f"{client}: TTFT distribution"] = line.facet(
            facet=alt.Facet("level_label:N", title=None), columns=4
        ).resolve_scale(x="independent")
    return charts


def comparison_charts(comparison: Comparison) -> dict[str, alt.TopLevelMixin]:
    return {**level_charts(comparison), **ttft_charts(comparison)}


# -- the page -----------------------------------------------------------------------------------


def runs_table(comparison: Comparison) -> str:
    letters = run_letters(len(comparison.runs))
    lines = [
        "<table><tr><th>run</th><th>id</th><th>recipe</th><th>started</th><th>status</th>"
        "<th>verdict</th><th>folder</th></tr>"
    ]
    for i, (letter, run) in enumerate(zip(letters, comparison.runs, strict=True)):
        tag = " (baseline)" if i == 0 else ""
        lines.append(
            f"<tr><td>{_e(letter)}{tag}</td><td>{_e(run.run_id)}</td><td>{_e(run.recipe)}</td>"
            f"<td>{_e(run.started_at)}</td><td>{_e(run.status)}</td><td>{_e(run.verdict)}</td>"
            f"<td>{_e(run.root)}</td></tr>"
        )
    lines.append("</table>")
    return "\n".join(lines)


def comparison_table(comparison: Comparison) -> str:
    """Values per run; each later run's change, green when better and red when worse."""
    letters = run_letters(len(comparison.runs))
    head = ["test", "metric", "unit", _e(letters[0])]
    for letter in letters[1:]:
        head.extend([_e(letter), f"{_e(letter)} vs {_e(letters[0])}"])
    lines = ["<table class='comparison'><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for row in comparison.rows:
        cells = [
            f"<td>{_e(row.test)}</td><td>{_e(row.metric)}</td><td>{_e(row.unit)}</td>",
            f"<td class='num'>{_e(format_value(row.cells[0].value))}</td>",
        ]
        for cell in row.cells[1:]:
            css = f"num {cell.verdict}" if cell.verdict else "num"
            cells.append(f"<td class='num'>{_e(format_value(cell.value))}</td>")
            cells.append(f"<td class='{css}'>{_e(format_change(cell))}</td>")
        lines.append("<tr>" + "".join(cells) + "</tr>")
    lines.append("</table>")
    return "\n".join(lines)


def regressions_section(
    regressions: Sequence[Regression] | None, tolerances: Mapping[str, float] | None
) -> str:
    if tolerances is None:
        return ""
    spec = ", ".join(f"{k}:{v * 100:g}%" for k, v in tolerances.items())
    if not regressions:
        return f"<h2>Regression gate</h2><p>No regression beyond the tolerances ({_e(spec)}).</p>"
    items = "".join(f"<li>{_e(r.run_id)}: {_e(r.describe())}</li>" for r in regressions)
    return (
        f"<h2>Regression gate</h2><p>Tolerances: {_e(spec)}. Regressed:</p>"
        f"<ul class='regressions'>{items}</ul>"
    )


def render_comparison_html(
    comparison: Comparison,
    regressions: Sequence[Regression] | None = None,
    tolerances: Mapping[str, float] | None = None,
) -> str:
    charts = comparison_charts(comparison)
    title = " vs ".join(run.run_id for run in comparison.runs)
    divs = []
    for i, (name, chart) in enumerate(charts.items()):
        divs.append(
            f"<h3>{_e(name)}</h3><div class='chart' id='chart-{i}' data-spec='chart-{i}-spec'>"
            f"</div><script type='application/json' id='chart-{i}-spec'>"
            f"{json_for_script(chart.to_dict())}</script>"
        )
    missing = "".join(f"<li>{_e(line)}</li>" for line in comparison.missing)
    return "\n".join(
        [
            "<!DOCTYPE html>",
            "<html lang='en'><head><meta charset='utf-8'>",
            f"<title>Comparison: {_e(title)}</title>",
            f"<style>{STYLE}</style>",
            _script(vega_bundle()),
            "</head><body>",
            "<h1>Run comparison</h1>",
            runs_table(comparison),
            regressions_section(regressions, tolerances),
            "<h2>Metrics</h2>",
            "<p class='note'>Changes are against the baseline run; green is better and red "
            "worse in each metric's own direction.</p>",
            comparison_table(comparison) if comparison.rows else "<p>No test in common.</p>",
            f"<ul class='note'>{missing}</ul>" if missing else "",
            "<h2>Charts</h2>" if divs else "",
            *divs,
            _script(EMBED_SCRIPT) if divs else "",
            "</body></html>",
        ]
    )


def write_comparison_html(
    comparison: Comparison,
    path: Path,
    regressions: Sequence[Regression] | None = None,
    tolerances: Mapping[str, float] | None = None,
) -> Path:
    """Writes the page to `path` (its folder made if needed) and returns `path`."""
    text = render_comparison_html(comparison, regressions, tolerances)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def default_html_path(comparison: Comparison) -> Path:
    """In the last run's folder, named after the baseline: `compare-<baseline id>.html`."""
    return comparison.runs[-1].root / f"compare-{comparison.baseline.run_id}.html"
