"""The experiments dashboard page: every run of a reports folder in one self-contained file.

Like a run's report it opens from a file with no network (the same inlined Vega bundle and
chart loader). The runs table is plain HTML, so it reads without scripts; a few lines of plain
JavaScript filter it (recipe, status, verdict, dates) and sort it by any column, which stays
quick with thousands of rows. Each history chart carries its points and is drawn by Vega-Lite.
"""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pytest_aifactory import __version__
from pytest_aifactory.atomic import write_text_atomic
from pytest_aifactory.report.compare import format_value
from pytest_aifactory.report.html_report import (
    EMBED_SCRIPT,
    STYLE,
    ChartView,
    chart_html,
    fmt_time,
    inline_script,
    slug,
    vega_bundle,
)
from pytest_aifactory.report.index import (
    DEFAULT_TOLERANCE,
    FIGURES,
    INDEX_NAME,
    History,
    RunRow,
    histories,
    read_rows,
    recipes_of,
)

FLAG_SHAPES: dict[str, str] = {
    "ok": "circle",
    "objective failed": "cross",
    "regression": "triangle-down",
    "objective failed + regression": "diamond",
}
"""How a history point shows what went wrong at it."""
CHART_WIDTH = 560
PANEL_HEIGHT = 110

INDEX_STYLE = """
.filters { display: flex; flex-wrap: wrap; gap: 8px 18px; align-items: center;
           margin: 12px 0; padding: 8px 12px; background: #f6f8fa; border-radius: 6px; }
.filters label { color: var(--muted); }
table.runs th[data-key] { cursor: pointer; user-select: none; white-space: nowrap; }
table.runs th[aria-sort="ascending"]::after { content: " ▲"; }
table.runs th[aria-sort="descending"]::after { content: " ▼"; }
table.runs td { vertical-align: top; }
table.runs tr.unverified td { background: var(--warn-bg); }
table.runs ul.figures { margin: 0; padding-left: 0; list-style: none; font-size: 12px; }
.badge.warn { color: var(--warn); background: var(--warn-bg); }
.recipe-history h3 { margin-top: 18px; }
"""

SCRIPT = """
(function () {
  var table = document.getElementById("runs");
  if (!table) { return; }
  var body = table.tBodies[0];
  var rows = Array.prototype.slice.call(body.rows);
  var shown = document.getElementById("shown");
  var fields = ["recipe", "status", "verdict", "from", "to"];
  function value(name) { return document.getElementById("filter-" + name).value; }
  function apply() {
    var f = {};
    fields.forEach(function (name) { f[name] = value(name); });
    var count = 0;
    rows.forEach(function (row) {
      var d = row.dataset;
      var keep = (!f.recipe || d.recipe === f.recipe) && (!f.status || d.status === f.status) &&
        (!f.verdict || d.verdict === f.verdict) && (!f.from || d.date >= f.from) &&
        (!f.to || d.date <= f.to);
      row.hidden = !keep;
      if (keep) { count += 1; }
    });
    shown.textContent = String(count);
    document.querySelectorAll("section.recipe-history").forEach(function (section) {
      section.hidden = Boolean(f.recipe) && section.dataset.recipe !== f.recipe;
    });
    var state = fields.filter(function (name) { return f[name]; })
      .map(function (name) { return name + "=" + encodeURIComponent(f[name]); }).join("&");
    try {
      window.history.replaceState(null, "", state ? "#" + state : window.location.pathname);
    } catch (err) {
      // a browser that keeps a file's address fixed: the filters still apply
    }
  }
  function key(row, index) {
    var cell = row.cells[index];
    return cell.dataset.sort !== undefined ? cell.dataset.sort : cell.textContent;
  }
  function sortBy(th) {
    var index = th.cellIndex;
    var order = th.getAttribute("aria-sort") === "ascending" ? "descending" : "ascending";
    table.querySelectorAll("th[aria-sort]").forEach(function (other) {
      other.removeAttribute("aria-sort");
    });
    th.setAttribute("aria-sort", order);
    var numeric = th.dataset.type === "number";
    var sign = order === "ascending" ? 1 : -1;
    var keyed = rows.map(function (row) { return [key(row, index), row]; });
    keyed.sort(function (a, b) {
      var x = a[0], y = b[0];
      if (numeric) {
        x = x === "" ? -Infinity : Number(x);
        y = y === "" ? -Infinity : Number(y);
        return sign * (x < y ? -1 : x > y ? 1 : 0);
      }
      return sign * String(x).localeCompare(String(y));
    });
    var fragment = document.createDocumentFragment();
    keyed.forEach(function (pair) { fragment.appendChild(pair[1]); });
    body.appendChild(fragment);
    rows = keyed.map(function (pair) { return pair[1]; });
  }
  table.querySelectorAll("th[data-key]").forEach(function (th) {
    th.addEventListener("click", function () { sortBy(th); });
  });
  fields.forEach(function (name) {
    document.getElementById("filter-" + name).addEventListener("change", apply);
  });
  window.location.hash.replace(/^#/, "").split("&").forEach(function (part) {
    var pair = part.split("=");
    var input = document.getElementById("filter-" + pair[0]);
    if (input && pair.length === 2) { input.value = decodeURIComponent(pair[1]); }
  });
  apply();
})();
"""
"""Filters and sorting of the runs table. Filters are kept in the page's address (`#recipe=x`),
so a filtered view can be bookmarked or sent."""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


# -- the runs table -----------------------------------------------------------------------------


def _figure_line(label: str, values: Mapping[str, tuple[str, float | None]]) -> str:
    parts = [
        f"{_e(values[name][0])} {_e(format_value(values[name][1]))}"
        for name in FIGURES
        if name in values and values[name][1] is not None
    ]
    return f"<li><b>{_e(label)}</b> {' · '.join(parts) or '—'}</li>"


def _headline_cell(row: RunRow) -> str:
    lines = [
        _figure_line(test.label, {f.name: (f.label, f.value) for f in test.figures})
        for test in row.tests
    ]
    return f'<ul class="figures">{"".join(lines)}</ul>' if lines else "—"


def _verdict_cell(row: RunRow) -> str:
    if not row.verdict:
        return '<td data-sort=""><span class="badge unknown">—</span></td>'
    css = "pass" if row.verdict == "pass" else "fail"
    counts = f"{row.passed} passed, {row.failed} failed"
    return (
        f'<td data-sort="{_e(row.verdict)}"><span class="badge {css}">'
        f'{_e(row.verdict.upper())}</span><br><span class="muted">{_e(counts)}</span></td>'
    )


def _trust_cell(row: RunRow) -> str:
    if row.unreadable:
        reason = _e(row.unreadable)
        return f'<td data-sort="2"><span class="badge fail">unreadable</span> {reason}</td>'
    if row.problems:
        reasons = "; ".join(row.problems)
        return f'<td data-sort="1"><span class="badge warn">not verified</span> {_e(reasons)}</td>'
    return '<td data-sort="0"><span class="badge pass">verified</span></td>'


def run_row_html(row: RunRow) -> str:
    link = (
        f'<a href="{_e(row.report)}">{_e(row.run_id)}</a>'
        if row.report
        else f'{_e(row.run_id)} <span class="muted">(no report)</span>'
    )
    css = "" if row.verified else ' class="unverified"'
    data = (
        f'data-recipe="{_e(row.recipe)}" data-status="{_e(row.status)}" '
        f'data-verdict="{_e(row.verdict)}" data-date="{_e(row.date)}" '
        f'data-verified="{"true" if row.verified else "false"}"'
    )
    return (
        f"<tr{css} {data}>"
        f'<td data-sort="{_e(row.run_id)}">{link}</td>'
        f"<td>{_e(row.recipe)}</td>"
        f'<td data-sort="{_e(row.started_at)}">{_e(fmt_time(row.started_at))}</td>'
        f"<td>{_e(row.host or '—')}</td>"
        f"<td>{_e(row.executor or '—')}</td>"
        f"<td>{_e(row.status or '—')}</td>"
        f"{_verdict_cell(row)}"
        f'<td data-sort="{len(row.tests)}">{_headline_cell(row)}</td>'
        f"{_trust_cell(row)}"
        "</tr>"
    )


COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("run", "Run", "text"),
    ("recipe", "Recipe", "text"),
    ("started", "Started", "text"),
    ("host", "Host or nodes", "text"),
    ("executor", "Executor", "text"),
    ("status", "Status", "text"),
    ("verdict", "Verdict", "text"),
    ("tests", "Tests: headline figures", "number"),
    ("verified", "Verified", "number"),
)


def runs_table(rows: Sequence[RunRow]) -> str:
    head = "".join(
        f'<th data-key="{key}" data-type="{kind}"'
        + (' aria-sort="descending"' if key == "started" else "")
        + f">{_e(title)}</th>"
        for key, title, kind in COLUMNS
    )
    body = "".join(run_row_html(row) for row in rows)
    return (
        f'<table class="runs" id="runs"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
    )


def _options(name: str, label: str, values: Sequence[str]) -> str:
    options = "".join(f'<option value="{_e(v)}">{_e(v)}</option>' for v in values if v)
    return (
        f'<label for="filter-{name}">{_e(label)}</label> '
        f'<select id="filter-{name}"><option value="">all</option>{options}</select>'
    )


def filters(rows: Sequence[RunRow]) -> str:
    statuses = sorted({row.status for row in rows})
    verdicts = sorted({row.verdict for row in rows})
    return (
        '<div class="filters">'
        + _options("recipe", "Recipe", recipes_of(rows))
        + _options("status", "Status", statuses)
        + _options("verdict", "Verdict", verdicts)
        + '<label for="filter-from">From</label> <input type="date" id="filter-from">'
        + '<label for="filter-to">to</label> <input type="date" id="filter-to">'
        + f'<span><span id="shown">{len(rows)}</span> of {len(rows)} runs shown</span>'
        + "</div>"
    )


# -- history charts -----------------------------------------------------------------------------


def history_spec(history: History) -> dict[str, Any]:
    """One panel per headline figure (its own scale), one line per test of the client, the
    runs on a time axis; a point where an objective failed or a regression was found is drawn
    larger, in its own shape, ringed in red, and says what happened in its tooltip."""
    order = {name: i for i, name in enumerate(FIGURES)}
    points = sorted(history.points, key=lambda p: (order.get(p.figure, 9), p.started_at))
    values = [
        {
            "run": p.run_id,
            "date": p.started_at,
            "test": p.test,
            "figure": p.label,
            "order": order.get(p.figure, 9),
            "value": p.value,
            "flag": p.flag,
            "detail": "; ".join(p.marks) or "ok",
        }
        for p in points
    ]
    labels = list(dict.fromkeys(p.label for p in points))
    x = {"field": "date", "type": "temporal", "title": None}
    y = {"field": "value", "type": "quantitative", "title": None, "scale": {"zero": False}}
    color = {"field": "test", "type": "nominal", "legend": {"orient": "bottom", "title": None}}
    tooltip = [
        {"field": "run", "type": "nominal"},
        {"field": "date", "type": "temporal", "format": "%Y-%m-%d %H:%M"},
        {"field": "test", "type": "nominal"},
        {"field": "figure", "type": "nominal"},
        {"field": "value", "type": "quantitative", "format": ".4~g"},
        {"field": "detail", "type": "nominal"},
    ]
    flagged = "datum.flag !== 'ok'"
    # every point, ringed at size 0 unless flagged: a layer filtered to the flagged points
    # would be empty in a panel without one, and an empty layer has no extent to draw
    ring = {
        "mark": {"type": "point", "filled": False, "color": "#cf222e", "strokeWidth": 2},
        "encoding": {
            "x": x,
            "y": y,
            "size": {"condition": {"test": flagged, "value": 320}, "value": 0},
            "tooltip": tooltip,
        },
    }
    return {
        "data": {"values": values},
        "facet": {
            "row": {
                "field": "figure",
                "type": "nominal",
                "title": None,
                "sort": labels,
                "header": {"labelAngle": 0, "labelAlign": "left", "labelOrient": "top"},
            }
        },
        "spec": {
            "width": CHART_WIDTH,
            "height": PANEL_HEIGHT,
            "layer": [
                {
                    "mark": {"type": "line", "interpolate": "linear"},
                    "encoding": {"x": x, "y": y, "color": color},
                },
                {
                    "mark": {"type": "point", "filled": True},
                    "encoding": {
                        "x": x,
                        "y": y,
                        "color": color,
                        "shape": {
                            "field": "flag",
                            "type": "nominal",
                            "title": None,
                            "scale": {
                                "domain": list(FLAG_SHAPES),
                                "range": list(FLAG_SHAPES.values()),
                            },
                            "legend": {"orient": "bottom"},
                        },
                        "size": {"condition": {"test": flagged, "value": 140}, "value": 30},
                        "tooltip": tooltip,
                    },
                },
                *([ring] if any(p.flag != "ok" for p in points) else []),
            ],
        },
        "resolve": {"scale": {"y": "independent"}},
    }


def history_section(recipe: str, recipe_histories: Sequence[History]) -> str:
    charts = []
    for history in recipe_histories:
        element = f"history-{slug(recipe)}-{slug(history.client)}"
        title = f"{recipe}: client {history.client}, headline figures over runs"
        charts.append(chart_html(ChartView(history.client, element, title, history_spec(history))))
    left_out = recipe_histories[0].left_out if recipe_histories else ()
    note = (
        f'<p class="muted">Not drawn (not verified): {_e(", ".join(left_out))}.</p>'
        if left_out
        else ""
    )
    return (
        f'<section class="recipe-history" data-recipe="{_e(recipe)}">'
        f'<h3>{_e(recipe)}</h3>{note}<div class="charts">{"".join(charts)}</div></section>'
    )


def history_sections(found: Sequence[History]) -> str:
    by_recipe: dict[str, list[History]] = {}
    for history in found:
        by_recipe.setdefault(history.recipe, []).append(history)
    return "".join(history_section(recipe, items) for recipe, items in by_recipe.items())


# -- the page -----------------------------------------------------------------------------------


def render_index(
    rows: Sequence[RunRow],
    folder: Path,
    tolerance: float = DEFAULT_TOLERANCE,
    script: str | None = None,
) -> str:
    """The whole page. `script`: the Vega bundle (by default `vega_bundle()`)."""
    found = histories(rows, tolerance)
    recipes = recipes_of(rows)
    bundle = script if script is not None else vega_bundle()
    generated = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    unverified = sum(1 for row in rows if not row.verified)
    marked = (
        f" {unverified} of them not verified (marked; never drawn nor used as a baseline)."
        if unverified
        else ""
    )
    legend = (
        "One line per test of each client; every point is a run. A point where an objective "
        "failed, or where a headline figure moved the wrong way by more than "
        f"{tolerance * 100:g}% from the previous verified complete run of the recipe "
        "(a regression), is ringed in red."
    )
    history = (
        f'<h2>History</h2><p class="muted">{_e(legend)}</p>{history_sections(found)}'
        if found
        else ""
    )
    return "".join(
        [
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>Experiments · {_e(folder.name or str(folder))}</title>",
            f"<style>{STYLE}{INDEX_STYLE}</style></head><body>",
            "<header><h1>Experiments</h1>",
            f'<p class="meta">{len(rows)} run(s) of {len(recipes)} recipe(s) in '
            f"{_e(folder)}.{_e(marked)}</p></header>",
            "<h2>Runs</h2>",
            filters(rows),
            runs_table(rows) if rows else '<p class="muted">No run in this folder yet.</p>',
            history,
            f"<footer>Rendered by pytest-aifactory {_e(__version__)} on {_e(generated)} from the "
            "runs' saved files; `aifactory index` builds it again.</footer>",
            inline_script(bundle) if found else "",
            inline_script(EMBED_SCRIPT) if found else "",
            inline_script(SCRIPT),
            "</body></html>\n",
        ]
    )


def build_index(
    folder: Path, output: Path | None = None, tolerance: float = DEFAULT_TOLERANCE
) -> Path:
    """Reads every run in `folder` and writes the dashboard (default: `folder/index.html`)."""
    path = output or folder / INDEX_NAME
    rows = read_rows(folder, base=path.parent)
    write_text_atomic(path, render_index(rows, folder, tolerance))
    return path
