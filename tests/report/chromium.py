"""report.html in a real headless Chromium with the network cut off: the page's DOM after its
scripts ran, its console, a screenshot, and the check that every chart drew. Shared by the
report's own tests and by the end-to-end runs whose reports are opened the same way."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from tests.report.test_report_build import PNG_SIGNATURE, chart_ids

CHROMIUM = Path("/usr/bin/chromium")

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
