"""pytest-html reports of a benchmark session: each test carries its SLO table, its charts as
images and a link to the run's report; the summary names the recipe, the run and its verdict.
The same session's JUnit XML, what CI servers read, carries each objective and names the broken
one.

The service is the project's streaming test server run as a `command` service (it stands in for
an LLM server: the report, not the server, is under test here).
"""

from __future__ import annotations

import html
import json
import re
import sys
from typing import Any
from xml.etree import ElementTree

import pytest

from tests.helpers import Session, run_benchmark, write_recipe

pytestmark = pytest.mark.slow  # each test runs a pytest session or real servers

NEVER = 1_000_000
"""--die-after-requests for a server that must not die."""


def recipe_document() -> dict[str, Any]:
    command = (
        f"{sys.executable} -m pytest_aifactory.testing.dying_server "
        "--host {host} --port {port} "
        f"--die-after-requests {NEVER} --marker html-report"
    )
    dataset = {"input_tokens": 8, "output_tokens": 4}
    load = {"mode": "concurrency", "levels": [2], "requests": 6}
    return {
        "name": "html-extras",
        "services": {
            "svc": {
                "kind": "command",
                "command": command,
                "health_timeout_s": 60,
            }
        },
        "clients": {
            "chat": {"kind": "openai", "service": "svc", "dataset": dataset, "load": load},
            "strict": {"kind": "openai", "service": "svc", "dataset": dataset, "load": load},
        },
        "slo": {
            "chat": {"ttft_ms": {"p99": {"max": 60000}}, "error_rate": {"max": 0.0}},
            "strict": {"ttft_ms": {"p50": {"max": 0.001}}},
        },
        "monitor": {"prometheus": False},
    }


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Session:
    tmp = tmp_path_factory.mktemp("html")
    recipe = write_recipe(tmp / "recipe.yaml", recipe_document())
    # a first run: the gate has nothing to compare with, says so and fails nothing
    gate = ("--fail-on-regression", "output_throughput:50%")
    reports = ("--html=out/report.html", "--junitxml=out/junit.xml")
    return run_benchmark(tmp, recipe, *reports, *gate, timeout=180)


@pytest.fixture(scope="module")
def page(session: Session) -> str:
    path = session.report_dir.parent / "out" / "report.html"
    assert path.is_file(), session.output
    return path.read_text()


@pytest.fixture(scope="module")
def tests(page: str) -> dict[str, Any]:
    """pytest-html's data: per test id, its reports with their extras."""
    match = re.search(r'data-jsonblob="([^"]*)"', page)
    assert match, "no data blob in the pytest-html report"
    return json.loads(html.unescape(match.group(1)))["tests"]


def extras_of(tests: dict[str, Any], name: str) -> list[dict[str, Any]]:
    (test_id,) = [t for t in tests if t.endswith(f"[{name}]")]
    return [extra for report in tests[test_id] for extra in report["extras"]]


def test_the_session_ran_with_one_slo_broken(session: Session) -> None:
    assert session.returncode == 1, session.output
    assert "1 failed, 1 passed" in session.stdout, session.output
    assert "no earlier complete run of recipe 'html-extras' in " in session.stdout
    assert "Traceback" not in session.output


def test_each_test_carries_its_slo_table(tests: dict[str, Any]) -> None:
    (table,) = [e for e in extras_of(tests, "chat-concurrency-2") if e["format_type"] == "html"]
    text = table["content"]
    assert "SLOs of chat[concurrency=2]: PASS" in text
    assert ">ttft_ms.p99<" in text
    assert ">max 60000 ms<" in text
    assert ">error_rate<" in text
    assert ">requests ok/sent<" in text
    assert ">6/6<" in text
    (failed,) = [e for e in extras_of(tests, "strict-concurrency-2") if e["format_type"] == "html"]
    assert "SLOs of strict[concurrency=2]: FAIL" in failed["content"]
    assert ">ttft_ms.p50<" in failed["content"]
    assert ">FAIL<" in failed["content"]


def test_each_test_carries_its_charts_as_images(tests: dict[str, Any], session: Session) -> None:
    images = [e for e in extras_of(tests, "chat-concurrency-2") if e["format_type"] == "image"]
    assert "latency_cdf" in {e["name"] for e in images}
    for image in images:
        assert image["mime_type"] == "image/svg+xml"
        asset = session.report_dir.parent / "out" / image["content"]
        assert asset.is_file(), image["content"]
        svg = asset.read_text()
        assert svg.lstrip().startswith("<svg"), svg[:80]
    cdf = next(e for e in images if e["name"] == "latency_cdf")
    svg = (session.report_dir.parent / "out" / cdf["content"]).read_text()
    assert "TTFT" in svg


def test_each_test_links_the_runs_report(tests: dict[str, Any], session: Session) -> None:
    (run,) = session.run_dirs()
    (link,) = [e for e in extras_of(tests, "chat-concurrency-2") if e["format_type"] == "url"]
    assert link["name"] == "run report"
    assert link["content"] == f"../reports/{run.name}/report.html"


def test_the_summary_names_recipe_run_and_verdict(page: str, session: Session) -> None:
    (run,) = session.run_dirs()
    assert "Recipe: <b>html-extras</b>" in page
    assert f"Run: <b>{run.name}</b>" in page
    assert f"<a href='../reports/{run.name}/report.html'>run report</a>" in page
    assert re.search(r"Verdict: <b style='[^']*'>FAIL</b> \(complete\)", page), page[:3000]


def test_the_summary_says_the_gate_had_no_baseline(page: str) -> None:
    assert re.search(
        r"<p class='aifactory-compare'>no earlier complete run of recipe 'html-extras' in "
        r"[^<]*: nothing to compare with</p>",
        html.unescape(page),
    )


def test_junit_xml_names_the_broken_objective_and_carries_every_one(session: Session) -> None:
    root = ElementTree.parse(session.report_dir.parent / "out" / "junit.xml").getroot()
    cases = {case.get("name"): case for case in root.iter("testcase")}
    (run,) = session.run_dirs()
    for name, case in cases.items():
        properties = {p.get("name"): p.get("value") for p in case.iter("property")}
        assert properties["aifactory.run"] == run.name, name
        assert properties["aifactory.level"] == "concurrency=2", name
    chat = cases["test_serving[chat-concurrency-2]"]
    assert chat.find("failure") is None
    properties = {p.get("name"): p.get("value") for p in chat.iter("property")}
    assert re.fullmatch(r"[\d.]+ ms \(max 60000\): pass", properties["slo.chat.ttft_ms.p99"])
    assert properties["slo.chat.error_rate"] == "0.0 ratio (max 0): pass"
    strict = cases["test_serving[strict-concurrency-2]"]
    failure = strict.find("failure")
    assert failure is not None
    assert "strict[concurrency=2] ttft_ms.p50 = " in (failure.get("message") or "")
    properties = {p.get("name"): p.get("value") for p in strict.iter("property")}
    assert properties["slo.strict.ttft_ms.p50"].endswith("(max 0.001): fail")
