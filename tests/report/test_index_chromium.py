"""The experiments dashboard of real runs: three benchmark sessions of two recipes against a fake
OpenAI server, each rebuilding `reports/index.html` as it ends; the page then opened in a real
headless Chromium with the network cut off, where every history chart must draw with nothing on
the console, and its filters and sorting must work.

Needs Debian's chromium at /usr/bin/chromium for the browser tests (`make test` installs it).
"""

from __future__ import annotations

import re
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from pytest_aifactory.report.index import read_rows
from pytest_aifactory.report.index_html import build_index
from tests.helpers import keep_artifact, processes_matching, run_benchmark, write_recipe
from tests.report.chromium import assert_every_chart_drawn, open_in_chromium
from tests.report.test_compare import level_test, save_run
from tests.report.test_index import at

pytestmark = pytest.mark.slow

ALPHA, BETA = "dash-alpha", "dash-beta"


def recipe_document(name: str, marker: str, strict: bool) -> dict[str, Any]:
    """A fake server as the service; `strict` adds a client whose objective cannot hold."""
    command = (
        f"{sys.executable} -m pytest_aifactory.testing.dying_server "
        "--host {host} --port {port} "
        f"--die-after-requests 1000000 --marker {marker}"
    )
    dataset = {"input_tokens": 8, "output_tokens": 4}
    clients: dict[str, Any] = {
        "chat": {
            "kind": "openai",
            "service": "svc",
            "dataset": dataset,
            "load": {"mode": "concurrency", "levels": [1, 2], "requests": 4},
        }
    }
    slo: dict[str, Any] = {}
    if strict:
        clients["strict"] = {
            "kind": "openai",
            "service": "svc",
            "dataset": dataset,
            "load": {"mode": "concurrency", "levels": [1], "requests": 4},
        }
        slo["strict"] = {"ttft_ms": {"p50": {"max": 0.001}}}
    document: dict[str, Any] = {
        "name": name,
        "services": {"svc": {"kind": "command", "command": command, "health_timeout_s": 60}},
        "clients": clients,
        "monitor": {"prometheus": False},
    }
    return {**document, "slo": slo} if slo else document


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`reports/index.html` as the third of three sessions (two of ALPHA, one of BETA) left it."""
    tmp_path = tmp_path_factory.mktemp("dashboard")
    marker = f"dashboard-{uuid.uuid4().hex[:8]}"
    alpha = write_recipe(tmp_path / "alpha.yaml", recipe_document(ALPHA, marker, strict=True))
    beta = write_recipe(tmp_path / "beta.yaml", recipe_document(BETA, marker, strict=False))
    for recipe in (alpha, beta, alpha):
        session = run_benchmark(tmp_path, recipe, timeout=180)
        assert session.returncode in (0, 1), session.output
        assert f"experiments dashboard: {tmp_path / 'reports' / 'index.html'}" in session.output
    assert processes_matching(marker) == []
    return tmp_path / "reports" / "index.html"


def test_each_session_rebuilds_the_dashboard_with_every_run(dashboard: Path) -> None:
    rows = read_rows(dashboard.parent)
    assert sorted(r.recipe for r in rows) == [ALPHA, ALPHA, BETA]
    assert all(r.verified and r.status == "complete" for r in rows), rows
    assert all(r.verdict == ("fail" if r.recipe == ALPHA else "pass") for r in rows)
    page = dashboard.read_text(encoding="utf-8")
    for row in rows:
        assert f'href="{row.run_id}/report.html"' in page
        assert (dashboard.parent / row.run_id / "report.html").is_file()
    # one history per recipe and client; the strict client's objective is marked
    charts = re.findall(r'<div class="chart" id="(history-[^"]+)"', page)
    assert sorted(charts) == [
        "history-dash-alpha-chat",
        "history-dash-alpha-strict",
        "history-dash-beta-chat",
    ]
    assert '"flag":"objective failed"' in page


@pytest.mark.requires("chromium")
def test_every_history_chart_draws_offline_without_console_errors(
    dashboard: Path, tmp_path: Path
) -> None:
    shot = assert_every_chart_drawn(dashboard, tmp_path)
    print(f"screenshot of the dashboard: {keep_artifact(shot, 'dashboard-screenshot.png')}")


FILTER_AND_SORT = f"""<script>
document.getElementById("filter-recipe").value = "{BETA}";
document.getElementById("filter-recipe").dispatchEvent(new Event("change"));
document.querySelector('th[data-key="recipe"]').click();
</script></body>"""


@pytest.mark.requires("chromium")
def test_the_recipe_filter_hides_other_recipes_rows_and_charts(
    dashboard: Path, tmp_path: Path
) -> None:
    page = tmp_path / "filtered.html"
    text = dashboard.read_text(encoding="utf-8")
    head, _, tail = text.rpartition("</body>")  # the page's own, not one in the Vega bundle
    page.write_text(head + FILTER_AND_SORT + tail, encoding="utf-8")

    dom, console, _ = open_in_chromium(page, tmp_path)

    assert console == []
    rows = re.findall(r"<tr ([^>]*data-recipe=[^>]*)>", dom)
    shown = [r for r in rows if " hidden" not in f" {r}"]
    assert len(rows) == 3
    assert len(shown) == 1
    assert f'data-recipe="{BETA}"' in shown[0]
    assert '<span id="shown">1</span>' in dom
    sections = re.findall(r'<section class="recipe-history" ([^>]*)>', dom)
    assert sorted(("hidden" in s, f'"{BETA}"' in s) for s in sections) == [
        (False, True),
        (True, False),
    ]
    assert 'aria-sort="ascending"' in dom


@pytest.mark.requires("chromium")
def test_a_regression_in_one_panel_only_draws_without_warnings(tmp_path: Path) -> None:
    """Throughput regressed, the latency panels did not: the ring layer has points to draw in
    one panel only."""
    reports = tmp_path / "reports"
    save_run(reports, "r0", [level_test("chat", 1, throughput=100.0)], started_at=at(0))
    save_run(reports, "r1", [level_test("chat", 1, throughput=50.0)], started_at=at(1))
    page = build_index(reports)
    assert '"flag":"regression"' in page.read_text(encoding="utf-8")
    assert_every_chart_drawn(page, tmp_path)
