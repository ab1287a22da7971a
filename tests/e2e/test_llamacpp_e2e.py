"""The inference benchmark end to end against the real llama-server and SmolLM2 model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import psutil
import pytest

from tests.helpers import Session, agreed_start, run_benchmark, write_recipe

pytestmark = [pytest.mark.slow, pytest.mark.requires("llama-server")]

INPUT_TOKENS = 32
OUTPUT_TOKENS = 16
CLOCK_SLACK_S = 0.001
"""Wall-clock readings of different processes, converted from their monotonic clocks."""
PYTEST_BENCHMARK = str(Path(sys.executable).parent / "pytest-benchmark")


def recipe_document() -> dict[str, Any]:
    dataset = {"kind": "random", "input_tokens": INPUT_TOKENS, "output_tokens": OUTPUT_TOKENS}
    return {
        "name": "e2e-smollm2",
        "services": {
            "llm": {
                "kind": "llamacpp",
                "model": "smollm2-135m",
                "args": ["--parallel", "4"],
                "health_timeout_s": 120,
            }
        },
        "clients": {
            "chat": {
                "kind": "openai",
                "service": "llm",
                "dataset": dataset,
                "load": {
                    "mode": "concurrency",
                    "levels": [2],
                    "requests": 12,
                    "warmup_requests": 1,
                },
            },
            "dialog": {
                "kind": "openai",
                "service": "llm",
                "api": "chat",
                "dataset": dataset,
                "load": {"mode": "concurrency", "levels": [1], "requests": 3},
            },
            "paced": {
                "kind": "openai",
                "service": "llm",
                "dataset": dataset,
                "load": {"mode": "rate", "levels": [4], "arrival": "constant", "requests": 20},
            },
            "fan": {
                "kind": "openai",
                "service": "llm",
                "processes_per_node": 3,
                "dataset": dataset,
                "load": {"mode": "concurrency", "levels": [3], "requests": 9},
            },
            "strict": {
                "kind": "openai",
                "service": "llm",
                "dataset": dataset,
                "load": {"mode": "concurrency", "levels": [1], "requests": 3},
            },
        },
        "slo": {
            "chat": {
                "ttft_ms": {"p99": {"max": 60000}},
                "output_throughput": {"min": 0.1},
                "error_rate": {"max": 0.0},
            },
            "strict": {"ttft_ms": {"p99": {"max": 0.001}}},
        },
        "monitor": {"prometheus": False},
    }


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Session:
    tmp = tmp_path_factory.mktemp("e2e")
    recipe = write_recipe(tmp / "e2e.yaml", recipe_document())
    return run_benchmark(tmp, recipe, "-v")


@pytest.fixture(scope="module")
def records(session: Session) -> pd.DataFrame:
    (run,) = session.run_dirs()
    frame = pd.read_parquet(run / "records.parquet")
    return frame[frame["phase"] == "measure"]


def test_verdicts_follow_the_slos(session: Session) -> None:
    assert session.returncode == 1, session.output
    for passing in (
        "chat-concurrency-2",
        "dialog-concurrency-1",
        "paced-rate-4",
        "fan-concurrency-3",
    ):
        assert f"test_serving[{passing}] PASSED" in session.stdout, session.output
    assert "test_serving[strict-concurrency-1] FAILED" in session.stdout
    breach = [
        ln for ln in session.stdout.splitlines() if "strict[concurrency=1] ttft_ms.p99 =" in ln
    ]
    assert breach, session.output
    assert breach[0].rstrip().endswith("ms > max 0.001"), breach[0]
    assert "Traceback" not in session.output


def test_streaming_metrics_are_consistent(records: pd.DataFrame) -> None:
    ok = records[records["error"] == ""]
    assert len(ok) == len(records) == 12 + 3 + 20 + 9 + 3
    assert (ok["ttft_ms"] > 0).all()
    assert (ok["ttft_ms"] < ok["e2el_ms"]).all()
    # the server's usage, not an estimate: exactly the requested output length
    assert not ok["tokens_estimated"].any()
    assert (ok["output_tokens"] == OUTPUT_TOKENS).all()
    completions = ok[ok["client"] != "dialog"]
    # prompts are built to an exact token count (the server may add a BOS token)
    assert completions["input_tokens"].between(INPUT_TOKENS, INPUT_TOKENS + 1).all()
    for _, row in ok.iterrows():
        assert len(row["itl_ms"]) == row["content_events"] - 1
        expected_tpot = (row["e2el_ms"] - row["ttft_ms"]) / (row["output_tokens"] - 1)
        assert row["tpot_ms"] == pytest.approx(expected_tpot, rel=1e-6)


def test_connections_to_llama_server_are_accounted(session: Session, records: pd.DataFrame) -> None:
    """llama-server closes a connection after each stream while announcing keep-alive: a
    request either reuses a pooled connection (connect_ms 0), or connects anew, having met a
    closed one (a resend) or not; none fails for it, and the summary counts the resends."""
    ok = records[records["error"] == ""]
    assert len(ok) == len(records)
    reused = (ok["connect_ms"] == 0) & (ok["resends"] == 0)
    connected = ok["connect_ms"] > 0
    assert (reused | connected).all()
    assert (ok[ok["resends"] > 0]["connect_ms"] > 0).all(), "a resend connects anew"
    summary = session.summary()
    resends = {t["client"]: t["counts"]["resends"] for t in summary["tests"]}
    assert resends == ok.groupby("client")["resends"].sum().to_dict()
    chat = next(t for t in summary["tests"] if t["client"] == "chat")
    assert chat["per_request"]["connect_ms"]["max"] == pytest.approx(
        ok[ok["client"] == "chat"]["connect_ms"].max()
    )


def max_in_flight(frame: pd.DataFrame) -> int:
    events = [(t, 1) for t in frame["send_ts"]] + [(t, -1) for t in frame["end_ts"]]
    in_flight = peak = 0
    for _, delta in sorted(events, key=lambda e: (e[0], e[1])):
        in_flight += delta
        peak = max(peak, in_flight)
    return peak


def test_concurrency_is_never_exceeded(records: pd.DataFrame) -> None:
    chat = records[records["client"] == "chat"]
    assert max_in_flight(chat) == 2


def test_fanned_out_processes_make_one_load(session: Session, records: pd.DataFrame) -> None:
    fan = records[records["client"] == "fan"]
    assert sorted(fan["process"].unique()) == [0, 1, 2]
    assert len(fan) == 9
    assert max_in_flight(fan) == 3
    # the start barrier: no process sends before the instant they agreed on once the last of
    # them was ready (task start-up alone spreads them by about a second); how soon after that
    # instant each one wakes is this machine's scheduler's business, not the barrier's
    (run,) = session.run_dirs()
    first_sends = fan.groupby("process")["send_ts"].min()
    assert first_sends.min() >= agreed_start(run, "fan-concurrency-3") - CLOCK_SLACK_S


def test_rate_mode_reaches_the_requested_rate(session: Session) -> None:
    (test,) = [t for t in session.summary()["tests"] if t["client"] == "paced"]
    achieved = test["per_level"]["achieved_rate"]
    assert achieved == pytest.approx(4.0, rel=0.10)


def test_run_is_saved(session: Session, records: pd.DataFrame) -> None:
    summary = session.summary()
    assert summary["status"] == "complete"
    assert summary["verdict"] == "fail"
    assert summary["recipe"]["name"] == "e2e-smollm2"
    assert summary["environment"]["packages"]["pytest-aifactory"]
    llm = summary["services"]["llm"]
    assert llm["kind"] == "llamacpp"
    assert llm["submitted_at"] <= llm["job_started_at"] <= llm["launched_at"] <= llm["healthy_at"]
    assert llm["health_wait_s"] == pytest.approx(llm["healthy_at"] - llm["launched_at"])
    names = {t["name"] for t in summary["tests"]}
    assert names == {
        "test_serving[chat-concurrency-2]",
        "test_serving[dialog-concurrency-1]",
        "test_serving[paced-rate-4]",
        "test_serving[strict-concurrency-1]",
        "test_serving[fan-concurrency-3]",
    }
    chat = next(t for t in summary["tests"] if t["client"] == "chat")
    assert chat["counts"]["completed"] == 12
    assert chat["per_request"]["ttft_ms"]["p50"] == pytest.approx(
        records[records["client"] == "chat"]["ttft_ms"].median()
    )
    assert {o["passed"] for o in chat["slo"]} == {True}


def test_pytest_benchmark_reads_the_run(session: Session) -> None:
    storage = session.report_dir.parent / ".benchmarks"
    listing = subprocess.run(
        [PYTEST_BENCHMARK, "--storage", f"file://{storage}", "list"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert listing.returncode == 0, listing.stderr
    (run,) = session.run_dirs()
    assert run.name in listing.stdout
    compare = subprocess.run(
        [PYTEST_BENCHMARK, "--storage", f"file://{storage}", "compare", "--group-by", "name"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert compare.returncode == 0, compare.stderr
    assert "ttft" in compare.stdout


def test_every_job_log_is_kept(session: Session) -> None:
    (run,) = session.run_dirs()
    logs = run / "logs"
    service_err = "\n".join(p.read_text() for p in (logs / "service-llm").glob("*_log.err"))
    assert "aifactory: starting llm" in service_err
    assert "job cancelled, stopping" in service_err  # written after the cancel
    fan_logs = sorted(p.name for p in (logs / "client-fan").iterdir())
    assert len([name for name in fan_logs if name.endswith("_log.out")]) == 3


def test_no_server_left_running(session: Session) -> None:
    (run,) = session.run_dirs()
    rendezvous = json.loads((run / "rendezvous" / "llm.json").read_text())
    assert (
        not psutil.pid_exists(rendezvous["pid"])
        or psutil.Process(rendezvous["pid"]).status() == psutil.STATUS_ZOMBIE
    )
    assert Path(run / "records.parquet").exists()
