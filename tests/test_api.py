"""The Python API on runs recorded in a temporary state folder: what the CLI and the web
interface both show, and what they refuse."""

from __future__ import annotations

import ast
import datetime as dt
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_aifactory import api, api_runs
from pytest_aifactory.api_series import per_second
from pytest_aifactory.cli import main
from pytest_aifactory.cluster import run_records
from pytest_aifactory.cluster.run_records import JobRecord, RunRecord, process_ref, write_run
from pytest_aifactory.cluster.rundir import secrets_dir_of
from pytest_aifactory.monitor.layout import MonitorEndpoints, write_endpoints
from tests.helpers import write_recipe

RUN_KEY = "run-key-0123456789abcdefghij"
NOBODY = 65534


@pytest.fixture(autouse=True)
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    state = tmp_path / "state"
    monkeypatch.setenv(run_records.STATE_DIR_ENV, str(state))
    return state


def record_run(
    root: Path, name: str, jobs: list[JobRecord], started: dt.datetime, **fields: Any
) -> RunRecord:
    run_dir = root / name
    run_dir.mkdir(parents=True, mode=0o700)
    record = RunRecord(
        run_id=name,
        run_dir=str(run_dir),
        recipe="demo",
        executor="local",
        driver_host=socket.gethostname(),
        started_at=started,
        jobs=jobs,
        **fields,
    )
    write_run(record)
    run_records.index_run(record)
    return record


def finished_job(name: str, stdout: Path, stderr: Path, **fields: Any) -> JobRecord:
    return JobRecord(
        name=name,
        role="client",
        job_id="7",
        executor="local",
        state="FINISHED",
        host=socket.gethostname(),
        stdout=str(stdout),
        stderr=str(stderr),
        submitted_at=dt.datetime.now(dt.UTC),
        **fields,
    )


@pytest.fixture
def logged_run(tmp_path: Path) -> tuple[RunRecord, Path]:
    """A finished run whose client logged the run's own API key."""
    logs = tmp_path / "logs"
    logs.mkdir()
    err = logs / "client.err"
    err.write_text(f"first line\nsent key {RUN_KEY} to the server\nlast line\n")
    job = finished_job("client-chat", logs / "client.out", err)
    record = record_run(
        tmp_path / "reports", "20240501-120000-demo", [job], dt.datetime.now(dt.UTC)
    )
    secrets = secrets_dir_of(Path(record.run_dir))
    secrets.mkdir(parents=True)
    (secrets / "api_key").write_text(RUN_KEY)
    return record, err


def test_runs_lists_every_run_oldest_first_with_its_status_now(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    driver = process_ref(gone.pid, "driver")
    gone.wait()
    now = dt.datetime.now(dt.UTC)
    done = record_run(tmp_path, "20240501-110000-demo", [], now - dt.timedelta(hours=1))
    done = done.model_copy(update={"status": "complete", "ended_at": now})
    write_run(done)
    run_records.index_run(done)
    crashed = record_run(tmp_path, "20240501-120000-demo", [], now, driver=driver)

    listed = api.runs()
    assert [(r.run_id, r.status, r.recorded_status) for r in listed] == [
        (done.run_id, "complete", "complete"),
        (crashed.run_id, "running (driver gone)", "running"),
    ]
    assert listed[1].driver_alive is False
    assert api.runs(live_only=True) == []

    status = api.run_status("latest")
    assert status.summary.run_id == crashed.run_id
    assert api.run_status("20240501-11").summary.run_id == done.run_id
    data = json.loads(json.dumps(status.to_json()))
    assert data["summary"]["started_at"] == now.isoformat()
    assert data["summary"]["ended_at"] is None
    assert data["jobs"] == []


def test_run_status_shows_jobs_and_hides_the_runs_secrets(
    logged_run: tuple[RunRecord, Path],
) -> None:
    record, _ = logged_run
    job = record.jobs[0].model_copy(update={"endpoint": f"http://127.0.0.1:9/?key={RUN_KEY}"})
    write_run(record.model_copy(update={"jobs": [job]}))
    (shown,) = api.run_status(record.run_id).jobs
    assert (shown.name, shown.state, shown.checked, shown.health) == (
        "client-chat",
        "FINISHED",
        True,
        None,
    )
    assert shown.endpoint == "http://127.0.0.1:9/?key=***"
    assert RUN_KEY not in json.dumps(api.run_status(record.run_id).to_json())


def test_an_unknown_run_names_the_latest() -> None:
    with pytest.raises(api.RunNotFoundError, match="no run 'nope' \\(no runs recorded yet\\)"):
        api.run_status("nope")


def test_read_log_gives_whole_lines_redacted(logged_run: tuple[RunRecord, Path]) -> None:
    record, err = logged_run
    assert [f.label for f in api.log_files(record.run_id)] == [
        "client-chat stdout",
        "client-chat stderr",
    ]
    chunks = []
    offset = 0
    while True:
        chunk = api.read_log(record.run_id, str(err), offset, max_bytes=25)
        if chunk.next_offset == offset:
            break
        assert chunk.text.endswith("\n")
        chunks.append(chunk.text)
        offset = chunk.next_offset
    assert "".join(chunks) == "first line\nsent key *** to the server\nlast line\n"
    assert offset == err.stat().st_size

    with err.open("a") as fh:
        fh.write("half a li")
    waiting = api.read_log(record.run_id, str(err), offset)
    assert (waiting.text, waiting.next_offset, waiting.size) == ("", offset, offset + 9)
    with err.open("a") as fh:
        fh.write("ne\n")
    assert api.read_log(record.run_id, str(err), offset).text == "half a line\n"


def test_a_line_longer_than_a_read_comes_whole_up_to_a_limit(
    logged_run: tuple[RunRecord, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    record, err = logged_run
    err.write_text("x" * 100 + "\n" + "y" * 300 + "\n")
    first = api.read_log(record.run_id, str(err), 0, max_bytes=40)
    assert (first.text, first.next_offset) == ("x" * 100 + "\n", 101)
    monkeypatch.setattr(api_runs, "MAX_LINE_BYTES", 200)
    cut = api.read_log(record.run_id, str(err), 101, max_bytes=40)
    assert (cut.text, cut.next_offset) == ("y" * 200, 301)


def test_read_log_refuses_what_is_not_a_log_of_the_run(
    logged_run: tuple[RunRecord, Path],
) -> None:
    record, _ = logged_run
    for path in ("/etc/passwd", str(Path(record.run_dir) / "jobs.json")):
        with pytest.raises(api.ApiError, match=f"is not a log of run {record.run_id}"):
            api.read_log(record.run_id, path)
    with pytest.raises(api.ApiError, match="has no job 'service-llm' \\(jobs: client-chat\\)"):
        api.log_files(record.run_id, "service-llm")


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands a folder to another account")
def test_another_accounts_run_is_refused(logged_run: tuple[RunRecord, Path]) -> None:
    record, err = logged_run
    os.chown(record.run_dir, NOBODY, NOBODY)
    try:
        with pytest.raises(api.NotOwnedError, match="not to you: refused"):
            api.read_log(record.run_id, str(err))
        with pytest.raises(api.NotOwnedError):
            api.log_files(record.run_id)
        with pytest.raises(api.NotOwnedError):
            api.stop_jobs(record.run_id)
        with pytest.raises(api.NotOwnedError):
            api.stop_session(record.run_id)
    finally:
        os.chown(record.run_dir, 0, 0)


def test_live_counters_fall_back_to_the_progress_files(tmp_path: Path) -> None:
    record = record_run(tmp_path, "20240501-120000-demo", [], dt.datetime.now(dt.UTC))
    counters = api.live_counters(record.run_id)
    assert (counters.source, counters.note, counters.rows) == (
        "progress files",
        "the run has no pushgateway",
        [],
    )
    with socket.socket() as closed:  # a port nothing listens on once closed
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    write_endpoints(record.root, MonitorEndpoints("local", 1.0, url, url))
    counters = api.live_counters(record.run_id)
    assert counters.source == "progress files"
    assert counters.note is not None
    assert counters.note.startswith(f"its pushgateway at {url} does not answer")
    series = api.server_series(record.run_id)
    assert (series.series, series.note) == ([], "no service of the run has series")


def test_server_series_says_why_it_has_none(tmp_path: Path) -> None:
    record = record_run(tmp_path, "20240501-120000-demo", [], dt.datetime.now(dt.UTC))
    assert api.server_series(record.run_id).note == "the run has no Prometheus"
    with pytest.raises(api.ApiError, match="window_s"):
        api.server_series(record.run_id, window_s=0)


def test_counters_become_rates_and_a_restart_is_not_negative() -> None:
    samples = [(10.0, 100.0), (12.0, 110.0), (14.0, 4.0), (14.0, 6.0), (15.0, 10.0)]
    assert per_second(samples) == [(12.0, 5.0), (14.0, 2.0), (15.0, 4.0)]


def valid_recipe(path: Path) -> Path:
    return write_recipe(
        path,
        {
            "name": "api-demo",
            "services": {"svc": {"kind": "command", "command": "serve --port {port}"}},
            "clients": {
                "chat": {"kind": "openai", "service": "svc", "load": {"levels": [1, 2, 4]}}
            },
        },
    )


def test_validate_recipe_counts_or_lists_every_problem(tmp_path: Path) -> None:
    check = api.validate_recipe(valid_recipe(tmp_path / "ok.yaml"))
    assert (check.name, check.services, check.clients, check.test_cases) == ("api-demo", 1, 1, 3)
    bad = write_recipe(tmp_path / "bad.yaml", {"name": "x", "clients": {"c": {"kind": "nope"}}})
    with pytest.raises(api.InvalidRecipeError) as raised:
        api.validate_recipe(bad)
    assert raised.value.path == bad
    assert len(raised.value.problems) >= 1
    assert all(isinstance(p, str) and p for p in raised.value.problems)
    with pytest.raises(api.RecipeNotFoundError, match="no such recipe file"):
        api.validate_recipe(tmp_path / "missing.yaml")


def test_start_session_refuses_an_invalid_recipe_before_making_a_run(tmp_path: Path) -> None:
    bad = write_recipe(tmp_path / "bad.yaml", {"name": "x", "clients": {"c": {"kind": "nope"}}})
    with pytest.raises(api.InvalidRecipeError):
        api.start_session(bad, report_dir=tmp_path / "reports")
    assert not (tmp_path / "reports").exists()
    assert api.runs() == []


def test_start_and_stop_session_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["start", str(tmp_path / "missing.yaml")]) == 2
    assert "aifactory: " in capsys.readouterr().err
    assert main(["stop", "--session", "--all"]) == 2
    assert "--session stops one run's session" in capsys.readouterr().err
    record = record_run(tmp_path, "20240501-120000-demo", [], dt.datetime.now(dt.UTC))
    assert main(["stop", "--session", record.run_id]) == 0
    out = capsys.readouterr().out
    assert out == f"nothing to stop: no session or live job in run {record.run_id}\n"


def test_the_examples_of_docs_api_are_python() -> None:
    page = (Path(__file__).resolve().parent.parent / "docs" / "api.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", page, flags=re.DOTALL)
    assert len(blocks) >= 4
    for block in blocks:
        tree = ast.parse(block)
        called = {
            node.func.attr
            for node in ast.walk(tree)
            if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "api"
        }
        assert called <= set(api.__all__), called - set(api.__all__)


SESSION_SCRIPT = """
import pathlib, signal, sys, time
def saved(*_):
    pathlib.Path(sys.argv[1]).write_text("saved")
    sys.exit(0)
signal.signal(signal.SIGTERM, saved)
print("ready", flush=True)
time.sleep(60)
"""


def test_stop_session_lets_the_session_save_then_stops_what_is_left(tmp_path: Path) -> None:
    """A stand-in session that saves on SIGTERM (a real session takes seconds to start: the
    slow tests run one), and a kept service that outlives it."""
    saved = tmp_path / "saved"
    session = subprocess.Popen(
        [sys.executable, "-c", SESSION_SCRIPT, str(saved)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    kept = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        assert session.stdout is not None
        assert session.stdout.readline() == "ready\n"
        now = dt.datetime.now(dt.UTC)
        common: dict[str, Any] = {
            "executor": "local",
            "state": "RUNNING",
            "host": socket.gethostname(),
            "submitted_at": now,
        }
        jobs = [
            JobRecord(
                name="session",
                role="session",
                job_id=str(session.pid),
                pids=[process_ref(session.pid, "controller")],
                **common,
            ),
            JobRecord(
                name="service-db",
                role="service",
                job_id=str(kept.pid),
                kept=True,
                pids=[process_ref(kept.pid, "server")],
                **common,
            ),
        ]
        driver = process_ref(session.pid, "driver")
        record = record_run(tmp_path, "20240501-120000-demo", jobs, now, driver=driver)
        (live,) = api.runs(live_only=True)
        assert [j.name for j in live.live_jobs] == ["session", "service-db"]

        results = api.stop_session(record.run_id, grace_s=10)
        assert [(r.job, r.ok) for r in results] == [("session", True), ("service-db", True)]
        assert saved.read_text() == "saved"
        assert session.wait(timeout=5) == 0
        assert kept.wait(timeout=5) != 0
        status = api.run_status(record.run_id)
        assert {j.name: j.state for j in status.jobs} == {
            "session": "STOPPED",
            "service-db": "STOPPED",
        }
        assert status.summary.status == "stopped"
        assert api.stop_session(record.run_id) == []
    finally:
        for proc in (session, kept):
            proc.kill()
            proc.wait()
