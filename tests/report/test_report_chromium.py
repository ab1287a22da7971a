"""report.html opened in a real headless Chromium with the network cut off: every chart draws
from the inlined Vega bundle, nothing logs to the console, and a screenshot is kept.

Needs Debian's chromium at /usr/bin/chromium (`bash scripts/install-browser.sh` as root; `make
test` installs it). Only a missing binary skips: a browser that is there and fails, fails.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pytest_aifactory.report.build import build_report
from tests.helpers import keep_artifact
from tests.report.chromium import assert_every_chart_drawn, census, open_in_chromium
from tests.report.test_report_build import chart_ids, rich_run

pytestmark = pytest.mark.requires("chromium")


@pytest.fixture(scope="module")
def report_page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-client run with a failing level, errors, notes and monitoring samples, built."""
    return build_report(rich_run(tmp_path_factory.mktemp("chromium") / "run"))


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
