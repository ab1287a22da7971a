"""report.html opened in a real headless Chromium with the network cut off: every chart draws
from the inlined Vega bundle, nothing logs to the console, and a screenshot is kept.

Needs Debian's chromium at /usr/bin/chromium (`bash scripts/install-browser.sh` as root; `make
test` installs it). Only a missing binary skips: a browser that is there and fails, fails.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from pytest_aifactory.report.build import build_report
from tests.helpers import keep_artifact
from tests.report.test_report_build import PNG_SIGNATURE, chart_ids, rich_run

CHROMIUM = Path("/usr/bin/chromium")

pytestmark = pytest.mark.requires("chromium")

CONSOLE = re.compile(r":CONSOLE(?::|\()\d+\)?\]\s*(.*)|(Uncaught .*)")


VOID_ELEMENTS = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}
)


class ChartCensus(HTMLParser):
    """Per chart container (`div.chart`): its `data-rendered` state, the SVG elements inside it
    and the Vega mark groups those hold."""

    def __init__(self) -> None:
        super().__init__()
        self.charts: dict[str, dict[str, Any]] = {}
        self._current: str | None = None
        self._depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        classes = (attributes.get("class") or "").split()
        if self._current is None:
            if tag == "div" and "chart" in classes and attributes.get("id"):
                self._current = str(attributes["id"])
                self._depth = 1
                state = {
                    "rendered": attributes.get("data-rendered"),
                    "warnings": int(attributes.get("data-warnings") or 0),
                    "svg": 0,
                    "marks": 0,
                }
                self.charts[self._current] = state
            return
        chart = self.charts[self._current]
        chart["svg"] += tag == "svg"
        chart["marks"] += tag == "g" and any(c.startswith("mark-") for c in classes)
        if tag not in VOID_ELEMENTS:
            self._depth += 1

    def handle_endtag(self, tag: str) -> None:
        if self._current is None or tag in VOID_ELEMENTS:
            return
        self._depth -= 1
        if self._depth == 0:
            self._current = None


def open_in_chromium(page: Path, workdir: Path) -> tuple[str, list[str], Path]:
    """The page's DOM after its scripts ran, its console lines, and a screenshot of it."""
    shot = workdir / "report-screenshot.png"
    argv = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={workdir / 'profile'}",
        # no network: any fetch the page tried would fail and show in the console
        "--proxy-server=127.0.0.1:9",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=20000",
        "--window-size=1400,5200",
        "--hide-scrollbars",
        f"--screenshot={shot}",
        "--dump-dom",
        page.as_uri(),
    ]
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = process.communicate(timeout=180)
    finally:
        # the browser's helpers (zygote, renderer, GPU) share its process group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == 0, f"chromium exited {process.returncode}:\n{err[-3000:]}"
    console = [m.group(1) or m.group(2) for m in CONSOLE.finditer(err)]
    return out, console, shot


def census(dom: str) -> dict[str, dict[str, Any]]:
    parser = ChartCensus()
    parser.feed(dom)
    return parser.charts


@pytest.fixture(scope="module")
def report_page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-client run with a failing level, errors, notes and monitoring samples, built."""
    return build_report(rich_run(tmp_path_factory.mktemp("chromium") / "run"))


def assert_every_chart_drawn(page: Path, workdir: Path) -> Path:
    """Open the page offline: no console output, every chart container drawn with SVG marks;
    returns the screenshot."""
    expected = chart_ids(page.read_text(encoding="utf-8"))
    dom, console, shot = open_in_chromium(page, workdir)
    assert console == [], f"console output: {console}"
    charts = census(dom)
    assert sorted(charts) == sorted(expected)
    not_drawn = {
        name: state
        for name, state in charts.items()
        if state["rendered"] != "true"
        or state["warnings"]
        or state["svg"] < 1
        or state["marks"] < 1
    }
    assert not_drawn == {}, f"charts not drawn: {not_drawn}"
    assert shot.read_bytes()[:8] == PNG_SIGNATURE
    assert shot.stat().st_size > 20_000  # a blank page compresses to far less
    return shot


def test_every_chart_renders_offline_without_console_errors(
    report_page: Path, tmp_path: Path
) -> None:
    assert len(chart_ids(report_page.read_text(encoding="utf-8"))) >= 11
    shot = assert_every_chart_drawn(report_page, tmp_path)
    print(f"screenshot of the report: {keep_artifact(shot, 'report-screenshot.png')}")


def test_broken_charts_are_caught(report_page: Path, tmp_path: Path) -> None:
    """The check above can fail: a spec Vega-Lite rejects, or one that would fetch its data, ends
    in `error`, named in the console; the other charts still draw."""
    text = report_page.read_text(encoding="utf-8")
    replacements = {
        "chart-client-chat-goodput": '{"mark": "no-such-mark", "data": {"values": [{"a": 1}]}}',
        "chart-client-chat-throughput_latency": (
            '{"mark": "bar", "encoding": {"x": {"field": "a", "type": "quantitative"}},'
            ' "data": {"url": "http://example.invalid/data.json"}}'
        ),
    }
    for target, spec in replacements.items():
        text, count = re.subn(
            rf'(<script type="application/json" id="{target}-spec">)(.*?)(</script>)',
            lambda m, spec=spec: m.group(1) + spec + m.group(3),
            text,
            flags=re.S,
        )
        assert count == 1
    page = tmp_path / "broken.html"
    page.write_text(text, encoding="utf-8")

    dom, console, _ = open_in_chromium(page, tmp_path)
    charts = census(dom)
    invalid, offline = replacements
    assert charts[invalid]["rendered"] == "error"
    assert charts[offline]["rendered"] == "error"
    assert any(invalid in line for line in console)
    assert any(f"{offline}: would fetch http://example.invalid" in line for line in console)
    others = [name for name in charts if name not in replacements]
    assert len(others) >= 9
    assert all(charts[name]["rendered"] == "true" for name in others)
    assert all(charts[name]["warnings"] == 0 for name in others)
