"""Background sessions through the Python API: `start_session` against a fake OpenAI server,
followed as the web interface follows them (status, counters, logs), and `stop_session` on a
long one, which must save what it measured and leave no process behind."""

from __future__ import annotations

import json
import os
import signal
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from pytest_aifactory import api
from pytest_aifactory.cluster import run_records
from tests.helpers import REPO, processes_matching, wait_for, write_recipe

pytestmark = pytest.mark.slow


def recipe(tmp_path: Path, marker: str, load: dict[str, Any]) -> Path:
    command = (
        f"{sys.executable} -m pytest_aifactory.testing.dying_server "
        "--host {host} --port {port} "
        f"--die-after-requests 1000000 --marker {marker}"
    )
    document = {
        "name": "api-session",
        "services": {"svc": {"kind": "command", "command": command, "health_timeout_s": 60}},
        "clients": {
            "chat": {
                "kind": "openai",
                "service": "svc",
                "dataset": {"input_tokens": 8, "output_tokens": 4},
                "load": {"mode": "concurrency", "levels": [1], **load},
            }
        },
        "monitor": {"prometheus": False},
    }
    return write_recipe(tmp_path / f"{marker}.yaml", document)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def sessions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The sessions a test starts, in a temporary state folder and working folder; any still
    there at the end are killed with their whole process group (each has its own)."""
    monkeypatch.setenv(run_records.STATE_DIR_ENV, str(tmp_path / "state"))
    monkeypatch.setenv("AIFACTORY_BENCHMARK_STORAGE", str(tmp_path / ".benchmarks"))
    monkeypatch.chdir(tmp_path)
    started: list[int] = []
    try:
        yield started
    finally:
        for pid in started:
            if alive(pid):
                os.killpg(pid, signal.SIGKILL)


def test_a_background_session_runs_records_and_reports(tmp_path: Path, sessions: list[int]) -> None:
    marker = f"api-short-{uuid.uuid4().hex[:8]}"
    started = api.start_session(
        recipe(tmp_path, marker, {"requests": 8}),
        report_dir=tmp_path / "reports",
        keyword="serving",
        pytest_args=["-p", "no:cacheprovider"],
    )
    sessions.append(started.pid)
    run_dir = Path(started.run_dir)
    assert run_dir.parent == tmp_path / "reports"
    first = api.run_status(started.run_id)
    assert first.summary.recorded_status in ("submitted", "running")
    assert "session" in [job.name for job in first.jobs]
    seen = {first.summary.status}

    def ended() -> bool:
        seen.add(api.run_status(started.run_id).summary.status)
        return not alive(started.pid)

    wait_for(ended, timeout=180, what="the session to end", poll_s=0.2)
    final = api.run_status(started.run_id)
    assert final.summary.status == "complete", seen
    assert "running" in seen
    assert (run_dir / "report.html").is_file()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [t["client"] for t in summary["tests"]] == ["chat"]
    jobs = {job.name: job for job in final.jobs}
    assert jobs["session"].role == "session"
    assert jobs["client-chat"].state == "FINISHED"
    assert [r.run_id for r in api.runs()] == [started.run_id]

    labels = [log.label for log in api.log_files(started.run_id, "session")]
    assert labels == ["session stdout", "session stderr"]
    text = api.read_log(started.run_id, started.stdout).text
    assert "1 passed" in text
    assert "deselected" in text  # -k reached pytest
    assert processes_matching(marker) == []


def test_stop_session_saves_what_was_measured_and_leaves_nothing(
    tmp_path: Path, sessions: list[int]
) -> None:
    marker = f"api-long-{uuid.uuid4().hex[:8]}"
    started = api.start_session(
        recipe(tmp_path, marker, {"duration_s": 300}),
        report_dir=tmp_path / "reports",
        pytest_args=["-p", "no:cacheprovider"],
    )
    sessions.append(started.pid)

    def measuring() -> bool:
        rows = api.live_counters(started.run_id).rows
        return any(row.completed > 0 for row in rows)

    wait_for(measuring, timeout=120, what="requests counted in the progress files")
    assert processes_matching(marker) != []

    results = api.stop_session(started.run_id, grace_s=60)
    assert [(r.job, r.ok) for r in results[:1]] == [("session", True)]
    assert not alive(started.pid)
    assert processes_matching(marker) == []
    status = api.run_status(started.run_id)
    assert status.summary.status == "interrupted"
    assert {job.name: job.state for job in status.jobs}["session"] == "STOPPED"
    run_dir = Path(started.run_dir)
    assert (run_dir / "summary.json").is_file()
    assert (run_dir / "report.html").is_file()
    assert api.stop_session(started.run_id) == []


@pytest.mark.requires("postgresql", "prometheus", "prometheus-pushgateway")
def test_a_running_session_shows_its_servers_series_and_pushed_counters(
    tmp_path: Path, sessions: list[int]
) -> None:
    """PostgreSQL's exporter declares series (transactions committed...): while the session
    runs, the run's own Prometheus gives them, counters as rates, and the clients' counters
    come from the run's pushgateway."""
    document = {
        "name": "api-series",
        "services": {"db": {"kind": "postgres", "health_timeout_s": 60}},
        "clients": {
            "tpcb": {
                "kind": "sql",
                "service": "db",
                "sql": {"mix": "tpcb", "scale": 1},
                "load": {"mode": "concurrency", "levels": [2], "duration_s": 300},
            }
        },
        "monitor": {"prometheus": True, "scrape_interval_s": 0.5},
    }
    started = api.start_session(
        write_recipe(tmp_path / "series.yaml", document),
        benchmarks=str(REPO / "benchmarks" / "test_storage.py"),
        report_dir=tmp_path / "reports",
        pytest_args=["-p", "no:cacheprovider"],
    )
    sessions.append(started.pid)

    def committed() -> list[api.SeriesPoints]:
        found = api.server_series(started.run_id, window_s=60).series
        return [
            s
            for s in found
            if s.name == "postgres_transactions" and any(v > 0 for _, v in s.points)
        ]

    (transactions,) = wait_for(committed, timeout=180, what="transactions in the run's Prometheus")
    assert (transactions.service, transactions.type) == ("db", "counter")
    assert transactions.unit == "transactions/s"
    stamps = [t for t, _ in transactions.points]
    assert stamps == sorted(stamps)
    counters = wait_for(
        lambda: (c := api.live_counters(started.run_id)).rows and c,
        timeout=60,
        what="pushed client counters",
    )
    assert counters.source.startswith("pushgateway http")
    assert counters.note is None

    api.stop_session(started.run_id, grace_s=60)
    assert not alive(started.pid)
    assert processes_matching(str(tmp_path)) == []
    after = api.server_series(started.run_id)
    assert after.series == []
    assert after.note is not None
