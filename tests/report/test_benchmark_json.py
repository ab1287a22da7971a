"""Runs written in pytest-benchmark's format are read by pytest-benchmark's own CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pytest_benchmark.stats import Stats
from pytest_benchmark.utils import get_machine_id

from pytest_aifactory.metrics.catalog import SloObjective
from pytest_aifactory.metrics.slo import evaluate
from pytest_aifactory.metrics.stats import summarize_llm
from pytest_aifactory.report.benchmark_json import (
    round_stats,
    save_benchmark_json,
    to_benchmark_json,
)

CLI = Path(sys.executable).with_name("pytest-benchmark")
OBJECTIVES = [SloObjective("chat", "ttft_ms", "p99", "max", 500.0)]


def synthetic_records(seed: int, requests: int, slowdown: float, failures: int) -> pd.DataFrame:
    """Requests sent 0.1 s apart with log-normal latencies; the last `failures` fail."""
    rng = np.random.default_rng(seed)
    send = 1_700_000_000.0 + 0.1 * np.arange(requests)
    ttft = rng.lognormal(np.log(80.0 * slowdown), 0.3, requests)
    gaps = [list(rng.gamma(4.0, 5.0 * slowdown, rng.integers(1, 16))) for _ in range(requests)]
    failed = np.arange(requests) >= requests - failures
    e2el = ttft + np.array([sum(g) for g in gaps])
    out = np.array([len(g) + 1 for g in gaps], dtype=float)
    nan = np.full(requests, np.nan)
    return pd.DataFrame(
        {
            "client": "chat",
            "level_label": "concurrency=4",
            "node": "n0",
            "process": 0,
            "request_id": np.arange(requests),
            "phase": "measure",
            "scheduled_ts": send,
            "send_ts": send,
            "first_token_ts": np.where(failed, nan, send + ttft / 1000),
            "end_ts": np.where(failed, nan, send + e2el / 1000),
            "queue_ms": rng.uniform(0.0, 2.0, requests),
            "ttft_ms": np.where(failed, nan, ttft),
            "e2el_ms": np.where(failed, nan, e2el),
            "tpot_ms": np.where(failed, nan, (e2el - ttft) / (out - 1)),
            "itl_ms": [[] if f else g for f, g in zip(failed, gaps, strict=True)],
            "output_tokens": np.where(failed, nan, out),
            "input_tokens": np.where(failed, nan, 32.0),
            "tokens_estimated": False,
            "content_events": np.where(failed, 0, out).astype(int),
            "http_status": np.where(failed, 503, 200),
            "error": np.where(failed, "HTTPError: 503 Service Unavailable", ""),
        }
    )


def case_entry(name: str, records: pd.DataFrame) -> dict[str, Any]:
    summary = summarize_llm(records, objectives=OBJECTIVES)
    outcomes = evaluate(summary, OBJECTIVES)
    return {
        "test_id": f"benchmarks/test_inference.py::{name}",
        "name": name,
        "client": "chat",
        "level_label": name.split("[chat-")[1].rstrip("]").replace("-", "=", 1),
        "records": records,
        "summary": summary,
        "slo": [o.to_dict() for o in outcomes],
        "passed": all(o.passed for o in outcomes),
    }


def make_run(run_id: str, seed: int, slowdown: float) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "recipe_name": "synthetic",
        "datetime": "2025-01-01T00:00:00+00:00",
        "tests": [
            case_entry(
                "test_serving[chat-concurrency-4]", synthetic_records(seed, 40, slowdown, 3)
            ),
            case_entry("test_serving[chat-concurrency-8]", synthetic_records(seed + 1, 6, 1.0, 6)),
        ],
        "machine_info": None,
        "commit_info": None,
    }


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 50, 51])
def test_round_stats_are_pytest_benchmarks(size: int) -> None:
    values = np.random.default_rng(size).exponential(0.05, size)
    values[: size // 3] = values[0]  # ties
    reference = Stats()
    for value in values.tolist():
        reference.update(value)
    expected = reference.as_dict()
    got = round_stats(values)
    assert got["iterations"] == 1
    assert set(got) == {*Stats.fields, "iterations"}
    for field in Stats.fields:
        if isinstance(expected[field], float):
            assert got[field] == pytest.approx(expected[field], rel=1e-12, abs=1e-15), field
        else:
            assert got[field] == expected[field], field


def test_entries_hold_per_request_seconds_and_the_level_results() -> None:
    run = make_run("run-a", seed=3, slowdown=1.0)
    data = to_benchmark_json(run)
    json.dumps(data, allow_nan=False)
    names = [b["name"] for b in data["benchmarks"]]
    # the level where every request failed has no latency to show
    assert names == [
        f"test_serving[chat-concurrency-4]::{m}" for m in ("ttft", "tpot", "itl", "e2el")
    ]
    ttft, _tpot, itl, _e2el = data["benchmarks"]
    records = run["tests"][0]["records"]
    ok = records[records["error"] == ""]
    assert ttft["group"] == "test_serving[chat-concurrency-4]"
    assert (
        ttft["fullname"] == "benchmarks/test_inference.py::test_serving[chat-concurrency-4]::ttft"
    )
    assert ttft["param"] == "chat-concurrency-4"
    assert ttft["stats"]["rounds"] == len(ok) == 37
    assert ttft["stats"]["min"] == pytest.approx(ok["ttft_ms"].min() / 1000)
    assert ttft["stats"]["mean"] == pytest.approx(ok["ttft_ms"].mean() / 1000)
    assert ttft["stats"]["ops"] == pytest.approx(1000 / ok["ttft_ms"].mean())
    assert itl["stats"]["rounds"] == sum(len(g) for g in ok["itl_ms"])
    extra = ttft["extra_info"]
    assert extra["unit"] == "seconds per request (time to first token)"
    assert "not a throughput" in extra["note"]
    level = run["tests"][0]["summary"]["per_level"]
    for key in ("request_throughput", "output_throughput", "error_rate", "goodput"):
        assert extra[key] == pytest.approx(level[key])
    units = extra["per_level_units"]
    assert (units["output_throughput"], units["duration_s"], units["requested_rate"]) == (
        "tok/s",
        "s",
        "req/s",
    )
    assert extra["slo_passed"] is run["tests"][0]["passed"] is True
    assert extra["slo"][0]["key"] == "ttft_ms.p99"
    assert [t["passed"] for t in data["aifactory"]["tests"]] == [True, False]
    assert data["machine_info"]["python_implementation"]
    assert "id" in data["commit_info"]


def test_saved_runs_are_numbered_per_machine(tmp_path: Path) -> None:
    data = to_benchmark_json(make_run("run-a", seed=3, slowdown=1.0))
    first = save_benchmark_json(data, tmp_path, "20250101T000000Z-synthetic")
    second = save_benchmark_json(data, tmp_path, "odd:name/with*chars")
    assert first == tmp_path / get_machine_id() / "0001_20250101T000000Z-synthetic.json"
    assert second == tmp_path / get_machine_id() / "0002_odd-name-with-chars.json"
    assert json.loads(first.read_text()) == data


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(CLI), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.mark.slow
def test_pytest_benchmark_lists_and_compares_our_runs(tmp_path: Path) -> None:
    storage = tmp_path / ".benchmarks"
    save_benchmark_json(to_benchmark_json(make_run("base", 3, 1.0)), storage, "base")
    save_benchmark_json(to_benchmark_json(make_run("slow", 4, 1.5)), storage, "slow")

    listed = run_cli("--storage", f"file://{storage}", "list", cwd=tmp_path).stdout
    machine = get_machine_id()
    assert f"{machine}/0001_base.json" in listed
    assert f"{machine}/0002_slow.json" in listed

    compared = run_cli(
        "--storage",
        f"file://{storage}",
        "compare",
        "--name=long",
        "--columns=min,mean,max,rounds",
        cwd=tmp_path,
    ).stdout
    for metric in ("ttft", "tpot", "itl", "e2el"):
        fullname = f"benchmarks/test_inference.py::test_serving[chat-concurrency-4]::{metric}"
        assert f"{fullname} (0001_base)" in compared, compared
        assert f"{fullname} (0002_slow)" in compared, compared
    assert "test_serving[chat-concurrency-8]::" not in compared
    assert "benchmark 'test_serving[chat-concurrency-4]'" in compared

    between = run_cli(
        "--storage",
        f"file://{storage}",
        "compare",
        "--between=mean",
        "0001",
        "0002",
        cwd=tmp_path,
    ).stdout
    assert "test_serving[chat-concurrency-4]::ttft" in between, between
