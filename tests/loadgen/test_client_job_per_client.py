"""One client job per client for all its levels: a benchmark of many levels queues once.

Sessions against the token server (a real HTTP server with known timing), run by the local
executor through the same code as on Slurm: each client is one job, every level an order to it;
levels keep their own records, progress and verdicts; a client's job ends by itself when the
session moves on or ends; a task killed outright ends its level early and the next level gets
a new job.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pandas as pd
import psutil
import pytest

from pytest_aifactory.testing.token_server import TokenServer
from tests.helpers import processes_matching, run_benchmark, start_benchmark, wait_for
from tests.helpers import write_recipe as write

pytestmark = pytest.mark.slow  # pytest sessions with client jobs

LEVELS = [1, 2, 4]


def client(levels: list[int], requests: int, per_node: int = 2) -> dict[str, Any]:
    return {
        "kind": "openai",
        "service": "srv",
        "processes_per_node": per_node,
        "dataset": {"input_tokens": 8, "output_tokens": 4},
        "load": {"levels": levels, "requests": requests, "warmup_requests": 1},
    }


def recipe(url: str, clients: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "client-jobs",
        "services": {"srv": {"kind": "external", "url": url, "health": {"http": "/health"}}},
        "clients": clients,
        "slo": {name: {"error_rate": {"max": 0.0}} for name in clients},
        "monitor": {"prometheus": False},
    }


def jobs_of(run: Path) -> list[dict[str, Any]]:
    return [j for j in json.loads((run / "jobs.json").read_text())["jobs"] if j["role"] == "client"]


def test_every_level_of_a_client_runs_in_one_job(tmp_path: Path) -> None:
    with TokenServer(ttft_ms=5, gap_ms=2) as server:
        document = recipe(server.url, {"chat": client(LEVELS, 8), "batch": client([3], 6)})
        path = write(tmp_path / "recipe.yaml", document)
        session = run_benchmark(tmp_path, path, "-v", timeout=300)
    assert session.returncode == 0, session.output
    (run,) = session.run_dirs()
    jobs = {j["name"]: j for j in jobs_of(run)}
    assert sorted(jobs) == ["client-batch", "client-chat"]
    # each ended by itself once it had no more levels to run, not by being cancelled
    assert {j["state"] for j in jobs.values()} == {"FINISHED"}, jobs
    chat_orders = sorted(p.name for p in (run / "orders" / "client-chat").glob("order.*"))
    assert chat_orders == ["order.0", "order.1", "order.2"]
    assert (run / "orders" / "client-chat" / "stop").exists()
    # each level keeps its own records, processes and verdict
    records = pd.read_parquet(run / "records.parquet")
    measured = records[records["phase"] == "measure"]
    per_test = measured.groupby("test_id").size().to_dict()
    assert sorted(per_test.values()) == [6, 8, 8, 8], per_test
    summary = session.summary()
    assert [t["passed"] for t in summary["tests"]] == [True] * 4
    level_4 = next(t for t in summary["tests"] if t["name"].endswith("[chat-concurrency-4]"))
    level_4_records = measured[measured["test_id"] == level_4["test_id"]]
    assert sorted(level_4_records["process"].unique()) == [0, 1]
    assert not processes_matching(str(run))


def client_task(run: Path, job: str, rank: int) -> psutil.Process | None:
    """The task of a client job with this rank (its own process under submitit)."""
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info.get("cmdline") or [])
        if f"{run}/jobs/{job}" not in cmdline:
            continue
        try:
            if proc.environ().get("SUBMITIT_LOCAL_GLOBALID") == str(rank):
                return proc
        except psutil.Error:
            continue
    return None


def lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_a_killed_task_ends_its_level_early_and_the_next_level_gets_a_new_job(
    tmp_path: Path,
) -> None:
    with TokenServer(ttft_ms=20, gap_ms=5) as server:
        document = recipe(server.url, {"chat": client([2, 1], 0)})
        # longer than a silent task takes to be noticed: process 0 is still busy by then
        document["clients"]["chat"]["load"] = {"levels": [2, 1], "duration_s": 12}
        document["platform"] = {**document.get("platform", {}), "silent_task_s": 6}
        path = write(tmp_path / "recipe.yaml", document)
        proc = start_benchmark(tmp_path, path)
        try:
            reports = tmp_path / "reports"
            wait_for(lambda: list(reports.glob("*/records/*/p0001.jsonl")), 120, "level 1 runs")
            (records_1,) = reports.glob("*/records/*/p0001.jsonl")
            run = records_1.parents[2]
            wait_for(lambda: lines(records_1) >= 5, 60, "process 1 measuring")
            task = wait_for(lambda: client_task(run, "client-chat", 1), 30, "task 1")
            task.send_signal(signal.SIGKILL)
            output, _ = proc.communicate(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    summary = json.loads((run / "summary.json").read_text())
    first, second = summary["tests"]
    # only the killed process ended early: the other ran its whole share
    (early,) = first["ended_early"]
    assert early["process"] == 1
    assert "stopped answering" in early["error"], early
    assert early["sent"] == lines(records_1)
    assert early["ran_s"] < 10
    assert not first["passed"]
    measured = pd.read_parquet(run / "records.parquet").query("phase == 'measure'")
    process_0 = measured[(measured["test_id"] == first["test_id"]) & (measured["process"] == 0)]
    assert process_0["end_ts"].max() - process_0["send_ts"].min() > 11
    # the next level ran whole, in a job of its own: the broken one took no more orders
    assert second["passed"], output
    assert "ended_early" not in second
    jobs = {j["name"]: j["state"] for j in jobs_of(run)}
    assert sorted(jobs) == ["client-chat", "client-chat-2"], jobs
    assert jobs["client-chat-2"] == "FINISHED"
    assert not processes_matching(str(run))
