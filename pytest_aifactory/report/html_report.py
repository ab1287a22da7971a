"""The run's report page: one HTML file that opens anywhere, with no network.

Clusters have no internet and reports are mailed around, so Vega, Vega-Lite and vega-embed are
inlined once and each chart travels as its Vega-Lite spec, drawn by vega-embed as SVG when the
page opens. Everything taken from a run (recipe names, notes, server errors) is escaped: a
note may quote a server's HTML error page.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_aifactory import __version__
from pytest_aifactory.atomic import write_text_atomic
from pytest_aifactory.loadgen.kinds import all_metrics, kind_metrics, metric_info
from pytest_aifactory.metrics.catalog import MetricInfo
from pytest_aifactory.metrics.intervals import interval_of
from pytest_aifactory.metrics.stats import json_safe
from pytest_aifactory.monitor.efficiency import FIGURES as EFFICIENCY_FIGURES
from pytest_aifactory.monitor.window import CROSS_CHECK_TOLERANCE
from pytest_aifactory.numbers import finite_number
from pytest_aifactory.report.headline import efficiency_headline, headline_of, headline_values
from pytest_aifactory.services.models import cache_dir

STAT_COLUMNS: tuple[str, ...] = ("mean", "p50", "p90", "p99", "p999", "max")


@dataclass(frozen=True)
class ChartView:
    """One chart as the page shows it: its spec, a unique element id, and its files."""

    name: str
    element_id: str
    title: str
    spec: Mapping[str, Any]
    files: Mapping[str, str] = field(default_factory=dict)
    """Format (`svg`, `png`) -> link relative to the page."""


# -- the JavaScript --------------------------------------------------------------------------


def _cache_dir() -> Path:
    return cache_dir() / "vega"


@functools.cache
def vega_bundle() -> str:
    """Vega, Vega-Lite and vega-embed as one script defining `vegaEmbed` (about 1 MB).

    Bundling takes seconds, so the bundle is kept in the user's cache, one file per vl-convert
    and Vega-Lite version; a cache that cannot be written only costs the time again.
    """
    # deferred: vl_convert is a large native library, loaded only to render images
    import vl_convert as vlc

    # deferred: report.charts imports altair, slow to import
    from pytest_aifactory.report.charts import vegalite_version

    version = vegalite_version()
    # the module sets __version__; its stub leaves it out
    vlc_version = vlc.__version__  # type: ignore[attr-defined]
    path = _cache_dir() / f"vega-bundle-{vlc_version}-vl{version or 'latest'}.js"
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        pass
    # no snippet: vl-convert's default one, which defines `vegaEmbed` (the function takes None;
    # its stub wrongly requires a snippet)
    bundle = vlc.javascript_bundle(vl_version=version)  # type: ignore[call-arg]
    with contextlib.suppress(OSError):  # a cache only: the page works without it
        write_text_atomic(path, bundle)
    return bundle


def inline_script(code: str) -> str:
    """A `<script>` element; `</script` inside the code would end it early, so it is broken up
    (it can only occur inside a string or a regular expression, where `<\\/` means the same)."""
    code = code.replace("</script", "<\\/script").replace("</SCRIPT", "<\\/SCRIPT")
    return f"<script>{code}</script>"


EMBED_SCRIPT = """
(function () {
  function logger(el) {
    var level = 2;
    function say(method, args) {
      console[method].apply(console, ["chart " + el.id + ":"].concat([].slice.call(args)));
    }
    var log = {
      level: function (value) {
        if (arguments.length) { level = value; return log; }
        return level;
      },
      error: function () {
        el.dataset.rendered = "error";
        say("error", arguments);
        return log;
      },
      warn: function () {
        el.dataset.warnings = String(Number(el.dataset.warnings || 0) + 1);
        say("warn", arguments);
        return log;
      },
      info: function () { return log; },
      debug: function () { return log; }
    };
    return log;
  }
  document.querySelectorAll("div.chart[data-spec]").forEach(function (el) {
    var spec;
    try {
      spec = JSON.parse(document.getElementById(el.dataset.spec).textContent);
    } catch (err) {
      el.dataset.rendered = "error";
      el.textContent = "chart spec unreadable: " + err;
      console.error("chart " + el.id + ": " + err);
      return;
    }
    // every chart carries its data: a fetch is a broken spec, and there is no network anyway
    function refuse(uri) {
      el.dataset.rendered = "error";
      console.error("chart " + el.id + ": would fetch " + uri);
      return Promise.reject(new Error("no data outside the page: " + uri));
    }
    var loader = {load: refuse, sanitize: refuse, http: refuse, file: refuse};
    var options = {
      renderer: "svg", actions: false, mode: "vega-lite", logger: logger(el), loader: loader
    };
    vegaEmbed(el, spec, options)
      .then(function (result) { return result.view.runAsync(); })
      .then(function () {
        if (el.dataset.rendered !== "error") { el.dataset.rendered = "true"; }
      })
      .catch(function (err) {
        el.dataset.rendered = "error";
        el.textContent = "chart failed: " + err;
        console.error("chart " + el.id + ": " + err);
      });
  });
})();
"""
"""Draws every chart container from its JSON spec. Vega-Lite's messages go through a logger
that names the chart and marks its container: `data-rendered` ends `true` or `error`, and
`data-warnings` counts warnings; a spec that would fetch data is an error."""


def json_for_script(data: Any) -> str:
    """JSON safe inside a `<script type="application/json">` element: `<`, `>` and `&` are
    written as escapes, so no text in the data can close the element or open a comment."""
    try:
        text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError):  # NaN, numpy numbers: made plain only when present
        text = json.dumps(json_safe(data), separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def chart_html(view: ChartView) -> str:
    """A chart's figure: the container vega-embed draws into, its spec, and file links."""
    spec_id = f"{view.element_id}-spec"
    links = " ".join(
        f'<a href="{_e(href)}">{_e(fmt.upper())}</a>' for fmt, href in sorted(view.files.items())
    )
    caption = _e(view.title) + (f' <span class="files">{links}</span>' if links else "")
    return (
        f'<figure class="chart-figure" data-chart="{_e(view.name)}">'
        f'<div class="chart" id="{_e(view.element_id)}" data-spec="{_e(spec_id)}"></div>'
        f'<script type="application/json" id="{_e(spec_id)}">{json_for_script(view.spec)}'
        "</script>"
        f"<figcaption>{caption}</figcaption></figure>"
    )


# -- formatting ------------------------------------------------------------------------------


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def fmt_number(value: Any, unit: str = "") -> str:
    """Four significant digits, thousands separated; `—` for no value."""
    number = finite_number(value)
    if number is None:
        return "—"
    if number == 0:
        text = "0"
    elif abs(number) >= 10_000:
        text = f"{number:,.0f}"
    elif abs(number) >= 1:
        text = f"{number:,.4g}" if abs(number) >= 1000 else f"{number:.4g}"
    else:
        text = f"{number:.3g}"
    return f"{text} {unit}".rstrip() if unit and unit != "ratio" else text


def fmt_percent(value: Any, signed: bool = False) -> str:
    number = finite_number(value)
    if number is None:
        return "—"
    return f"{number:+.1%}" if signed else f"{number:.1%}"


def fmt_time(value: Any) -> str:
    """An ISO timestamp as `2026-11-27 05:37:49 UTC`; anything else as given."""
    if not value:
        return "—"
    try:
        moment = dt.datetime.fromisoformat(str(value))
    except ValueError:
        return str(value)
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC)
        return moment.strftime("%Y-%m-%d %H:%M:%S UTC")
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _duration(start: Any, end: Any) -> str:
    try:
        seconds = (
            dt.datetime.fromisoformat(str(end)) - dt.datetime.fromisoformat(str(start))
        ).total_seconds()
    except (TypeError, ValueError):
        return "—"
    return f"{seconds:.1f} s"


def _badge(passed: bool | None, yes: str = "PASS", no: str = "FAIL") -> str:
    if passed is None:
        return '<span class="badge unknown">—</span>'
    return f'<span class="badge {"pass" if passed else "fail"}">{yes if passed else no}</span>'


def _unit(metric: str) -> str:
    info = metric_info(metric)
    return info.unit if info else ""


def _table(headers: Sequence[str], rows: Sequence[str], css: str) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    return (
        f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    )


def slug(text: str) -> str:
    """Lower-case letters, digits and dashes: usable as an element id and a file name."""
    out = []
    for char in text.lower():
        out.append(char if char.isascii() and char.isalnum() else "-")
    return "-".join(part for part in "".join(out).split("-") if part)[:80] or "x"


# -- sections --------------------------------------------------------------------------------


def slo_table(test: Mapping[str, Any]) -> str:
    """Objective, statistic, value, bound, margin and verdict of each SLO of one test."""
    outcomes = test.get("slo") or []
    if not outcomes:
        return '<p class="muted">No SLOs bound this client.</p>'
    rows = []
    for outcome in outcomes:
        metric = str(outcome.get("metric") or "")
        statistic = outcome.get("statistic")
        unit = str(outcome.get("unit") or _unit(metric))
        bound = outcome.get("bound")
        relation = {"max": "≤", "min": "≥"}.get(str(bound), str(bound or ""))
        value = outcome.get("value")
        estimate = outcome.get("estimate", value)
        shown = fmt_number(estimate, unit)
        if finite_number(estimate) is None and outcome.get("detail"):
            shown = f'no value <span class="detail">({_e(outcome["detail"])})</span>'
        else:
            shown = _e(shown)
        passed = bool(outcome.get("passed"))
        rows.append(
            f'<tr class="{"pass" if passed else "fail"}">'
            f"<td><code>{_e(metric)}</code></td>"
            f"<td>{_e(statistic or '—')}</td>"
            f'<td class="num">{shown}</td>'
            f'<td class="num">{_e(fmt_interval(outcome.get("interval"), unit))}</td>'
            f"<td>{_e(_judged_on(outcome))}</td>"
            f'<td class="num">{_e(relation)} {_e(fmt_number(outcome.get("limit"), unit))}</td>'
            f'<td class="num">{_e(fmt_percent(outcome.get("margin"), signed=True))}</td>'
            f'<td class="result">{_badge(passed)}</td></tr>'
        )
    sure = _confidence(test)
    headers = ("Objective", "Statistic", "Value", f"{sure} interval", "Judged on", "Bound")
    return _table((*headers, "Margin", "Result"), rows, "slo")


def _confidence(test: Mapping[str, Any]) -> str:
    """`95%`: how sure the test's intervals are."""
    value = finite_number((test.get("intervals") or {}).get("confidence"))
    return f"{value * 100:g}%" if value is not None else ""


def _judged_on(outcome: Mapping[str, Any]) -> str:
    if outcome.get("judged_on") != "interval":
        return "value"
    return "upper end" if outcome.get("bound") == "max" else "lower end"


def fmt_interval(interval: Any, unit: str = "") -> str:
    """`98.1 – 120.4 ms`; a dash without an interval."""
    if not isinstance(interval, Sequence) or isinstance(interval, str) or len(interval) != 2:
        return "—"
    low, high = (finite_number(v) for v in interval)
    if low is None or high is None:
        return "—"
    return f"{fmt_number(low)} – {fmt_number(high, unit)}"


def _messages(items: Sequence[Any], css: str, label: str) -> str:
    if not items:
        return ""
    lines = "".join(f"<li>{_e(item)}</li>" for item in items)
    return f'<div class="messages {css}"><strong>{_e(label)}</strong><ul>{lines}</ul></div>'


def cross_check_table(test: Mapping[str, Any]) -> str:
    """The server's own count beside the clients' for the same quantity; over the tolerance
    (10%) the row is flagged: one side miscounts."""
    checks = test.get("cross_checks") or []
    if not checks:
        return ""
    rows = []
    for check in checks:
        difference = finite_number(check.get("difference"))
        flagged = bool(check.get("flagged")) or (
            difference is not None and abs(difference) > CROSS_CHECK_TOLERANCE
        )
        verdict = (
            f'<span class="badge fail">more than {CROSS_CHECK_TOLERANCE:.0%} apart</span>'
            if flagged
            else ('<span class="badge pass">agree</span>' if difference is not None else "—")
        )
        rows.append(
            f'<tr class="{"fail" if flagged else ""}">'
            f"<td><code>{_e(check.get('metric'))}</code></td>"
            f"<td>{_e(check.get('service') or '—')}</td>"
            f'<td class="num">{_e(fmt_number(check.get("client")))}</td>'
            f'<td class="num">{_e(fmt_number(check.get("server")))}</td>'
            f'<td class="num">{_e(fmt_percent(difference, signed=True))}</td>'
            f"<td>{verdict}</td></tr>"
        )
    table = _table(
        ("Quantity", "Service", "Clients", "Server", "Difference", "Check"), rows, "cross-checks"
    )
    return f"<h4>Server vs client</h4>{table}"


def efficiency_table(test: Mapping[str, Any]) -> str:
    """What the test cost the loaded service's nodes per token and per request (`efficiency`:
    docs/metrics.md#efficiency), with what the figures were made of; nothing without it."""
    block = test.get("efficiency") or {}
    rows = [
        f"<tr><td>{_e(info.label)}</td>"
        f'<td class="num">{_e(fmt_number(block[info.key]))}</td><td>{_e(info.unit)}</td></tr>'
        for info in EFFICIENCY_FIGURES
        if finite_number(block.get(info.key)) is not None
    ]
    if not rows:
        return ""
    basis = [
        f"{fmt_number(block.get('window_s'))} s of load",
        f"service '{block.get('service')}' on {fmt_number(block.get('nodes'))} node(s)",
    ]
    if block.get("gpus"):
        basis.append(f"{fmt_number(block['gpus'])} GPU(s) from the {block.get('gpus_from')}")
    if block.get("energy_source"):
        basis.append(f"energy by {block['energy_source']}")
    return (
        f"<h4>Efficiency</h4>{_table(('Figure', 'Value', 'Unit'), rows, 'efficiency')}"
        f'<p class="muted">{_e("; ".join(basis))}</p>'
        f"{_messages(block.get('notes') or [], 'notes', 'Efficiency notes')}"
    )


def _level_metrics(own: Sequence[MetricInfo]) -> list[tuple[str, str]]:
    """Per-level figures with their units: the kind's in its order, then any other kind's (a
    level that moved bytes has MiB/s whatever its kind), then the level's duration."""
    ordered = {info.name: info for info in own if not info.per_request}
    for info in all_metrics().values():
        if not info.per_request:
            ordered.setdefault(info.name, info)
    units = [(name, "" if info.unit == "ratio" else info.unit) for name, info in ordered.items()]
    return [*units, ("duration_s", "s")]


def stats_table(test: Mapping[str, Any]) -> str:
    """Per-request statistics and the level's rates, as the summary holds them."""
    per_request = test.get("per_request") or {}
    metrics = kind_metrics(test.get("kind"))
    rows = []
    for metric in (info.name for info in metrics if info.per_request and info.unit == "ms"):
        stats = per_request.get(metric)
        if not isinstance(stats, Mapping) or all(v is None for v in stats.values()):
            continue
        cells = "".join(
            f'<td class="num">{_e(fmt_number(stats.get(name)))}'
            f"{_interval_note(test, metric, name)}</td>"
            for name in STAT_COLUMNS
        )
        rows.append(f"<tr><td><code>{_e(metric)}</code></td>{cells}</tr>")
    per_level = test.get("per_level") or {}
    rates = [
        f"<dt>{_e(name.replace('_', ' '))}</dt><dd>{_e(fmt_number(per_level.get(name), unit))}"
        f"{_interval_note(test, name, None, unit)}</dd>"
        for name, unit in _level_metrics(metrics)
        if name in per_level
    ]
    counts = test.get("counts") or {}
    count_items = [
        f"<dt>{_e(name)}</dt><dd>{_e(fmt_number(counts.get(name)))}</dd>"
        for name in ("sent", "completed", "failed", "good", "resends")
        if name in counts
    ]
    parts = []
    if count_items or rates:
        parts.append(f'<dl class="rates">{"".join(count_items + rates)}</dl>')
    parts.append(_intervals_line(test))
    if rows:
        parts.append(_table(("Metric (ms)", *STAT_COLUMNS), rows, "stats"))
    errors = test.get("errors") or {}
    if errors:
        error_rows = [
            f'<tr><td>{_e(kind)}</td><td class="num">{_e(fmt_number(count))}</td></tr>'
            for kind, count in errors.items()
        ]
        parts.append(_table(("Error kind", "Failed requests"), error_rows, "errors"))
    parts.append(operations_table(test))
    parts.append(models_table(test))
    parts.append(turns_table(test))
    parts.append(replicas_table(test))
    return "".join(parts)


def _interval_note(
    test: Mapping[str, Any], metric: str, statistic: str | None, unit: str = ""
) -> str:
    """A figure's interval under it, small; nothing where it has none."""
    interval = interval_of(test, metric, statistic)
    if not interval:
        return ""
    return f'<span class="interval">{_e(fmt_interval(interval, unit))}</span>'


def _intervals_line(test: Mapping[str, Any]) -> str:
    """How the intervals under the figures were found, and how many repeats there were."""
    block = test.get("intervals") or {}
    if not block.get("method"):
        return ""
    repeats = int(block.get("repeats") or 1)
    measured = f"{repeats} repeats of the level" if repeats > 1 else "one load of the level"
    return (
        f'<p class="muted intervals">Under each figure: its {_e(_confidence(test))} interval '
        f"({_e(block['method'])}; {measured}).</p>"
    )


def models_table(test: Mapping[str, Any]) -> str:
    """A mix of models' figures per model (`by_model`), read by the level's headline: TTFT
    and generated tokens per second, or an embeddings level's latency and inputs per second."""
    by_model = test.get("by_model") or {}
    rows = {str(name): figures for name, figures in by_model.items()}
    return _breakdown_table(test, "Model", rows, "models")


def replicas_table(test: Mapping[str, Any]) -> str:
    """How the requests spread over a service's servers (`by_replica`) and how each answered,
    read by the level's headline as the models' table is."""
    by_replica = test.get("by_replica") or {}
    rows = {
        f"{index}: {figures.get('address') or '?'}": figures
        for index, figures in by_replica.items()
    }
    return _breakdown_table(test, "Replica", rows, "replicas")


def _breakdown_table(
    test: Mapping[str, Any], label: str, parts: Mapping[str, Mapping[str, Any]], css: str
) -> str:
    """One row per part of a level (a model, a replica): requests, failures and the level's
    headline figures of that part alone; nothing when the level has no such parts."""
    if not parts:
        return ""
    head = headline_of(test.get("kind"), test.get("api"))
    rows = []
    for name, figures in parts.items():
        counts = figures.get("counts") or {}
        latency = figures.get(head.latency) or {}
        cells = [
            fmt_number(counts.get("sent")),
            fmt_number(counts.get("failed")),
            fmt_number(figures.get("request_throughput")),
            fmt_number(figures.get(head.throughput)),
            fmt_number(latency.get("p50")),
            fmt_number(latency.get("p99")),
        ]
        row_cells = "".join(f'<td class="num">{_e(c)}</td>' for c in cells)
        rows.append(f"<tr><td><code>{_e(name)}</code></td>{row_cells}</tr>")
    headers = (
        label,
        "Sent",
        "Failed",
        "req/s",
        head.throughput_label,
        f"{head.latency_label} p50 (ms)",
        f"{head.latency_label} p99 (ms)",
    )
    return _table(headers, rows, css)


def turns_table(test: Mapping[str, Any]) -> str:
    """Multi-turn sessions' figures per turn index (`by_turn`): how TTFT follows the history's
    growth, and how many sessions the level completed."""
    by_turn = test.get("by_turn") or {}
    if not by_turn:
        return ""
    rows = []
    for turn, figures in by_turn.items():
        ttft = figures.get("ttft_ms") or {}
        cells = [
            fmt_number(figures.get("requests")),
            fmt_number(figures.get("failed")),
            fmt_number(figures.get("input_tokens_mean")),
            fmt_number(ttft.get("p50")),
            fmt_number(ttft.get("p99")),
        ]
        row_cells = "".join(f'<td class="num">{_e(c)}</td>' for c in cells)
        rows.append(f"<tr><td>{_e(turn)}</td>{row_cells}</tr>")
    headers = ("Turn", "Sent", "Failed", "input tokens (mean)", "TTFT p50 (ms)", "TTFT p99 (ms)")
    sessions = test.get("sessions") or {}
    note = (
        f'<p class="sessions">sessions: {_e(fmt_number(sessions.get("started")))} opened, '
        f"{_e(fmt_number(sessions.get('completed')))} completed, "
        f"{_e(fmt_number(sessions.get('turns_mean')))} turns each on average</p>"
        if sessions
        else ""
    )
    return _table(headers, rows, "turns") + note


def operations_table(test: Mapping[str, Any]) -> str:
    """A mix's figures per operation (S3's PUT, GET, LIST, DELETE; a vector client's
    queries), where the kind records operations."""
    by_op = test.get("by_op") or {}
    if not by_op:
        return ""
    rows = []
    for name, figures in by_op.items():
        latency = figures.get("latency_ms") or {}
        ttfb = figures.get("ttfb_ms") or {}
        cells = [
            fmt_number(figures.get("count")),
            fmt_number(figures.get("failed")),
            fmt_number(figures.get("ops_s")),
            fmt_number(figures.get("throughput_mib_s")),
            fmt_number(latency.get("p50")),
            fmt_number(latency.get("p99")),
            fmt_number(ttfb.get("p99")),
        ]
        row_cells = "".join(f'<td class="num">{_e(c)}</td>' for c in cells)
        rows.append(f"<tr><td><code>{_e(name)}</code></td>{row_cells}</tr>")
    headers = (
        "Operation",
        "Sent",
        "Failed",
        "op/s",
        "MiB/s",
        "latency p50 (ms)",
        "latency p99 (ms)",
        "TTFB p99 (ms)",
    )
    return _table(headers, rows, "operations")


def _charts(views: Sequence[ChartView]) -> str:
    if not views:
        return ""
    return f'<div class="charts">{"".join(chart_html(v) for v in views)}</div>'


def level_section(test: Mapping[str, Any], anchor: str, views: Sequence[ChartView]) -> str:
    passed = test.get("passed")
    meta = " · ".join(
        part
        for part in (
            f"level {_e(test.get('level_label') or test.get('level'))}",
            f"{_e(test.get('kind'))} client" if test.get("kind") else "",
            f"{_e(fmt_time(test.get('started_at')))} → {_e(fmt_time(test.get('ended_at')))}",
            _e(_duration(test.get("started_at"), test.get("ended_at"))),
        )
        if part
    )
    return (
        f'<section class="test" id="{_e(anchor)}" data-test-id="{_e(test.get("test_id"))}">'
        f"<h3>{_e(test.get('name') or test.get('test_id'))} {_badge(passed)}</h3>"
        f'<p class="meta">{meta}</p>'
        f"<h4>Service-level objectives</h4>{slo_table(test)}"
        f"{_messages(test.get('notes') or [], 'notes', 'Notes')}"
        f"{_messages(test.get('warnings') or [], 'warnings', 'Warnings')}"
        f"{cross_check_table(test)}"
        f"{efficiency_table(test)}"
        f'<details class="stats"><summary>Statistics</summary>{stats_table(test)}</details>'
        f"{_charts(views)}</section>"
    )


def _sweep_level(over: str, step: Mapping[str, Any] | None, anchors: Mapping[str, str]) -> str:
    if not step:
        return "—"
    anchor = anchors.get(str(step.get("test_id")), "")
    text = f"{_e(over)}={_e(fmt_number(step.get('level')))}"
    return f'<a href="#{_e(anchor)}">{text}</a>' if anchor else text


def capacity_section(summary: Mapping[str, Any], anchors: Mapping[str, str]) -> str:
    """Each capacity search's result and its evidence: the level that held, the one above it
    that broke (and why), and every level measured on the way."""
    sweeps = summary.get("sweeps") or []
    if not sweeps:
        return ""
    rows = []
    for sweep in sweeps:
        over = str(sweep.get("over") or "")
        capacity = sweep.get("capacity")

        failed = sweep.get("failed_at")
        if capacity is None:
            shown = "none: the lowest level broke an SLO"
        elif sweep.get("reached_max"):
            shown = f"≥ {_e(fmt_number(capacity))} (every level up to the sweep's max held)"
        else:
            shown = _e(fmt_number(capacity))
            held = sweep.get("passed_at") or {}
            if held.get("confirmed"):
                shown += (
                    f'<span class="interval">held over {_e(held.get("repeats"))} loads on its '
                    "intervals</span>"
                )
        steps = ", ".join(
            f"{fmt_number(s.get('level'))} {'✓' if s.get('passed') else '✗'}"
            + (f" ({s['repeats']} loads)" if int(s.get("repeats") or 1) > 1 else "")
            for s in sweep.get("steps") or []
        )
        ok = capacity is not None and not sweep.get("below_min_capacity")
        rows.append(
            f'<tr class="{"pass" if ok else "fail"}"><td>{_e(sweep.get("client"))}</td>'
            f'<td>{_e(over)}</td><td class="num">{shown}</td>'
            f"<td>{_sweep_level(over, sweep.get('passed_at'), anchors)}</td>"
            f"<td>{_sweep_level(over, failed, anchors)}</td>"
            f"<td>{_e((failed or {}).get('breaches') or '')}</td><td>{_e(steps)}</td></tr>"
        )
    headers = ("Client", "Over", "Capacity", "Held", "Broke", "Why it broke", "Levels measured")
    return "<h2>Capacity</h2>" + _table(headers, rows, "capacity")


def overview_table(tests: Sequence[Mapping[str, Any]], anchors: Mapping[str, str]) -> str:
    rows = []
    # an Efficiency column only where some test has a figure (a monitored run)
    efficient = {id(test): efficiency_headline(test) for test in tests}
    with_efficiency = any(efficient.values())
    for test in tests:
        figure = efficient[id(test)]
        extra = ""
        if with_efficiency:
            shown = f"{fmt_number(figure[0])} {figure[1]}" if figure else "—"
            extra = f'<td class="num">{_e(shown)}</td>'
        counts = test.get("counts") or {}
        head = headline_of(test.get("kind"), test.get("api"))
        values = headline_values(test)
        anchor = anchors.get(str(test.get("test_id")), "")
        rows.append(
            f'<tr class="{"pass" if test.get("passed") else "fail"}">'
            f'<td><a href="#{_e(anchor)}">{_e(test.get("name") or test.get("test_id"))}</a></td>'
            f"<td>{_e(test.get('client'))}</td><td>{_e(test.get('level_label'))}</td>"
            f"<td>{_badge(test.get('passed'))}</td>"
            f'<td class="num">{_e(fmt_number(counts.get("sent")))}</td>'
            f'<td class="num">{_e(fmt_number(counts.get("failed")))}</td>'
            f'<td class="num">{_e(fmt_number(values["throughput"]))} '
            f"{_e(head.throughput_label)}</td>"
            f'<td class="num">{_e(fmt_number(values["latency_p99"]))} '
            f"<small>{_e(head.latency_label)}</small></td>{extra}</tr>"
        )
    headers = ("Test", "Client", "Level", "Result", "Sent", "Failed", "Throughput")
    last = ("Latency p99 (ms)", "Efficiency") if with_efficiency else ("Latency p99 (ms)",)
    return _table((*headers, *last), rows, "overview")


def _facts(summary: Mapping[str, Any]) -> str:
    recipe = summary.get("recipe") or {}
    environment = summary.get("environment") or {}
    monitoring = summary.get("monitoring") or {}
    items = [
        ("Run", summary.get("run_id")),
        ("Status", summary.get("status")),
        ("Started", fmt_time(summary.get("started_at"))),
        ("Written", fmt_time(summary.get("written_at"))),
        ("Recipe file", recipe.get("path")),
        ("Host", environment.get("hostname")),
        ("Monitoring", monitoring.get("mode")),
        ("Version", summary.get("aifactory_version")),
    ]
    cells = "".join(
        f"<dt>{_e(k)}</dt><dd>{_e(v if v not in (None, '') else '—')}</dd>" for k, v in items
    )
    return f'<dl class="facts">{cells}</dl>'


def services_table(summary: Mapping[str, Any]) -> str:
    services = summary.get("services") or {}
    if not services:
        return ""
    rows = []
    for name, info in services.items():
        info = info if isinstance(info, Mapping) else {}
        rows.append(
            f"<tr><td>{_e(name)}</td><td>{_e(info.get('kind'))}</td>"
            f"<td>{_e(info.get('url') or '—')}</td><td>{_e(info.get('node') or '—')}</td>"
            f'<td class="num">{_e(fmt_number(info.get("health_wait_s"), "s"))}</td></tr>'
        )
    return "<h2>Services</h2>" + _table(
        ("Service", "Kind", "URL", "Node", "Health wait"), rows, "services"
    )


def monitoring_table(summary: Mapping[str, Any]) -> str:
    """Which monitoring programs ran, from where and on which nodes, and why the others did
    not: a report without node or server series says here why."""
    components = (summary.get("monitoring") or {}).get("components") or {}
    if not isinstance(components, Mapping) or not components:
        return ""
    rows = []
    for name, info in components.items():
        info = info if isinstance(info, Mapping) else {}
        ran = "ran" if info.get("ran") else "did not run"
        rows.append(
            f"<tr><td>{_e(str(name).replace('_', ' '))}</td><td>{_e(ran)}</td>"
            f"<td>{_e(info.get('source') or '—')}</td>"
            f"<td>{_e(', '.join(info.get('nodes') or []) or '—')}</td>"
            f"<td>{_e(info.get('why_not') or '')}</td></tr>"
        )
    return "<h2>Monitoring</h2>" + _table(
        ("Program", "Outcome", "From", "Nodes", "Where not, why"), rows, "monitoring"
    )


def _details(summary: Mapping[str, Any]) -> str:
    recipe = summary.get("recipe") or {}
    parts = []
    if recipe.get("document") is not None:
        text = json.dumps(json_safe(recipe["document"]), indent=2)
        parts.append(f"<details><summary>Recipe</summary><pre>{_e(text)}</pre></details>")
    if summary.get("environment"):
        text = json.dumps(json_safe(summary["environment"]), indent=2)
        parts.append(f"<details><summary>Environment</summary><pre>{_e(text)}</pre></details>")
    return "".join(parts)


STYLE = """
td.better { background: #e3f6e3; color: #145214; }
td.worse { background: #fbe3e3; color: #8a1212; }
:root { --pass: #1a7f37; --pass-bg: #dafbe1; --fail: #cf222e; --fail-bg: #ffebe9;
        --warn: #9a6700; --warn-bg: #fff8c5; --muted: #57606a; --line: #d0d7de; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328;
       margin: 0 auto; padding: 24px; max-width: 1500px; }
h1 { margin: 0 0 4px; font-size: 26px; }
h2 { margin-top: 36px; border-bottom: 2px solid var(--line); }
h3 { margin: 28px 0 4px; } h4 { margin: 16px 0 6px; }
.description, .muted, .meta { color: var(--muted); margin: 4px 0; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px;
         font-weight: 600; vertical-align: middle; }
.badge.pass { color: var(--pass); background: var(--pass-bg); }
.badge.fail { color: var(--fail); background: var(--fail-bg); }
.badge.unknown { color: var(--muted); background: #eaeef2; }
.verdict { font-size: 16px; padding: 3px 14px; margin-left: 8px; }
dl.facts, dl.rates { display: grid; grid-template-columns: max-content auto max-content auto;
                     gap: 2px 14px; margin: 12px 0; }
dl.rates { grid-template-columns: repeat(4, max-content auto); }
dt { color: var(--muted); } dd { margin: 0; font-variant-numeric: tabular-nums; }
table { border-collapse: collapse; margin: 6px 0 10px; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 10px; text-align: left; }
th { background: #f6f8fa; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.fail td { background: var(--fail-bg); } tr.pass td.result { background: var(--pass-bg); }
.messages { border-left: 4px solid var(--line); padding: 4px 12px; margin: 10px 0; }
.messages ul { margin: 4px 0; padding-left: 18px; }
.messages.notes { border-color: #0969da; background: #ddf4ff; }
.messages.warnings, .messages.problems { border-color: var(--warn); background: var(--warn-bg); }
.detail { color: var(--muted); font-size: 12px; }
.interval { display: block; color: var(--muted); font-size: 11px; white-space: nowrap; }
.charts { display: flex; flex-wrap: wrap; gap: 18px; margin-top: 12px; }
figure.chart-figure { margin: 0; padding: 8px; border: 1px solid var(--line); border-radius: 6px;
                      overflow-x: auto; max-width: 100%; }
figcaption { color: var(--muted); font-size: 12px; margin-top: 4px; }
figcaption .files a { margin-left: 6px; }
pre { background: #f6f8fa; padding: 10px; overflow-x: auto; font-size: 12px; }
footer { margin-top: 40px; color: var(--muted); font-size: 12px; }
"""


def render_report(
    summary: Mapping[str, Any],
    client_charts: Mapping[str, Sequence[ChartView]],
    test_charts: Mapping[str, Sequence[ChartView]],
    test_anchors: Mapping[str, str],
    client_anchors: Mapping[str, str],
    problems: Sequence[str] = (),
    script: str | None = None,
    previous: str = "",
) -> str:
    """The whole page. `test_anchors`/`client_anchors`: element id of each test (by test id)
    and client section; `problems`: what could not be read from the run; `script`: the Vega
    bundle (by default `vega_bundle()`); `previous`: the section comparing the run with the
    previous one."""
    recipe = summary.get("recipe") or {}
    name = str(recipe.get("name") or summary.get("run_id") or "run")
    tests = list(summary.get("tests") or [])
    verdict = summary.get("verdict")
    verdict_badge = (
        f'<span class="badge verdict {"pass" if verdict == "pass" else "fail"}">'
        f"{_e(str(verdict or 'no verdict').upper())}</span>"
    )
    monitoring = summary.get("monitoring") or {}
    monitor_notes = [*(monitoring.get("warnings") or [])]
    if monitoring.get("note"):
        monitor_notes.insert(0, monitoring["note"])

    clients = list(dict.fromkeys(str(t.get("client") or "") for t in tests))
    sections = []
    for client in clients:
        client_tests = [t for t in tests if str(t.get("client") or "") == client]
        client_tests.sort(
            key=lambda t: (finite_number(t.get("level")) or 0.0, str(t.get("started_at")))
        )
        body = "".join(
            level_section(
                t, test_anchors[str(t.get("test_id"))], test_charts.get(str(t.get("test_id")), ())
            )
            for t in client_tests
        )
        sections.append(
            f'<section class="client" id="{_e(client_anchors[client])}">'
            f"<h2>Client {_e(client)}</h2>{_charts(client_charts.get(client, ()))}{body}</section>"
        )
    if not tests:
        sections.append('<p class="muted">This run recorded no test.</p>')

    bundle = script if script is not None else vega_bundle()
    generated = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return "".join(
        [
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{_e(name)} · {_e(summary.get('run_id'))}</title>",
            f"<style>{STYLE}</style></head><body>",
            f"<header><h1>{_e(name)} {verdict_badge}</h1>",
            f'<p class="description">{_e(recipe.get("description"))}</p>'
            if recipe.get("description")
            else "",
            _facts(summary),
            "</header>",
            _messages(problems, "problems", "Not shown"),
            _messages(monitor_notes, "warnings", "Monitoring"),
            capacity_section(summary, test_anchors),
            "<h2>Tests</h2>" + overview_table(tests, test_anchors) if tests else "",
            previous,
            services_table(summary),
            monitoring_table(summary),
            *sections,
            _details(summary),
            f"<footer>Rendered by pytest-aifactory {_e(__version__)} on {_e(generated)} from the "
            "run's saved files.</footer>",
            inline_script(bundle),
            inline_script(EMBED_SCRIPT),
            "</body></html>\n",
        ]
    )
