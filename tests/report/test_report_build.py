"""report.html and its chart files, rebuilt from a run folder's saved files alone.

The run folders here are written the way a session writes them: records through
`loadgen.records.write_parquet`, each test's summary from `summarize_llm` and `slo.evaluate`,
samples in the `monitor.samples` schema with raw counters.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pytest_aifactory.cli import main as cli_main
from pytest_aifactory.loadgen.records import records_frame, write_parquet
from pytest_aifactory.metrics.catalog import SloObjective
from pytest_aifactory.metrics.slo import evaluate
from pytest_aifactory.metrics.stats import json_safe, summarize_llm
from pytest_aifactory.monitor.samples import normalize
from pytest_aifactory.report import charts as ch
from pytest_aifactory.report.build import PooledGaps, ReportError, build_report

T0 = 1_795_757_000.0
NASTY_RECIPE = 'demo <b>&</b> "q"'
NASTY_NOTE = "server said <script>alert(1)</script> & left"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# -- a synthetic run, written as a session writes one ---------------------------------------


def level_records(
    test_id: str,
    client: str,
    level_label: str,
    start: float,
    count: int,
    *,
    concurrency: int = 2,
    ttft_ms: float = 200.0,
    gap_ms: float = 40.0,
    tokens: int = 16,
    failures: dict[str, int] | None = None,
    warmup: int = 2,
    seed: int = 0,
) -> pd.DataFrame:
    """Requests of one load level: `concurrency` streams back to back, the first `warmup`
    in the warmup phase, `failures` (error text -> count) spread over the window."""
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    lanes = [start] * concurrency
    failed = [text for text, n in (failures or {}).items() for _ in range(n)]
    fail_at = (
        set(np.linspace(warmup, count + warmup - 1, len(failed)).astype(int)) if failed else set()
    )
    errors = iter(failed)
    for request_id in range(count + warmup):
        lane = request_id % concurrency
        send = lanes[lane]
        ttft = float(ttft_ms * rng.lognormal(0, 0.3))
        gaps = list(gap_ms * rng.lognormal(0, 0.25, tokens - 1))
        e2el = ttft + sum(gaps)
        error = next(errors) if request_id in fail_at else ""
        bad = bool(error)
        end = send + (0.05 if bad else e2el / 1000)
        lanes[lane] = end + 0.001
        rows.append(
            {
                "client": client,
                "level_label": level_label,
                "node": "n0",
                "process": lane % 2,
                "request_id": request_id,
                "phase": "warmup" if request_id < warmup else "measure",
                "scheduled_ts": send,
                "send_ts": send + 0.0001,
                "first_token_ts": None if bad else send + ttft / 1000,
                "end_ts": end,
                "queue_ms": 0.1,
                "ttft_ms": None if bad else ttft,
                "e2el_ms": None if bad else e2el,
                "tpot_ms": None if bad else (e2el - ttft) / (tokens - 1),
                "itl_ms": [] if bad else gaps,
                "output_tokens": None if bad else tokens,
                "input_tokens": None if bad else 32,
                "tokens_estimated": False,
                "content_events": 0 if bad else tokens,
                "http_status": 503 if error.startswith("HTTPError") else (None if bad else 200),
                "error": error,
            }
        )
    return records_frame(rows).assign(test_id=test_id)


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat()


def summary_entry(
    test_id: str,
    records: pd.DataFrame,
    objectives: list[SloObjective],
    *,
    level: float,
    notes: list[str] | None = None,
    warnings: list[str] | None = None,
    server_tokens: float | None = None,
) -> dict[str, Any]:
    """One test of summary.json, as `run_store.test_entry` writes it."""
    first = records.iloc[0]
    summary = summarize_llm(records, objectives=objectives)
    outcomes = evaluate(summary, objectives)
    start = float(records["scheduled_ts"].min()) - 0.5
    end = float(records["end_ts"].max()) + 0.5
    cross_checks: list[dict[str, Any]] = []
    server: dict[str, Any] = {}
    if server_tokens is not None:
        measured = records[(records["phase"] == "measure") & (records["error"] == "")]
        client_tokens = float(measured["output_tokens"].sum())
        difference = (client_tokens - server_tokens) / max(client_tokens, server_tokens)
        cross_checks.append(
            {
                "metric": "output_tokens",
                "client": client_tokens,
                "server": server_tokens,
                "difference": difference,
                "flagged": abs(difference) > 0.1,
                "service": "llm",
            }
        )
        server = {"llm": {"output_tokens": server_tokens, "series": "llamacpp_generated_tokens"}}
    entry = {
        "test_id": test_id,
        "name": test_id.split("::")[-1],
        "client": str(first["client"]),
        "kind": "openai",
        "mode": "concurrency",
        "level": level,
        "level_label": str(first["level_label"]),
        "passed": all(o.passed for o in outcomes),
        "notes": notes or [],
        "warnings": warnings or [],
        "started_at": iso(start),
        "ended_at": iso(end),
        "slo": [o.to_dict() for o in outcomes],
        **summary,
        "server": server,
        "cross_checks": cross_checks,
    }
    return json_safe(entry)


def level_samples(test_id: str, start: float, end: float, tokens_per_s: float) -> pd.DataFrame:
    """One window's samples: llama.cpp's raw token counter (with a restart), its gauges, and
    the node exporter's per-CPU, per-mode CPU seconds."""
    times = np.arange(start, end + 1.0, 1.0)
    rows: list[dict[str, Any]] = []

    def add(series: str, metric: str, source: str, value: float, t: float, **labels: str) -> None:
        rows.append(
            {
                "test_id": test_id,
                "series": series,
                "metric": metric,
                "source": source,
                "service": "llm" if source == "service" else "",
                "node": "n0",
                "instance": "127.0.0.1:8080" if source == "service" else "127.0.0.1:9100",
                "labels": json.dumps(labels, sort_keys=True),
                "timestamp": t,
                "value": value,
                "origin": "scrape",
            }
        )

    restart = len(times) // 2
    for i, t in enumerate(times):
        counter = tokens_per_s * (i if i < restart else i - restart)
        add("llamacpp_generated_tokens", "llamacpp:tokens_predicted_total", "service", counter, t)
        add("llamacpp_requests_processing", "llamacpp:requests_processing", "service", 2.0, t)
        add("llamacpp_requests_deferred", "llamacpp:requests_deferred", "service", 0.0, t)
        for cpu in ("0", "1"):
            add(
                "node_cpu_seconds",
                "node_cpu_seconds_total",
                "node",
                0.75 * i,
                t,
                cpu=cpu,
                mode="user",
            )
            add(
                "node_cpu_seconds",
                "node_cpu_seconds_total",
                "node",
                0.25 * i,
                t,
                cpu=cpu,
                mode="idle",
            )
    return normalize(pd.DataFrame(rows))


def write_run(
    root: Path,
    tests: list[dict[str, Any]],
    records: pd.DataFrame | None,
    metrics: pd.DataFrame | None = None,
    *,
    recipe_name: str = "llamacpp-smollm2",
    status: str = "complete",
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    summary = {
        "format": 1,
        "run_id": f"20261127-060000-{recipe_name[:8]}",
        "recipe": {
            "name": recipe_name,
            "description": "SmolLM2 on llama.cpp, <CPU> & friends",
            "path": "recipes/x.yaml",
            "document": {"name": recipe_name, "slo": {"chat": {"ttft_ms": {"p99": {"max": 500}}}}},
        },
        "status": status,
        "verdict": "pass" if tests and all(t["passed"] for t in tests) else "fail",
        "started_at": iso(T0),
        "written_at": iso(T0 + 120),
        "aifactory_version": "0.1.0",
        "environment": {"hostname": "vm", "python": "3.11.7", "cpu_count": 2},
        "services": {"llm": {"kind": "llamacpp", "url": "http://127.0.0.1:8080", "node": "n0"}},
        "monitoring": {"mode": "scrape", "warnings": ["pushgateway <gone> & back"]},
        "tests": tests,
    }
    (root / "summary.json").write_text(json.dumps(summary, indent=2))
    if records is not None and len(records):
        write_parquet(records, root / "records.parquet")
    if metrics is not None:
        metrics.to_parquet(root / "metrics.parquet", index=False)
    return root


CHAT_SLO = [
    SloObjective("chat", "ttft_ms", "p99", "max", 500.0),
    SloObjective("chat", "output_throughput", None, "min", 10.0),
    SloObjective("chat", "error_rate", None, "max", 0.0),
]
BATCH_SLO = [SloObjective("batch", "e2el_ms", "p50", "max", 5000.0)]


def rich_run(root: Path, with_metrics: bool = True) -> Path:
    """Two clients; chat at two levels, the second failing (slow, errors, a flagged
    cross-check, a note quoting HTML); batch at one level without monitoring samples."""
    specs = [
        ("chat", "concurrency=1", 1.0, {}, 150.0, T0, CHAT_SLO),
        (
            "chat",
            "concurrency=4",
            4.0,
            {"HTTPError: 503 <busy>": 3, "TimeoutError: read": 2},
            700.0,
            T0 + 40,
            CHAT_SLO,
        ),
        ("batch", "rate=2", 2.0, {}, 300.0, T0 + 80, BATCH_SLO),
    ]
    frames, tests, samples = [], [], []
    for index, (client, label, level, failures, ttft, start, slo) in enumerate(specs):
        test_id = f"benchmarks/test_inference.py::test_serving[{client}-{label.replace('=', '-')}]"
        frame = level_records(
            test_id,
            client,
            label,
            start,
            30,
            concurrency=int(level),
            ttft_ms=ttft,
            failures=failures,
            seed=index,
        )
        frames.append(frame)
        failing = bool(failures)
        entry = summary_entry(
            test_id,
            frame,
            slo,
            level=level,
            notes=[NASTY_NOTE] if failing else [],
            warnings=["client queue grew to 12 ms"] if failing else [],
            server_tokens=(300.0 if failing else float(frame["output_tokens"].sum())),
        )
        tests.append(entry)
        if with_metrics and client == "chat":
            begin = dt.datetime.fromisoformat(entry["started_at"]).timestamp()
            finish = dt.datetime.fromisoformat(entry["ended_at"]).timestamp()
            samples.append(level_samples(test_id, begin, finish, 50.0))
    metrics = pd.concat(samples, ignore_index=True) if samples else None
    return write_run(
        root, tests, pd.concat(frames, ignore_index=True), metrics, recipe_name=NASTY_RECIPE
    )


# -- what a page must hold -------------------------------------------------------------------


def chart_ids(page: str) -> list[str]:
    return re.findall(r'<div class="chart" id="([^"]+)"', page)


def specs(page: str) -> dict[str, dict[str, Any]]:
    found = re.findall(
        r'<script type="application/json" id="([^"]+)-spec">(.*?)</script>', page, flags=re.S
    )
    return {element: json.loads(text) for element, text in found}


def section(page: str, element_id: str) -> str:
    start = page.index(f'id="{element_id}"')
    end = page.find('<section class="test"', start + 1)
    return page[start : end if end > 0 else len(page)]


@pytest.fixture(scope="module")
def rich(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = rich_run(tmp_path_factory.mktemp("rich") / "run")
    page_path = build_report(root)
    return root, page_path.read_text(encoding="utf-8")


@pytest.mark.slow
def test_page_has_each_tests_slo_table_and_verdicts(rich: tuple[Path, str]) -> None:
    root, page = rich
    summary = json.loads((root / "summary.json").read_text())
    assert page.count('<table class="slo">') == len(summary["tests"]) == 3
    for test in summary["tests"]:
        assert f'data-test-id="{test["test_id"]}"' in page
    failing = section(page, "test-serving-chat-concurrency-4")
    assert "FAIL" in failing
    slo = failing[failing.index('<table class="slo">') : failing.index("</table>")]
    rows = re.findall(r"<tr class=\"(pass|fail)\">", slo)
    assert rows == ["fail", "pass", "fail"]  # ttft p99 broken, throughput held, errors broken
    assert "≤ 500 ms" in slo
    assert "≥ 10 tok/s" in slo
    margin = re.search(r"<td class=\"num\">([+-]\d+\.\d%)</td>", slo)
    assert margin
    assert margin.group(1).startswith("-")
    passing = section(page, "test-serving-chat-concurrency-1")
    assert '<tr class="fail">' not in passing[: passing.index("</table>")]
    assert '<span class="badge verdict fail">FAIL</span>' in page


def test_notes_warnings_and_flagged_cross_check(rich: tuple[Path, str]) -> None:
    _, page = rich
    failing = section(page, "test-serving-chat-concurrency-4")
    assert '<div class="messages notes">' in failing
    assert "client queue grew to 12 ms" in failing
    checks = failing[failing.index('<table class="cross-checks">') :]
    assert "more than 10% apart" in checks[: checks.index("</table>")]
    passing = section(page, "test-serving-chat-concurrency-1")
    assert "agree" in passing
    assert "more than 10% apart" not in passing
    assert "HTTPError" in failing
    assert "TimeoutError" in failing


def test_text_from_the_run_is_escaped(rich: tuple[Path, str]) -> None:
    _, page = rich
    assert "<script>alert(1)" not in page
    assert "server said &lt;script&gt;alert(1)&lt;/script&gt; &amp; left" in page
    assert "<b>&</b>" not in page
    assert "<title>demo &lt;b&gt;&amp;&lt;/b&gt; &quot;q&quot;" in page
    assert "pushgateway &lt;gone&gt; &amp; back" in page
    # the one text that reached a chart spec (an error kind) stays inside its JSON element
    for spec_text in re.findall(r'type="application/json"[^>]*>(.*?)</script>', page, re.S):
        assert "<" not in spec_text
        assert ">" not in spec_text


def test_expected_chart_containers_and_valid_specs(rich: tuple[Path, str]) -> None:
    _, page = rich
    ids = set(chart_ids(page))
    expected = {
        "chart-client-chat-throughput_latency",
        "chart-client-chat-goodput",
        "chart-client-chat-latency_by_level",
        "chart-client-batch-throughput_latency",
        "chart-test-serving-chat-concurrency-1-latency_cdf",
        "chart-test-serving-chat-concurrency-1-timeline",
        "chart-test-serving-chat-concurrency-4-latency_cdf",
        "chart-test-serving-chat-concurrency-4-errors",
        "chart-test-serving-chat-concurrency-4-timeline",
        "chart-test-serving-batch-rate-2-latency_cdf",
        "chart-test-serving-batch-rate-2-timeline",
    }
    assert expected <= ids
    assert "chart-test-serving-chat-concurrency-1-errors" not in ids  # nothing failed there
    parsed = specs(page)
    assert set(parsed) == ids
    assert all(
        spec["$schema"].startswith("https://vega.github.io/schema/vega-lite/")
        for spec in parsed.values()
    )
    timeline = json.dumps(parsed["chart-test-serving-chat-concurrency-1-timeline"])
    assert "llm: generated tokens/s (server)" in timeline
    assert "n0: CPU busy %" in timeline
    assert "client: output tok/s" in timeline
    batch = json.dumps(parsed["chart-test-serving-batch-rate-2-timeline"])
    assert "CPU busy" not in batch  # no samples for that window: client panels only
    errors = json.dumps(parsed["chart-test-serving-chat-concurrency-4-errors"])
    assert "HTTPError" in errors
    assert "TimeoutError" in errors


def test_vega_is_inlined_once_and_nothing_is_fetched(rich: tuple[Path, str]) -> None:
    _, page = rich
    assert page.count("window.vegaEmbed=") == 1
    assert not re.search(r"<script[^>]+src=", page)
    assert "<link" not in page
    assert 'renderer: "svg"' in page


def test_chart_files_are_valid_svg_and_png(rich: tuple[Path, str]) -> None:
    root, page = rich
    links = re.findall(r'<a href="(report/[^"]+)">', page)
    ids = chart_ids(page)
    assert len(links) == 2 * len(ids)
    for link in links:
        path = root / link
        assert path.is_file(), link
        if link.endswith(".png"):
            assert path.read_bytes()[:8] == PNG_SIGNATURE
        else:
            text = path.read_text(encoding="utf-8")
            assert text.lstrip().startswith("<svg")
            assert text.rstrip().endswith("</svg>")
    names = {p.name for p in (root / "report").iterdir()}
    assert "test-serving-chat-concurrency-4-errors.svg" in names
    assert "client-chat-goodput.png" in names


def test_rebuild_replaces_stale_chart_files(tmp_path: Path) -> None:
    frame = level_records("t::a", "chat", "concurrency=1", T0, 6)
    root = write_run(tmp_path / "run", [summary_entry("t::a", frame, CHAT_SLO, level=1.0)], frame)
    (root / "report").mkdir()
    (root / "report" / "old-test-timeline.svg").write_text("<svg/>")
    (root / "report" / "keep.txt").write_text("mine")
    build_report(root)
    names = {p.name for p in (root / "report").iterdir()}
    assert "old-test-timeline.svg" not in names
    assert "keep.txt" in names
    assert "a-latency_cdf.svg" in names


def test_without_metrics_parquet(tmp_path: Path) -> None:
    root = rich_run(tmp_path / "run", with_metrics=False)
    assert not (root / "metrics.parquet").exists()
    page = build_report(root).read_text()
    parsed = specs(page)
    timeline = json.dumps(parsed["chart-test-serving-chat-concurrency-1-timeline"])
    assert "client: completed req/s" in timeline
    assert "(server)" not in timeline
    assert page.count('<table class="slo">') == 3


def test_without_records(tmp_path: Path) -> None:
    frame = level_records("t::x[chat-1]", "chat", "concurrency=1", T0, 8)
    entry = summary_entry("t::x[chat-1]", frame, CHAT_SLO, level=1.0)
    root = write_run(tmp_path / "run", [entry], records=None, recipe_name="no-records")
    page = build_report(root).read_text()
    ids = chart_ids(page)
    assert "chart-client-chat-throughput_latency" in ids  # from the summary alone
    assert not any(i.endswith("latency_cdf") or i.endswith("latency_by_level") for i in ids)
    assert page.count('<table class="slo">') == 1
    assert "PASS" in page


def test_run_with_no_tests(tmp_path: Path) -> None:
    root = write_run(tmp_path / "run", [], records=None, status="interrupted")
    page = build_report(root).read_text()
    assert "This run recorded no test." in page
    assert chart_ids(page) == []
    assert "interrupted" in page


def test_unreadable_records_become_a_note_not_a_crash(tmp_path: Path) -> None:
    frame = level_records("t::a", "chat", "concurrency=1", T0, 6)
    root = write_run(tmp_path / "run", [summary_entry("t::a", frame, CHAT_SLO, level=1.0)], None)
    (root / "records.parquet").write_bytes(b"not parquet at all")
    page = build_report(root).read_text()
    assert "records.parquet could not be read" in page
    assert page.count('<table class="slo">') == 1


def test_missing_summary_is_a_report_error(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match=r"no summary\.json"):
        build_report(tmp_path)


# -- the command ------------------------------------------------------------------------------


def test_cli_rebuilds_and_prints_the_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frame = level_records("t::a", "chat", "concurrency=1", T0, 6)
    root = write_run(tmp_path / "run", [summary_entry("t::a", frame, CHAT_SLO, level=1.0)], frame)
    assert cli_main(["report", str(root)]) == 0
    assert capsys.readouterr().out.strip() == str(root / "report.html")
    assert (root / "report.html").is_file()
    target = tmp_path / "elsewhere" / "page.html"
    assert cli_main(["report", str(root), "--output", str(target)]) == 0
    assert capsys.readouterr().out.strip() == str(target)
    assert target.is_file()
    assert (tmp_path / "elsewhere" / "page" / "a-timeline.png").is_file()
    assert 'href="page/a-timeline.svg"' in target.read_text()


@pytest.mark.parametrize("kind", ["unknown", "no-summary"])
def test_cli_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    if kind == "unknown":
        ref = "no-such-run-anywhere"
    else:
        (tmp_path / "bare").mkdir()
        ref = str(tmp_path / "bare")
    assert cli_main(["report", ref]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("aifactory: ")
    assert "Traceback" not in captured.err
    expected = "no run 'no-such-run-anywhere'" if kind == "unknown" else "no summary.json"
    assert expected in lines[0]


# -- the chart functions ------------------------------------------------------------------------


def test_log_histogram_cdf_matches_exact_quantiles() -> None:
    rng = np.random.default_rng(1)
    values = rng.lognormal(np.log(40), 0.6, 200_000)
    histogram = ch.LogHistogram()
    for part in np.array_split(values, 7):
        histogram.add(part)
    points = histogram.cdf()
    exact = np.quantile(values, points["fraction"])
    relative = np.abs(points["value"].to_numpy() - exact) / exact
    assert relative.max() < 0.01
    assert points["value"].iloc[0] == values.min()
    assert points["value"].iloc[-1] == values.max()


def test_counter_rates_survive_a_restart() -> None:
    samples = level_samples("t", T0, T0 + 20, 50.0)
    frame = ch.server_timeline(samples, T0, T0 + 20, ("llamacpp",), ("llamacpp_generated_tokens",))
    tokens = frame[frame["panel"] == "tokens"]["value"]
    assert len(tokens) >= 18
    assert (tokens >= 0).all()
    assert np.isclose(tokens.median(), 50.0)
    cpu = frame[frame["panel"] == "cpu"]["value"]
    assert np.allclose(cpu, 75.0)
    requests = frame[frame["panel"] == "requests"]
    assert set(requests["name"]) == {
        "llm: llamacpp_requests_processing",
        "llm: llamacpp_requests_deferred",
    }


def test_requests_the_server_answered_join_the_clients_panel() -> None:
    times = np.arange(T0, T0 + 11.0, 1.0)
    transactions = pd.DataFrame(
        {
            "series": "postgres_transactions",
            "metric": "aifactory_pg_xact_commit",
            "source": "service",
            "service": "db",
            "node": "n0",
            "instance": "127.0.0.1:5433",
            "labels": json.dumps({"datname": "aifactory"}),
            "timestamp": times,
            "value": 200.0 * np.arange(len(times)),
        }
    )
    frame = ch.server_timeline(transactions, T0, T0 + 10, ("postgres",))
    answered = frame[frame["panel"] == "requests-client"]
    assert set(answered["name"]) == {"db: postgres_transactions/s (server)"}
    assert len(answered) == 10
    assert np.allclose(answered["value"], 200.0)
    # llama.cpp counts no answered requests: its panels are as before
    llama = ch.server_timeline(level_samples("t", T0, T0 + 20, 50.0), T0, T0 + 20, ("llamacpp",))
    assert "requests-client" not in set(llama["panel"])


def test_client_throughput_bins() -> None:
    frame = level_records("t", "chat", "c=1", T0, 40, concurrency=1)
    start, end = ch.window_of({}, frame)
    bins = ch.client_throughput(frame, start, end)
    requests = bins[bins["panel"] == "requests"]
    tokens = bins[bins["panel"] == "tokens"]
    assert np.isclose(requests["value"].sum() * ch.bin_width(end - start), 42)  # warmup counts
    assert np.isclose(tokens["value"].sum(), 16 * requests["value"].sum())


def test_many_records_give_small_specs_fast() -> None:
    frame = pd.concat(
        [level_records("t", "chat", "c=8", T0, 3000, concurrency=8, seed=s) for s in range(5)],
        ignore_index=True,
    )
    test = {"test_id": "t", "client": "chat", "level_label": "c=8", "passed": True}
    began = time.perf_counter()
    charts = ch.charts_for_test({"tests": [test]}, test, frame)
    elapsed = time.perf_counter() - began
    assert set(charts) == {"latency_cdf", "timeline"}
    for chart in charts.values():
        rows = sum(len(v) for v in ch.to_spec(chart).get("datasets", {}).values())
        assert 0 < rows < 2000
    assert elapsed < 10


def test_many_gaps_switch_to_a_histogram_and_stay_accurate() -> None:
    rng = np.random.default_rng(2)
    values = rng.lognormal(np.log(25), 0.4, 200_000)
    pooled = PooledGaps(exact_limit=20_000)
    for part in np.array_split(values, 10):
        pooled.add(part)
    assert pooled.histogram is not None
    assert pooled.parts == []
    points = pooled.cdf()
    exact = np.quantile(values, points["fraction"])
    relative = np.abs(points["value"].to_numpy() - exact) / exact
    body = points["fraction"].to_numpy() <= 0.999
    assert relative[body].max() < 0.005
    assert relative.max() < 0.02  # the last few points rest on a handful of values


def test_long_windows_get_minutes_or_hours_on_the_time_axis() -> None:
    assert ch.time_unit(600) == (1.0, "seconds")
    assert ch.time_unit(2 * 3600) == (60.0, "minutes")
    assert ch.time_unit(10 * 3600) == (3600.0, "hours")
    frame = level_records("t", "chat", "c=1", T0, 5)
    long = pd.DataFrame({"t": [0.0, 7000.0], "panel": "tokens", "name": "x", "value": [1.0, 2.0]})
    chart = ch.timeline_chart(ch.client_throughput(frame, T0, T0 + 7200).iloc[0:0], long, 7200)
    spec = ch.to_spec(chart)
    assert spec["vconcat"][0]["encoding"]["x"]["title"] == "minutes since test start"
    assert spec["vconcat"][0]["encoding"]["x"]["scale"]["domain"] == [0, 120]
