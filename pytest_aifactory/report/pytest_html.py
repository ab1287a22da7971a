"""pytest-html extras: each benchmark test's SLO table, charts and a link to the run's report;
the summary names the recipe, the run and its verdict.

Registered by the plugin only when pytest-html writes a report (`--html=FILE`). pytest-html
shows extras without running scripts, so charts go in as SVG images rendered here.
"""

from __future__ import annotations

import base64
import html
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_html import extras

from pytest_aifactory.metrics.slo import SloOutcome
from pytest_aifactory.report.baseline import BaselineCheck
from pytest_aifactory.report.compare import format_value, metric_unit, metric_value
from pytest_aifactory.results import CaseResult
from pytest_aifactory.stash_keys import BASELINE_KEY, DRIVER_KEY, RESULT_KEY

REPORT_FILE = "report.html"
KEY_FIGURES: tuple[tuple[str, str], ...] = (
    ("ttft_ms.p50", "TTFT p50"),
    ("ttft_ms.p99", "TTFT p99"),
    ("tpot_ms.p50", "TPOT p50"),
    ("e2el_ms.p50", "E2E latency p50"),
    ("output_throughput", "output throughput"),
    ("request_throughput", "request throughput"),
    ("goodput", "goodput"),
    ("error_rate", "error rate"),
)
PASS_STYLE = "color:#145214;background:#e3f6e3"
FAIL_STYLE = "color:#8a1212;background:#fbe3e3"
CELL = "border:1px solid #ccc;padding:2px 8px;color:#222"


def _e(value: object) -> str:
    return html.escape(str(value))


def _td(text: object, style: str = "", right: bool = False) -> str:
    align = ";text-align:right" if right else ""
    return f"<td style='{CELL}{align};{style}'>{_e(text)}</td>"


def _th(text: str) -> str:
    return f"<th style='{CELL};background:#f4f4f4;text-align:left'>{_e(text)}</th>"


# -- the test's extras ----------------------------------------------------------------------------


def slo_table(result: CaseResult) -> str:
    """The test's objectives with value, bound, headroom and verdict (or that it has none)."""
    title = f"SLOs of {result.case.client}[{result.case.label}]"
    verdict = "PASS" if result.passed else "FAIL"
    caption = "text-align:left;font-weight:bold;color:#222"
    rows = [
        f"<table class='aifactory-slo' style='border-collapse:collapse;margin:4px 0'>"
        f"<caption style='{caption}'>{_e(title)}: {verdict}</caption>",
        "<tr>" + "".join(_th(h) for h in ("objective", "bound", "value", "margin", "")) + "</tr>",
    ]
    for outcome in result.outcomes:
        rows.append(_slo_row(outcome))
    if not result.outcomes:
        rows.append(f"<tr><td colspan='5' style='{CELL}'>no SLOs for this client</td></tr>")
    rows.append("</table>")
    return "".join(rows)


def _slo_row(outcome: SloOutcome) -> str:
    data = outcome.to_dict()
    unit = f" {data['unit']}".rstrip()
    value = (
        f"{format_value(outcome.value)}{unit}"
        if outcome.value is not None
        else f"no value ({outcome.detail})"
    )
    margin = "" if outcome.margin is None else f"{outcome.margin * 100:+.1f}%"
    style = PASS_STYLE if outcome.passed else FAIL_STYLE
    return (
        "<tr>"
        + _td(data["key"])
        + _td(f"{data['bound']} {data['limit']:g}{unit}", right=True)
        + _td(value, right=True)
        + _td(margin, right=True)
        + _td("pass" if outcome.passed else "FAIL", style)
        + "</tr>"
    )


def figures_table(result: CaseResult) -> str:
    """The level's headline numbers, and why it was cut short when it was."""
    summary = result.summary
    counts = summary.get("counts") or {}
    cells = [("requests ok/sent", f"{counts.get('completed', 0)}/{counts.get('sent', 0)}")]
    for key, label in KEY_FIGURES:
        value = metric_value(summary, key)
        if value is not None:
            cells.append((label, f"{format_value(value)} {metric_unit(key)}".rstrip()))
    head = "".join(_th(label) for label, _ in cells)
    body = "".join(_td(value, right=True) for _, value in cells)
    notes = "".join(f"<pre style='{FAIL_STYLE}'>{_e(note)}</pre>" for note in result.notes)
    return (
        "<table class='aifactory-figures' style='border-collapse:collapse;margin:4px 0'>"
        f"<tr>{head}</tr><tr>{body}</tr></table>{notes}"
    )


def chart_images(result: CaseResult, run_root: Path) -> Iterator[dict[str, Any]]:
    """The test's charts (latency distributions, errors, timeline) as SVG image extras."""
    # deferred: charts and build import altair, run_store imports pandas: slow at pytest's start
    from pytest_aifactory.report import charts
    from pytest_aifactory.report.build import load_metrics
    from pytest_aifactory.report.run_store import test_entry

    summary = _read_summary(run_root)
    drawn = charts.charts_for_test(
        summary, test_entry(result), result.records, load_metrics(run_root)
    )
    for name, chart in drawn.items():
        svg = charts.to_svg(chart)
        yield extras.svg(base64.b64encode(svg.encode("utf-8")).decode("ascii"), name=name)


def report_link(run_root: Path, html_path: Path) -> str:
    """The run's report.html as seen from the pytest-html report's folder."""
    return os.path.relpath(run_root / REPORT_FILE, html_path.parent)


def _html_path(config: pytest.Config) -> Path:
    """Where pytest-html writes (it resolves `--html` the same way)."""
    option = str(config.getoption("htmlpath"))
    return Path.cwd() / Path(os.path.expandvars(option)).expanduser()


def _read_summary(run_root: Path) -> dict[str, Any]:
    try:
        data = json.loads((run_root / "summary.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def benchmark_extras(result: CaseResult, run_root: Path, html_path: Path) -> list[dict[str, Any]]:
    """SLO table, headline figures, charts and the link to the run's full report."""
    found = [extras.html(slo_table(result) + figures_table(result))]
    try:
        found.extend(chart_images(result, run_root))
    except Exception as err:  # a chart that fails must not fail the benchmark's report
        found.append(extras.html(f"<p>charts not drawn: {_e(err)}</p>"))
    found.append(extras.url(report_link(run_root, html_path), name="run report"))
    return found


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when != "call":
        return report
    result = item.stash.get(RESULT_KEY, None)
    driver = item.config.stash.get(DRIVER_KEY, None)
    if result is None or driver is None or driver.run is None:
        return report
    added = benchmark_extras(result, driver.run.root, _html_path(item.config))
    report.extras = [*getattr(report, "extras", []), *added]
    return report


# -- the report's summary -----------------------------------------------------------------------


def summary_lines(session: pytest.Session) -> list[str]:
    """Recipe, run id, verdict and where the run is; then the comparison's outcome if any."""
    driver = session.config.stash.get(DRIVER_KEY, None)
    if driver is None or driver.run is None:
        return []
    summary = _read_summary(driver.run.root)
    verdict = str(summary.get("verdict") or "fail").upper()
    style = PASS_STYLE if verdict == "PASS" else FAIL_STYLE
    link = report_link(driver.run.root, _html_path(session.config))
    lines = [
        f"<p class='aifactory-summary'>Recipe: <b>{_e(driver.recipe.name)}</b></p>",
        f"<p class='aifactory-summary'>Run: <b>{_e(driver.run.run_id)}</b> "
        f"(<a href='{_e(link)}'>run report</a>, saved in {_e(driver.run.root)})</p>",
        f"<p class='aifactory-summary'>Verdict: <b style='{style}'>{_e(verdict)}</b> "
        f"({_e(summary.get('status') or driver.status)})</p>",
    ]
    check = session.config.stash.get(BASELINE_KEY, None)
    if check is not None:
        lines.extend(comparison_lines(check, _html_path(session.config)))
    return lines


def comparison_lines(check: BaselineCheck, html_path: Path) -> list[str]:
    """The baseline, the comparison page and each regression beyond its tolerance."""
    if check.error:
        return [f"<p class='aifactory-compare'>Comparison failed: {_e(check.error)}</p>"]
    result = check.result
    if result is None:
        return []
    if result.baseline is None:
        return [f"<p class='aifactory-compare'>{_e(result.note)}</p>"]
    page = ""
    if result.html is not None:
        href = os.path.relpath(result.html, html_path.parent)
        page = f" (<a href='{_e(href)}'>comparison</a>)"
    lines = [
        f"<p class='aifactory-compare'>Compared with: <b>{_e(result.baseline.run_id)}</b>{page}</p>"
    ]
    if result.tolerances is None:
        return lines
    if not result.found:
        spec = ", ".join(f"{k}:{v * 100:g}%" for k, v in result.tolerances.items())
        lines.append(f"<p class='aifactory-compare'>No regression beyond {_e(spec)}</p>")
    for regression in result.found:
        lines.append(
            f"<p class='aifactory-compare' style='{FAIL_STYLE}'>Regression: "
            f"{_e(regression.describe())}</p>"
        )
    return lines


def pytest_html_results_summary(
    prefix: list[str], summary: list[str], postfix: list[str], session: pytest.Session
) -> None:
    prefix.extend(summary_lines(session))
