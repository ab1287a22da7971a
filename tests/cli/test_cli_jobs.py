"""`aifactory status/stop/logs` and kept services, against real benchmark sessions."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests
import yaml

from pytest_aifactory.cli import main
from pytest_aifactory.cluster import run_records
from pytest_aifactory.cluster.run_records import JobRecord, RunRecord, process_ref, write_run
from pytest_aifactory.cluster.rundir import private_root_of, secrets_dir_of
from pytest_aifactory.tabulate import format_table
from tests.helpers import (
    REPO,
    benchmark_in_own_group,
    processes_matching,
    run_benchmark,
    wait_for,
    write_recipe,
)


@pytest.fixture
def state_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = {run_records.STATE_DIR_ENV: str(tmp_path / "state")}
    monkeypatch.setenv(run_records.STATE_DIR_ENV, env[run_records.STATE_DIR_ENV])
    return env


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def table_row(text: str, first_cell: str) -> str:
    (row,) = [line for line in text.splitlines() if line.startswith(first_cell + " ")]
    return row


def web_recipe(tmp_path: Path, www: Path) -> Path:
    www.mkdir()
    document: dict[str, Any] = {
        "name": "kept-web",
        "services": {
            "web": {
                "kind": "command",
                "command": f"python3 -m http.server {{port}} --bind {{host}} --directory {www}",
                "health": {"http": "/"},
                "health_timeout_s": 30,
            }
        },
        "clients": {
            "chat": {"kind": "openai", "service": "web", "load": {"levels": [1], "requests": 2}}
        },
        "monitor": {"prometheus": False},
    }
    return write_recipe(tmp_path / "recipe.yaml", document)


@pytest.mark.slow
def test_keep_status_reuse_logs_stop(
    tmp_path: Path, state_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    www = tmp_path / f"www-{uuid.uuid4().hex[:8]}"
    recipe = web_recipe(tmp_path, www)
    try:
        # -s: the kept service must not hold the driver's stdout, or this would never return
        first = run_benchmark(tmp_path, recipe, "--keep-services", "-s", env=state_env, timeout=120)
        assert first.returncode in (0, 1), first.output
        assert "kept 1 service(s) running: service-web at 127.0.0.1:" in first.stdout
        (run1,) = first.run_dirs()
        jobs1 = json.loads((run1 / "jobs.json").read_text())
        assert jobs1["keep_services"] is True
        (service,) = [j for j in jobs1["jobs"] if j["role"] == "service"]
        assert service["kept"] is True
        assert service["name"] == "service-web"
        endpoint = service["endpoint"]
        assert endpoint.startswith("127.0.0.1:")
        (server_pid,) = [p["pid"] for p in service["pids"] if p["role"] == "server"]
        assert not gone(server_pid)
        assert [j["state"] for j in jobs1["jobs"] if j["role"] == "client"] == ["FINISHED"]
        # the kept service goes on with its job folder
        private1 = private_root_of(run1)
        assert (private1 / "jobs" / "service-web").is_dir()
        assert service["stdout"].startswith(str(private1))

        # status RUN: the kept service runs and answers
        status, out, _ = cli(capsys, "status", run1.name)
        assert status == 0
        row = table_row(out, "service-web")
        assert "RUNNING (kept)" in row
        assert endpoint in row
        assert row.endswith("healthy")
        assert "status   complete, services kept" in out
        status, out, _ = cli(capsys, "status", run1.name[:15], "--json")
        assert status == 0
        data = json.loads(out)
        assert data["run"]["run_id"] == run1.name
        (view,) = [j for j in data["jobs"] if j["name"] == "service-web"]
        assert (view["state"], view["health"], view["kept"]) == ("RUNNING", "healthy", True)
        status, out, _ = cli(capsys, "status", "--json")
        listing = json.loads(out)
        assert [(r["run_id"], r["kept_services"]) for r in listing["runs"]] == [(run1.name, True)]
        status, out, _ = cli(capsys, "logs", run1.name, "service-web")
        assert status == 0
        assert f"Serving HTTP on 127.0.0.1 port {endpoint.split(':')[1]}" in out
        posts_before = out.count("POST /v1/completions")
        assert posts_before >= 2

        # a second session uses the kept service instead of starting one
        second = run_benchmark(tmp_path, recipe, "--reuse-services", env=state_env, timeout=120)
        assert second.returncode in (0, 1), second.output
        assert f"web: reused (0.0 s) {endpoint} kept by run {run1.name}" in second.stdout
        (run2,) = [d for d in second.run_dirs() if d != run1]
        jobs2 = json.loads((run2 / "jobs.json").read_text())
        assert [j["role"] for j in jobs2["jobs"]] == ["client"]
        assert jobs2["reused_services"] == [
            {
                "name": "web",
                "run_id": run1.name,
                "run_dir": str(run1),
                "job": "service-web",
                "endpoint": endpoint,
            }
        ]
        assert not gone(server_pid)
        assert processes_matching(f"http.server {endpoint.split(':')[1]}") != []
        # the second session kept nothing: its secrets and job folders went at its end
        assert not private_root_of(run2).exists()
        (client2,) = json.loads((run2 / "jobs.json").read_text())["jobs"]
        assert client2["stdout"].startswith(str(run2 / "logs"))

        # the second session's requests reached the kept service
        status, out, _ = cli(capsys, "logs", run1.name, "service-web")
        assert status == 0
        assert out.count("POST /v1/completions") > posts_before
        status, out, _ = cli(capsys, "logs", run2.name, "web", "-n", "1")
        assert status == 0  # the reused service's log, found through the run that kept it
        assert "==> service-web stderr" in out
        follow_logs(run1.name, endpoint, state_env)

        # stop: the kept service is gone
        status, out, _ = cli(capsys, "stop", run1.name)
        assert status == 0
        assert f"stopped service-web of run {run1.name} (pids " in out
        assert gone(server_pid)
        assert processes_matching(str(www)) == []
        status, out, _ = cli(capsys, "status", run1.name)
        assert "STOPPED" in table_row(out, "service-web")
        # and with it the run's secrets; its log, copied with what it logged since, stays
        assert list((tmp_path / "state" / "runs").iterdir()) == []
        status, out, _ = cli(capsys, "logs", run1.name, "service-web")
        assert status == 0
        assert f"==> service-web stderr: {run1 / 'logs' / 'service-web'}" in out
        assert out.count("POST /v1/completions") > posts_before
        assert "GET /followed-" in out  # logged after the first session's end
        status, out, _ = cli(capsys, "status", "--json")
        runs = {r["run_id"]: r for r in json.loads(out)["runs"]}
        assert list(runs) == [run2.name]  # only the latest: no run has live jobs
        assert runs[run2.name]["live_jobs"] == []
    finally:
        main(["stop", "--all"])
        capsys.readouterr()
    assert processes_matching(str(www)) == []


def follow_logs(run_id: str, endpoint: str, env: dict[str, str]) -> None:
    """`logs -f` prints what the service logs after it started, and Ctrl-C ends it cleanly."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest_aifactory.cli", "logs", run_id, "service-web", "-f"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
        cwd=REPO,
    )
    watchdog = threading.Timer(30, proc.kill)
    watchdog.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "Serving HTTP" in line:
                break
        marker = f"/followed-{uuid.uuid4().hex[:8]}"
        requests.get(f"http://{endpoint}{marker}", timeout=5)
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if marker in line:
                break
        assert any(marker in line for line in seen)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    finally:
        watchdog.cancel()
        proc.kill()
        proc.wait()
    assert proc.returncode == 0
    assert "Traceback" not in err


def synthetic_run(root: Path, jobs: list[JobRecord], **fields: Any) -> RunRecord:
    run_dir = root / "20240501-120000-demo"
    run_dir.mkdir(parents=True)
    record = RunRecord(
        run_id=run_dir.name,
        run_dir=str(run_dir),
        recipe="demo",
        executor="local",
        driver_host=socket.gethostname(),
        started_at=dt.datetime.now(dt.UTC),
        jobs=jobs,
        **fields,
    )
    write_run(record)
    run_records.update_index(record.run_dir, run_records.index_entry(record))
    return record


def test_usage_errors_name_what_exists(
    tmp_path: Path, state_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "client.err"
    log.write_text("line 1\nline 2\nlast line without newline")
    job = JobRecord(
        name="client-chat",
        role="client",
        job_id="7",
        executor="local",
        state="FINISHED",
        host=socket.gethostname(),
        stdout=str(tmp_path / "never-written.out"),
        stderr=str(log),
        submitted_at=dt.datetime.now(dt.UTC),
    )
    record = synthetic_run(tmp_path, [job])
    assert cli(capsys, "status", "nope") == (
        2,
        "",
        "aifactory: no run 'nope' (latest: 20240501-120000-demo)\n",
    )
    assert cli(capsys, "stop")[0] == 2
    status, _, err = cli(capsys, "logs", record.run_id, "service-llm")
    assert status == 2
    assert "has no job 'service-llm' (jobs: client-chat)" in err
    status, out, _ = cli(capsys, "logs", record.run_id, "client-chat", "-n", "2")
    assert status == 0
    assert out == f"==> client-chat stderr: {log} <==\nline 2\nlast line without newline\n"
    status, out, _ = cli(capsys, "stop", record.run_id)
    assert (status, out) == (0, f"nothing to stop: no live jobs in run {record.run_id}\n")


def test_logs_of_every_task_of_a_job(
    tmp_path: Path, state_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "jobs" / "client-chat"
    folder.mkdir(parents=True)
    for task in (0, 1, 10):
        (folder / f"81_{task}_log.out").write_text(f"process {task}\n")
    (folder / "812_0_log.out").write_text("another job\n")
    job = JobRecord(
        name="client-chat",
        role="client",
        job_id="81",
        executor="local",
        state="FINISHED",
        stdout=str(folder / "81_0_log.out"),
        stderr=str(folder / "81_0_log.err"),
        submitted_at=dt.datetime.now(dt.UTC),
    )
    record = synthetic_run(tmp_path, [job])
    status, out, _ = cli(capsys, "logs", record.run_id)
    assert status == 0
    headers = [line for line in out.splitlines() if line.startswith("==> ")]
    assert headers == [
        f"==> client-chat[{task}] stdout: {folder / f'81_{task}_log.out'} <=="
        for task in (0, 1, 10)
    ]
    assert "another job" not in out


def test_a_run_whose_driver_died(
    tmp_path: Path, state_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    driver = process_ref(proc.pid, "driver")
    proc.wait()
    record = synthetic_run(tmp_path, [], driver=driver)
    status, out, _ = cli(capsys, "status")
    assert status == 0
    assert "running (driver gone)" in table_row(out, record.run_id)
    status, out, _ = cli(capsys, "status", record.run_id)
    assert f"driver   pid {proc.pid} on {socket.gethostname()} (gone)" in out
    assert out.rstrip().endswith("no jobs")


def test_format_table_aligns_columns() -> None:
    text = format_table(
        ("NAME", "AGE", "HEALTH"), [("a", "5s", None), ("service-llm", "12m03s", "")], right={1}
    )
    assert text.splitlines() == [
        "NAME            AGE  HEALTH",
        "a                5s  -",
        "service-llm  12m03s  -",
    ]


def test_status_shows_no_secret(
    tmp_path: Path, state_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    job = JobRecord(
        name="service-store",
        role="service",
        job_id="9",
        executor="local",
        state="FINISHED",
        endpoint="http://admin:hunter2-secret@127.0.0.1:9000",
        stdout=str(tmp_path / "x.out"),
        stderr=str(tmp_path / "x.err"),
        submitted_at=dt.datetime.now(dt.UTC),
    )
    record = synthetic_run(tmp_path, [job])
    secrets = secrets_dir_of(Path(record.run_dir))
    secrets.mkdir(parents=True)
    (secrets / "api_key").write_text("run-key-0123456789abcdefghij")
    (secrets / "store.client.json").write_text(
        json.dumps({"AIFACTORY_S3_SECRET_KEY": "s3-secret-0123456789abcdef", "BUCKET": "b1"})
    )
    for args in (("status", record.run_id), ("status", record.run_id, "--json"), ("status",)):
        status, out, _ = cli(capsys, *args)
        assert status == 0
        assert "hunter2-secret" not in out
        assert "127.0.0.1:9000" in out or args == ("status",)
    # the run's own secrets too, wherever a job record would carry them
    job.endpoint = "http://127.0.0.1:9000/?key=run-key-0123456789abcdefghij"
    write_run(record.model_copy(update={"jobs": [job]}))
    status, out, _ = cli(capsys, "status", record.run_id, "--json")
    assert "run-key-0123456789abcdefghij" not in out
    assert "***" in out


@pytest.mark.slow
def test_ctrl_c_in_the_terminal_keeps_the_kept_service(
    tmp_path: Path, state_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A terminal's Ctrl-C is a SIGINT to the session's whole process group: the session stops
    as interrupted, but a service it was asked to keep stays up (as on Slurm) until `stop`."""
    www = tmp_path / f"www-{uuid.uuid4().hex[:8]}"
    document = yaml.safe_load(web_recipe(tmp_path, www).read_text())
    document["clients"]["chat"]["load"] = {"levels": [1], "duration_s": 120}
    recipe = write_recipe(tmp_path / "long.yaml", document)
    output = tmp_path / "session.log"
    try:
        with benchmark_in_own_group(
            tmp_path, recipe, "--keep-services", "-s", env=state_env
        ) as session:
            run = wait_for(lambda: next((tmp_path / "reports").glob("*/"), None), 60, "run folder")
            wait_for(lambda: any((run / "records").glob("*/*.jsonl")), 60, "the load running")
            os.killpg(session.pid, signal.SIGINT)
            assert session.wait(timeout=60) == pytest.ExitCode.INTERRUPTED, output.read_text()
        jobs = json.loads((run / "jobs.json").read_text())
        (service,) = [j for j in jobs["jobs"] if j["role"] == "service"]
        assert service["kept"] is True, output.read_text()
        (server_pid,) = [p["pid"] for p in service["pids"] if p["role"] == "server"]
        assert not gone(server_pid)
        assert requests.get(f"http://{service['endpoint']}/", timeout=5).status_code == 200
        assert (private_root_of(run) / "jobs" / "service-web").is_dir()
        status, out, _ = cli(capsys, "stop", run.name)
        assert status == 0, out
        wait_for(lambda: gone(server_pid), 15, "the kept server stopped")
        assert not private_root_of(run).exists()
    finally:
        main(["stop", "--all"])
        capsys.readouterr()
    assert processes_matching(str(www)) == []
