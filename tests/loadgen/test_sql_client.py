"""The `postgres` service kind and the `sql` client against a real PostgreSQL server.

The server is started from the kind's own plan (its argv and env, placeholders filled as a job
fills them) and stopped by its PID; the client runs in this process through `run_load`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pytest_aifactory.cluster.rendezvous import free_port
from pytest_aifactory.loadgen.records import read_records
from pytest_aifactory.loadgen.runner import run_load
from pytest_aifactory.loadgen.spec import LoadSpec
from pytest_aifactory.loadgen.sql import (
    PASSWORD_ENV,
    SqlConnectError,
    connect,
    ensure_loaded,
    target_of,
)
from pytest_aifactory.recipe import Recipe
from pytest_aifactory.redact import Redactor, secrets_from_env
from pytest_aifactory.services.base import ServiceConfigError, ServicePlan, get_kind
from pytest_aifactory.services.kinds import postgres_entry
from pytest_aifactory.testing import load_specs
from tests.components import require_component
from tests.helpers import running_plan

HOST = "127.0.0.1"


needs_postgres = pytest.mark.requires("postgresql")


def recipe(service: dict[str, Any] | None = None) -> Recipe:
    return Recipe.model_validate(
        {
            "name": "sql-test",
            "services": {"db": {"kind": "postgres", **(service or {})}},
            "clients": {"c": {"kind": "sql", "service": "db"}},
        }
    )


def plan_of(service: dict[str, Any] | None = None) -> ServicePlan:
    document = recipe(service)
    return get_kind("postgres").plan("db", document.services["db"], document)


@dataclass
class Server:
    port: int
    client_env: dict[str, str]
    pid: int
    scratch: Path

    def connect(self, password: str | None = None) -> psycopg.Connection[Any]:
        env = self.client_env
        return psycopg.connect(
            host=HOST,
            port=self.port,
            user=env["AIFACTORY_PG_USER"],
            password=password if password is not None else env[PASSWORD_ENV],
            dbname=env["AIFACTORY_PG_DATABASE"],
            autocommit=True,
        )


def _ready(server: Server) -> bool:
    try:
        server.connect().close()
    except psycopg.OperationalError as err:
        if "starting up" in str(err):
            return False
        raise
    return True


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    """One server for the module, run exactly as a job runs the plan."""
    require_component("postgresql")
    plan = plan_of({"args": ["-c", "max_connections=40"]})
    with running_plan(plan, "postgres", host=HOST) as running:
        server = Server(running.port, plan.client_env, running.process.pid, running.scratch)
        # listening is not ready: the server refuses sessions while it starts up
        running.wait_until(lambda: _ready(server), "postgres accepting sessions")
        yield server


def sql_spec(
    server: Server, tmp_path: Path, name: str, options: dict[str, Any], **load: Any
) -> LoadSpec:
    settings: dict[str, Any] = {"mode": "concurrency", "level": 2, "requests": 40}
    settings.update(load)
    return load_specs.load_spec(
        tmp_path,
        client=name,
        kind="sql",
        base_url=f"http://{HOST}:{server.port}",
        records_path=str(tmp_path / f"{name}.jsonl"),
        progress_path=str(tmp_path / f"{name}.progress.json"),
        options=options,
        service_env=dict(server.client_env),
        service_kind="postgres",
        **settings,
    )


# -- the plan -----------------------------------------------------------------------------------


@needs_postgres
def test_plan_makes_a_password_per_run_and_keeps_it_off_the_command_line() -> None:
    first, second = plan_of(), plan_of()
    password = first.client_env[PASSWORD_ENV]
    assert len(password) >= 16
    assert password != second.client_env[PASSWORD_ENV]
    assert first.env[PASSWORD_ENV] == password
    assert not any(password in arg for arg in first.argv)
    assert {"{scratch}", "{host}", "{port}"} <= set(first.argv)
    assert first.health.http_path is None  # a TCP check: PostgreSQL speaks no HTTP
    # what the run's logs and summaries are cleaned with finds it, by value and by name
    assert password in secrets_from_env(first.client_env)
    text = Redactor().text(f"env {PASSWORD_ENV}={password} user=aifactory")
    assert password not in text
    assert "user=aifactory" in text


@pytest.mark.requires("prometheus-postgres-exporter")
def test_a_monitored_server_gets_its_exporter_on_the_next_port() -> None:
    plan = plan_of()
    assert plan.exporter is not None
    assert (plan.metrics_path, plan.metrics_port_offset, plan.ports) == ("/metrics", 1, 2)
    assert "--web.listen-address={host}:{metrics_port}" in plan.exporter.argv
    password = plan.client_env[PASSWORD_ENV]
    assert not any(password in arg for arg in plan.exporter.argv)
    assert plan.exporter.env["DATA_SOURCE_PASS"] == password
    # its own queries run in the maintenance database, not among the benchmark's transactions
    assert plan.exporter.env["DATA_SOURCE_URI"].startswith("{host}:{port}/postgres?")
    assert plan.exporter.env["DATA_SOURCE_NAME"] == ""


def test_without_monitoring_or_exporter_the_server_has_no_metrics(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    document = recipe()
    document.monitor.prometheus = False
    unmonitored = get_kind("postgres").plan("db", document.services["db"], document)
    monkeypatch.setenv("PATH", str(tmp_path))  # no exporter anywhere
    for plan in (unmonitored, plan_of()):
        assert plan.exporter is None
        assert (plan.metrics_path, plan.ports) == (None, 1)


def test_plan_names_a_folder_that_is_no_postgresql_bin_folder(tmp_path: Path) -> None:
    with pytest.raises(ServiceConfigError) as caught:
        plan_of({"model": str(tmp_path)})
    assert "service 'db'" in str(caught.value)
    assert "model" in str(caught.value)
    assert "not a PostgreSQL bin folder" in str(caught.value)


def test_target_needs_the_services_credentials(make_load_spec: Callable[..., LoadSpec]) -> None:
    spec = make_load_spec(kind="sql", base_url="http://127.0.0.1:5432", service_kind="s3")
    with pytest.raises(ValueError, match="service of kind postgres, got 's3'"):
        target_of(spec)


# -- the server ---------------------------------------------------------------------------------


def test_server_is_the_jobs_process_and_keeps_data_in_scratch(server: Server) -> None:
    pid_file = server.scratch / "pgdata" / "postmaster.pid"
    assert int(pid_file.read_text().split()[0]) == server.pid
    with server.connect() as conn:
        assert conn.execute("SHOW max_connections").fetchone() == ("40",)  # recipe args
        row = conn.execute("SHOW data_directory").fetchone()
    assert row is not None
    assert row[0] == str(server.scratch / "pgdata")


def test_wrong_password_is_refused(server: Server, tmp_path: Path) -> None:
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        server.connect(password="not-the-password")
    wrong = {**server.client_env, PASSWORD_ENV: "not-the-password"}
    spec = sql_spec(server, tmp_path, "wrong", {"mix": "read-only"})
    bad = dataclasses.replace(spec, service_env=wrong)
    with pytest.raises(SqlConnectError) as caught:
        run_load(bad)
    assert "password authentication failed" in str(caught.value)
    assert "not-the-password" not in str(caught.value)


# -- the client ---------------------------------------------------------------------------------


def test_processes_starting_together_load_the_tables_once(server: Server) -> None:
    with server.connect() as conn:
        conn.execute("DROP TABLE IF EXISTS aifactory_sql_dataset")

    async def load_twice() -> list[Any]:
        target = target_of(sql_spec(server, Path("/unused"), "x", {}))
        conns = [await connect(target), await connect(target)]
        try:
            return list(await asyncio.gather(*(ensure_loaded(c, 1) for c in conns)))
        finally:
            for conn in conns:
                await conn.close()

    outcomes = asyncio.run(load_twice())
    loaded = [o for o in outcomes if o is not None]
    assert len(loaded) == 1
    assert loaded[0][1] == 100_000
    with server.connect() as conn:
        counts = [
            conn.execute(f"SELECT count(*) FROM {table}").fetchone()
            for table in ("pgbench_branches", "pgbench_tellers", "pgbench_accounts")
        ]
    assert counts == [(1,), (10,), (100_000,)]


def test_tpcb_transactions_really_happen(server: Server, tmp_path: Path) -> None:
    spec = sql_spec(
        server, tmp_path, "tpcb", {"mix": "tpcb", "scale": 1}, requests=60, warmup_requests=3
    )
    with server.connect() as conn:
        before = conn.execute("SELECT count(*) FROM pgbench_history").fetchone()
    outcome = run_load(spec)
    records = read_records([spec.records_path])
    measured = records[records["phase"] == "measure"]
    assert outcome["completed"] == 60
    assert outcome["failed"] == 0
    assert set(measured["op"]) == {"tpcb"}
    assert (measured["latency_ms"] > 0).all()
    assert (measured["end_ts"] >= measured["send_ts"]).all()
    committed = int((records["phase"] != "setup").sum())  # warmup transactions commit too
    with server.connect() as conn:
        after = conn.execute("SELECT count(*) FROM pgbench_history").fetchone()
        # TPC-B's consistency: every delta went to one account, teller and branch
        sums = conn.execute(
            "SELECT (SELECT sum(abalance) FROM pgbench_accounts),"
            " (SELECT sum(tbalance) FROM pgbench_tellers),"
            " (SELECT sum(bbalance) FROM pgbench_branches),"
            " (SELECT sum(delta) FROM pgbench_history)"
        ).fetchone()
    assert before is not None
    assert after is not None
    assert sums is not None
    assert after[0] - before[0] == committed == 63
    assert len(set(sums)) == 1


def test_point_reads_at_a_rate_change_nothing(server: Server, tmp_path: Path) -> None:
    spec = sql_spec(
        server,
        tmp_path,
        "point",
        {"mix": "read-only", "scale": 1},
        mode="rate",
        level=100,
        arrival="constant",
        requests=30,
        max_concurrency=2,
    )
    with server.connect() as conn:
        before = conn.execute("SELECT count(*) FROM pgbench_history").fetchone()
    outcome = run_load(spec)
    records = read_records([spec.records_path])
    assert outcome["completed"] == 30
    assert outcome["failed"] == 0
    assert set(records["op"]) == {"point"}
    assert (records["queue_ms"] >= 0).all()
    with server.connect() as conn:
        assert conn.execute("SELECT count(*) FROM pgbench_history").fetchone() == before


def test_a_failed_transaction_is_an_error_record(server: Server, tmp_path: Path) -> None:
    """Branches locked by another session: each transaction waits for them past the request
    timeout, and the server cancels it."""
    spec = sql_spec(server, tmp_path, "slow", {"mix": "tpcb"}, requests=3, level=1, timeout_s=0.2)
    with server.connect() as conn, conn.transaction():
        conn.execute("LOCK TABLE pgbench_branches IN EXCLUSIVE MODE")
        outcome = run_load(spec)
    records = read_records([spec.records_path])
    assert outcome["failed"] == 3
    assert outcome["completed"] == 0
    assert records["error"].str.startswith("QueryCanceled: canceling statement").all()


def _entry(scratch: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", postgres_entry.__name__, "--data", str(scratch)]
    argv += ["--host", HOST, "--port", str(free_port(HOST))]
    environ = {k: v for k, v in os.environ.items() if k != PASSWORD_ENV}
    return subprocess.run(
        argv, env={**environ, **env}, capture_output=True, text=True, timeout=60, check=False
    )


def test_entry_refuses_to_start_a_server_without_a_password(tmp_path: Path) -> None:
    done = _entry(tmp_path / "scratch", {})
    assert done.returncode == 1
    assert f"{PASSWORD_ENV} is not set" in done.stderr
    assert not (tmp_path / "scratch" / "pgdata").exists()


@needs_postgres
@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the folder to another account")
def test_entry_says_when_the_server_account_cannot_reach_scratch(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    done = _entry(private / "scratch", {PASSWORD_ENV: "pw-for-a-test"})
    assert done.returncode == 1
    assert "account 'postgres' cannot reach" in done.stderr
    assert "pw-for-a-test" not in done.stderr
