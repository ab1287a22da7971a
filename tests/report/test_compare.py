"""Comparing saved runs: alignment, directions, tolerances, the table, the page and the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pytest_aifactory.cli import main
from pytest_aifactory.report.build import build_report
from pytest_aifactory.report.charts import CDF_POINTS
from pytest_aifactory.report.compare import (
    CompareError,
    compare_runs,
    format_comparison,
    load_run,
    parse_metrics,
    parse_tolerances,
    previous_run,
    regressions,
    unchecked_metrics,
)
from pytest_aifactory.report.compare_html import write_comparison_html
from pytest_aifactory.report.manifest import write_manifest
from tests.helpers import run_benchmark, write_recipe


def level_test(
    client: str,
    level: int,
    ttft_p99: float | None = 100.0,
    throughput: float = 100.0,
    error_rate: float = 0.0,
) -> dict[str, Any]:
    return {
        "test_id": f"bench.py::test_serving[{client}-concurrency-{level}]",
        "name": f"test_serving[{client}-concurrency-{level}]",
        "client": client,
        "kind": "openai",
        "mode": "concurrency",
        "level": float(level),
        "level_label": f"concurrency={level}",
        "passed": True,
        "per_request": {
            "ttft_ms": {"p50": 50.0, "p99": ttft_p99},
            "tpot_ms": {"p50": 10.0, "p99": 20.0},
        },
        "per_level": {
            "output_throughput": throughput,
            "request_throughput": throughput / 10,
            "error_rate": error_rate,
            "achieved_rate": None,
        },
    }


def save_run(
    folder: Path,
    run_id: str,
    tests: list[dict[str, Any]],
    recipe: str = "demo",
    started_at: str | None = None,
    status: str = "complete",
) -> Path:
    root = folder / run_id
    folder.mkdir(parents=True, exist_ok=True)
    root.mkdir(mode=0o700)
    summary = {
        "format": 1,
        "run_id": run_id,
        "recipe": {"name": recipe},
        "status": status,
        "verdict": "pass",
        "started_at": started_at or f"2026-01-01T00:{len(list(folder.iterdir())):02d}:00+00:00",
        "tests": tests,
    }
    (root / "summary.json").write_text(json.dumps(summary))
    write_manifest(root)  # as a session signs the runs it saves
    return root


def save_records(root: Path, client: str, label: str, ttft: np.ndarray) -> None:
    pd.DataFrame(
        {
            "client": client,
            "level_label": label,
            "phase": "measure",
            "ttft_ms": ttft,
            "error": "",
        }
    ).to_parquet(root / "records.parquet")
    write_manifest(root)


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    """A baseline and a run with lower throughput and lower (better) TTFT p99."""
    a = save_run(tmp_path, "run-a", [level_test("chat", 1), level_test("chat", 4)])
    b = save_run(
        tmp_path,
        "run-b",
        [level_test("chat", 1, ttft_p99=80.0, throughput=90.0), level_test("chat", 4)],
    )
    return a, b


def cell(comparison: Any, test: str, metric: str, run: int = 1) -> Any:
    (row,) = [r for r in comparison.rows if r.test == test and r.metric == metric]
    return row.cells[run]


def test_changes_follow_each_metrics_direction(pair: tuple[Path, Path]) -> None:
    comparison = compare_runs([load_run(p) for p in pair])
    throughput = cell(comparison, "chat[concurrency=1]", "output_throughput")
    assert throughput.value == 90.0
    assert throughput.change == pytest.approx(-10.0)
    assert throughput.verdict == "worse"  # higher is better
    ttft = cell(comparison, "chat[concurrency=1]", "ttft_ms.p99")
    assert ttft.change == pytest.approx(-20.0)
    assert ttft.verdict == "better"  # lower is better
    assert cell(comparison, "chat[concurrency=4]", "ttft_ms.p99").verdict == "same"
    assert cell(comparison, "chat[concurrency=1]", "ttft_ms.p99", run=0).verdict is None
    # default metrics: latencies' p50/p99 and per-level figures with a value, workload left out
    assert comparison.metrics == (
        "ttft_ms.p50",
        "ttft_ms.p99",
        "tpot_ms.p50",
        "tpot_ms.p99",
        "output_throughput",
        "request_throughput",
        "error_rate",
    )


def test_tests_are_matched_by_client_and_level(tmp_path: Path) -> None:
    a = save_run(tmp_path, "a", [level_test("chat", 1), level_test("chat", 8)])
    b = save_run(tmp_path, "b", [level_test("chat", 8, throughput=50.0), level_test("chat", 2)])
    comparison = compare_runs([load_run(a), load_run(b)], ["output_throughput"])
    assert [r.test for r in comparison.rows] == [
        "chat[concurrency=1]",
        "chat[concurrency=8]",
        "chat[concurrency=2]",
    ]
    assert cell(comparison, "chat[concurrency=8]", "output_throughput").change == -50.0
    assert "chat[concurrency=1]: not in b" in comparison.missing
    assert "chat[concurrency=2]: not in a" in comparison.missing
    # a level only one run has is not a regression
    found = regressions(comparison, {"output_throughput": 0.05})
    assert [(r.test, r.metric) for r in found] == [("chat[concurrency=8]", "output_throughput")]


@pytest.mark.parametrize(
    ("spec", "base", "value", "regressed"),
    [
        ("output_throughput:5%", 100.0, 96.0, False),
        ("output_throughput:5%", 100.0, 94.0, True),
        ("output_throughput:5%", 100.0, 300.0, False),
        ("ttft_ms.p99:10%", 100.0, 109.0, False),
        ("ttft_ms.p99:10%", 100.0, 111.0, True),
        ("ttft_ms.p99:10%", 100.0, 10.0, False),
        ("ttft_ms.p99:10%", 100.0, None, True),
        ("error_rate:0%", 0.0, 0.1, True),
        ("error_rate:0%", 0.0, 0.0, False),
    ],
)
def test_a_regression_is_worse_than_its_tolerance_in_its_own_direction(
    tmp_path: Path, spec: str, base: float, value: float | None, regressed: bool
) -> None:
    metric = spec.split(":")[0]

    def with_value(v: float | None) -> dict[str, Any]:
        test = level_test("chat", 1)
        if metric == "ttft_ms.p99":
            test["per_request"]["ttft_ms"]["p99"] = v
        else:
            test["per_level"][metric] = v
        return test

    a = save_run(tmp_path, "a", [with_value(base)])
    b = save_run(tmp_path, "b", [with_value(value)])
    comparison = compare_runs([load_run(a), load_run(b)])
    found = regressions(comparison, parse_tolerances(spec))
    assert bool(found) is regressed
    if regressed:
        (regression,) = found
        assert (regression.metric, regression.baseline, regression.value) == (metric, base, value)
        assert regression.run_id == "b"
        assert regression.baseline_run_id == "a"
        text = regression.describe()
        assert text.startswith(f"chat[concurrency=1] {metric}: ")
        assert "tolerance" in text


def test_tolerances_parse() -> None:
    assert parse_tolerances("ttft_ms.p99:10%, output_throughput:5%,error_rate:0.5%") == {
        "ttft_ms.p99": pytest.approx(0.10),
        "output_throughput": pytest.approx(0.05),
        "error_rate": pytest.approx(0.005),
    }


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("output_throughput:5", "tolerance 'output_throughput:5': expected METRIC:PERCENT%"),
        ("output_throughput", "tolerance 'output_throughput': expected METRIC:PERCENT%"),
        ("ttft_ms.p99:-5%", "tolerance 'ttft_ms.p99:-5%': expected METRIC:PERCENT%"),
        ("speed:5%", "unknown metric 'speed'; known: ttft_ms.STAT"),
        ("ttft_ms:5%", "'ttft_ms': ttft_ms needs a statistic"),
        ("ttft_ms.p42:5%", "'ttft_ms.p42': ttft_ms has no statistic 'p42'"),
        ("output_throughput.p99:5%", "output_throughput is one value per level"),
        ("goodput:1%,goodput:2%", "tolerance 'goodput:2%': goodput is given twice"),
        ("", "empty tolerance spec"),
    ],
)
def test_bad_tolerances_say_which_part_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(CompareError) as err:
        parse_tolerances(spec)
    assert message in str(err.value)


def test_unknown_metric_error_lists_known_names() -> None:
    with pytest.raises(CompareError) as err:
        parse_metrics("ttft_ms.p99,nope")
    text = str(err.value)
    for name in ("ttft_ms.STAT", "output_throughput", "goodput", "error_rate", "p999"):
        assert name in text


def test_the_table_shows_values_changes_and_the_runs(pair: tuple[Path, Path]) -> None:
    comparison = compare_runs([load_run(p) for p in pair], ["ttft_ms.p99", "output_throughput"])
    text = format_comparison(comparison)
    lines = text.splitlines()
    assert re.match(r"^A \(baseline\)\s+run-a\s+demo\s+complete\s+pass$", lines[1]), text
    assert re.match(r"^B\s+run-b\s+demo\s+complete\s+pass$", lines[2]), text
    header = next(line for line in lines if line.startswith("TEST"))
    assert header.split() == ["TEST", "METRIC", "UNIT", "A", "B", "B", "vs", "A"]
    row = next(ln for ln in lines if ln.startswith("chat[concurrency=1]") and "throughput" in ln)
    assert row.split() == [
        "chat[concurrency=1]",
        "output_throughput",
        "tok/s",
        "100.0",
        "90.00",
        "-10.0%",
        "worse",
    ]
    row = next(ln for ln in lines if ln.startswith("chat[concurrency=1]") and "ttft" in ln)
    assert row.split()[-2:] == ["-20.0%", "better"]


def test_three_runs_each_against_the_first(pair: tuple[Path, Path], tmp_path: Path) -> None:
    third = save_run(tmp_path, "run-c", [level_test("chat", 1, throughput=120.0)])
    comparison = compare_runs([load_run(p) for p in (*pair, third)], ["output_throughput"])
    cells = cell(comparison, "chat[concurrency=1]", "output_throughput", run=2)
    assert (cells.value, cells.verdict) == (120.0, "better")
    assert cells.change == pytest.approx(20.0)
    assert "chat[concurrency=4]: not in run-c" in comparison.missing
    header = next(ln for ln in format_comparison(comparison).splitlines() if ln.startswith("TEST"))
    assert header.split() == [
        "TEST",
        "METRIC",
        "UNIT",
        "A",
        "B",
        "B",
        "vs",
        "A",
        "C",
        "C",
        "vs",
        "A",
    ]
    assert [r.run_id for r in regressions(comparison, {"output_throughput": 0.05})] == ["run-b"]


def test_unchecked_tolerances_are_named(pair: tuple[Path, Path]) -> None:
    comparison = compare_runs([load_run(p) for p in pair])
    assert unchecked_metrics(comparison, {"qps": 0.1, "output_throughput": 0.1}) == ["qps"]


def test_previous_run_is_the_latest_earlier_complete_run_of_the_recipe(tmp_path: Path) -> None:
    save_run(tmp_path, "old", [level_test("chat", 1)], started_at="2026-01-01T00:00:00+00:00")
    save_run(tmp_path, "mid", [level_test("chat", 1)], started_at="2026-01-01T01:00:00+00:00")
    save_run(
        tmp_path,
        "other-recipe",
        [level_test("chat", 1)],
        recipe="other",
        started_at="2026-01-01T02:00:00+00:00",
    )
    save_run(
        tmp_path,
        "broken",
        [level_test("chat", 1)],
        status="interrupted",
        started_at="2026-01-01T03:00:00+00:00",
    )
    now = save_run(tmp_path, "now", [level_test("chat", 1)], started_at="2026-01-01T04:00:00+00:00")
    later = save_run(tmp_path, "z", [level_test("chat", 1)], started_at="2026-01-01T05:00:00+00:00")
    found = previous_run(load_run(now))
    assert found is not None
    assert found.run_id == "mid"
    assert previous_run(load_run(tmp_path / "old")) is None
    assert previous_run(load_run(later)).run_id == "now"  # type: ignore[union-attr]


def test_an_altered_previous_run_gives_way_to_the_one_before(tmp_path: Path) -> None:
    save_run(tmp_path, "old", [level_test("chat", 1)], started_at="2026-01-01T00:00:00+00:00")
    mid = save_run(tmp_path, "mid", [level_test("chat", 1)], started_at="2026-01-01T01:00:00+00:00")
    now = save_run(tmp_path, "now", [level_test("chat", 1)], started_at="2026-01-01T02:00:00+00:00")
    for root in (tmp_path / "old", mid):
        write_manifest(root)
    assert previous_run(load_run(now)).run_id == "mid"  # type: ignore[union-attr]
    summary = json.loads((mid / "summary.json").read_text())
    summary["tests"][0]["per_level"]["output_throughput"] = 1e9  # edited by hand
    (mid / "summary.json").write_text(json.dumps(summary))
    assert previous_run(load_run(now)).run_id == "old"  # type: ignore[union-attr]


def test_the_report_compares_the_run_with_the_previous_one(tmp_path: Path) -> None:
    first = save_run(tmp_path, "run-a", [level_test("chat", 1), level_test("chat", 4)])
    second = save_run(
        tmp_path, "run-b", [level_test("chat", 1, ttft_p99=80.0, throughput=90.0)], recipe="demo"
    )
    page = build_report(second).read_text(encoding="utf-8")
    start = page.index('<section id="previous-run">')
    section = page[start : page.index("</section>", start)]
    assert "<a href='../run-a/report.html'>run-a</a>" in section
    assert "<td class='num worse'>-10.0% worse</td>" in section  # output throughput fell
    assert "<td class='num better'>-20.0% better</td>" in section  # TTFT p99 fell
    assert "chat[concurrency=4]: not in run-b" in section
    first_page = build_report(first).read_text(encoding="utf-8")
    assert 'id="previous-run"' not in first_page  # nothing before the first run


def test_a_folder_without_a_summary_is_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(CompareError, match=r"no summary\.json there"):
        load_run(tmp_path)


def test_the_page_is_self_contained_with_both_runs(pair: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = pair
    rng = np.random.default_rng(0)
    a_ttft = rng.uniform(50, 100, 500)
    save_records(a, "chat", "concurrency=1", a_ttft)
    save_records(b, "chat", "concurrency=1", rng.uniform(40, 80, 500))
    comparison = compare_runs([load_run(a), load_run(b)])
    tolerances = parse_tolerances("output_throughput:5%")
    found = regressions(comparison, tolerances)
    page = write_comparison_html(comparison, tmp_path / "out" / "cmp.html", found, tolerances)
    text = page.read_text()
    assert "run-a" in text
    assert "run-b" in text
    assert "<td class='num worse'>-10.0% worse</td>" in text
    assert "<td class='num better'>-20.0% better</td>" in text
    assert "worse than the 5% tolerance" in text
    assert "window.vegaEmbed" in text  # inlined, nothing fetched
    assert not re.search(r"<script[^>]+src=", text)
    assert "chat: metrics by load level" in text
    assert "chat: TTFT distribution" in text
    specs = re.findall(r"<script type='application/json' id='chart-\d+-spec'>(.*?)</script>", text)
    assert len(specs) == 2
    cdf = json.loads(specs[1])
    rows = next(iter(cdf["datasets"].values()))
    assert {r["run"] for r in rows} == {"A: run-a", "B: run-b"}
    assert len(rows) == 2 * CDF_POINTS  # 500 requests each, downsampled
    slowest = max(r["ttft_ms"] for r in rows if r["run"] == "A: run-a")
    assert slowest == pytest.approx(a_ttft.max())


# -- the command ---------------------------------------------------------------------------------


def test_cli_compare_prints_the_table_and_writes_the_page(
    pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = pair
    assert main(["compare", str(a), str(b), "--metrics", "output_throughput"]) == 0
    out = capsys.readouterr().out
    assert "output_throughput" in out
    assert "ttft_ms" not in out
    page = b / "compare-run-a.html"
    assert f"comparison page: {page}" in out
    assert page.is_file()


def test_cli_gate_fails_naming_the_metric(
    pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = pair
    spec = "output_throughput:5%,ttft_ms.p99:10%"
    status = main(["compare", str(a), str(b), "--no-html", "--fail-on-regression", spec])
    captured = capsys.readouterr()
    assert status == 1
    assert (
        "REGRESSION run-b: chat[concurrency=1] output_throughput: 100.0 -> 90.00 tok/s "
        "(-10.0%, worse than the 5% tolerance)" in captured.out
    )
    regressed = [line for line in captured.out.splitlines() if line.startswith("REGRESSION")]
    assert not [line for line in regressed if "ttft_ms.p99:" in line]  # it got better
    assert (
        "gate: chat[concurrency=1] ttft_ms.p99: 100.0 -> 80.00 (-20.0%): within the 10% "
        "tolerance" in captured.out
    )
    assert "1 regression(s) beyond tolerance: output_throughput" in captured.err
    assert not (b / "compare-run-a.html").exists()
    # the other way round the throughput rose, but TTFT p99 got worse by 25%
    status = main(["compare", str(b), str(a), "--no-html", "--fail-on-regression", spec])
    captured = capsys.readouterr()
    assert status == 1
    assert "1 regression(s) beyond tolerance: ttft_ms.p99" in captured.err
    regressed = [line for line in captured.out.splitlines() if line.startswith("REGRESSION")]
    assert not [line for line in regressed if "output_throughput: " in line]
    # these runs saved no records: a statistic worse than its tolerance is judged on it alone
    assert "ttft_ms.p99: 80.00 -> 100.0 (+25.0%): worse than the 10% tolerance, judged on it" in (
        captured.out
    )
    status = main(["compare", str(b), str(a), "--no-html", "--fail-on-regression", "goodput:1%"])
    err = capsys.readouterr().err
    assert status == 0
    assert "warning: no test of these runs has goodput: not checked" in err


def test_cli_compares_one_run_with_the_previous_run_of_its_recipe(
    pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, b = pair
    assert main(["compare", str(b), "--no-html"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^A \(baseline\)\s+run-a", out, re.MULTILINE), out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--fail-on-regression", "output_throughput:5"], "expected METRIC:PERCENT%"),
        (["--metrics", "latency"], "unknown metric 'latency'"),
    ],
)
def test_cli_usage_errors_exit_2(
    pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    a, b = pair
    assert main(["compare", str(a), str(b), "--no-html", *extra]) == 2
    assert message in capsys.readouterr().err


def test_cli_unknown_run_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", "no-such-run", str(tmp_path)]) == 2
    assert "no run 'no-such-run'" in capsys.readouterr().err
    only = save_run(tmp_path / "reports", "lonely", [level_test("chat", 1)])
    assert main(["compare", str(only)]) == 2
    assert "no earlier complete run of recipe 'demo'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--fail-on-regression", "output_throughput:five%"],
            "--fail-on-regression: tolerance 'output_throughput:five%': expected METRIC:PERCENT%",
        ),
        (["--compare", "no-such-run"], "--compare: no run 'no-such-run'"),
    ],
)
@pytest.mark.slow
def test_a_session_with_a_bad_gate_stops_before_anything_runs(
    tmp_path: Path, args: list[str], message: str
) -> None:
    document = {
        "name": "never-started",
        "services": {"svc": {"kind": "command", "command": "false {port}"}},
        "clients": {"chat": {"kind": "openai", "service": "svc"}},
    }
    recipe = write_recipe(tmp_path / "recipe.yaml", document)
    session = run_benchmark(tmp_path, recipe, *args, timeout=60)
    assert session.returncode == pytest.ExitCode.USAGE_ERROR, session.output
    assert message in session.stderr, session.output
    assert session.run_dirs() == []
