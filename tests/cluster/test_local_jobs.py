"""Service jobs through the local executor: rendezvous, health, cancel leaves no process."""

from __future__ import annotations

import sys
from pathlib import Path

import psutil
import pytest

from pytest_aifactory.cluster.local import LocalJobExecutor
from pytest_aifactory.cluster.rendezvous import read_rendezvous
from pytest_aifactory.cluster.rundir import RunDir, driver_gone, make_run_id
from pytest_aifactory.services.base import HealthCheck, MetricsExporter
from pytest_aifactory.services.health import is_healthy
from pytest_aifactory.services.launch import ServiceLaunch, fill_placeholders, run_service
from tests.helpers import processes_matching, wait_for


@pytest.fixture
def run(tmp_path: Path) -> RunDir:
    return RunDir.create(tmp_path / "reports", make_run_id("unit"))


def test_run_directory_is_private(run: RunDir) -> None:
    assert run.root.stat().st_mode & 0o777 == 0o700
    assert run.run_id.endswith("-unit")
    assert (run.root / "jobs").is_dir()


def test_placeholders_only_touch_host_and_port() -> None:
    argv = ["srv", "--bind={host}", "{port}", '{"json": 1}', "$(rm -rf /);"]
    assert fill_placeholders(argv, "127.0.0.1", 8080) == [
        "srv",
        "--bind=127.0.0.1",
        "8080",
        '{"json": 1}',
        "$(rm -rf /);",
    ]


def test_service_job_rendezvous_health_and_cancel(run: RunDir) -> None:
    executor = LocalJobExecutor(run)
    launch = ServiceLaunch(
        name="web",
        argv=[sys.executable, "-m", "http.server", "{port}", "--bind", "{host}"],
        rendezvous_path=str(run.rendezvous_path("web")),
        heartbeat_path=str(run.heartbeat_path),
    )
    run.start_heartbeat()
    try:
        handle = executor.submit(run_service, launch, name="service-web", role="service")
        wait_for(lambda: read_rendezvous(run.rendezvous_path("web")) is not None)
        info = read_rendezvous(run.rendezvous_path("web"))
        assert info is not None
        assert info.host == "127.0.0.1"
        assert run.rendezvous_path("web").stat().st_mode & 0o777 == 0o600
        wait_for(lambda: is_healthy(info.host, info.port, HealthCheck(http_path="/")))
        server = psutil.Process(info.pid)
        assert "http.server" in " ".join(server.cmdline())
        handle.pids.append(info.pid)
        cancelled = executor.cancel_all()
        assert cancelled == [handle]
        wait_for(lambda: not psutil.pid_exists(info.pid), timeout=15)
        assert handle.finished()
    finally:
        run.stop_heartbeat()
        executor.cancel_all()


def test_server_stops_when_driver_heartbeat_goes_stale(run: RunDir) -> None:
    executor = LocalJobExecutor(run)
    run.heartbeat_path.touch()
    launch = ServiceLaunch(
        name="web",
        argv=[sys.executable, "-m", "http.server", "{port}", "--bind", "{host}"],
        rendezvous_path=str(run.rendezvous_path("web")),
        heartbeat_path=str(run.heartbeat_path),
    )
    try:
        handle = executor.submit(run_service, launch, name="service-web", role="service")
        wait_for(lambda: read_rendezvous(run.rendezvous_path("web")) is not None)
        info = read_rendezvous(run.rendezvous_path("web"))
        assert info is not None
        assert not driver_gone(run.heartbeat_path)
        run.heartbeat_path.unlink()  # the driver is gone
        assert driver_gone(run.heartbeat_path)
        wait_for(lambda: not psutil.pid_exists(info.pid), timeout=15)
        wait_for(handle.finished, timeout=15)
    finally:
        executor.cancel_all()


def http_server(port_placeholder: str) -> list[str]:
    return [sys.executable, "-m", "http.server", port_placeholder, "--bind", "{host}"]


@pytest.mark.parametrize("exporter_starts", [True, False])
def test_an_exporter_runs_beside_its_server_and_stops_with_it(
    run: RunDir, exporter_starts: bool
) -> None:
    """A server without metrics of its own (PostgreSQL) gets its exporter on the next port;
    one that cannot start is said in the job's log and the server runs on."""
    exporter_argv = http_server("{metrics_port}") if exporter_starts else ["/no/such/exporter"]
    executor = LocalJobExecutor(run)
    launch = ServiceLaunch(
        name="web",
        argv=http_server("{port}"),
        rendezvous_path=str(run.rendezvous_path("web")),
        ports=2,
        exporter=MetricsExporter(argv=exporter_argv, env={"SERVED_ON": "{host}:{port}"}),
        metrics_port_offset=1,
    )
    try:
        handle = executor.submit(run_service, launch, name="service-web", role="service")
        wait_for(lambda: read_rendezvous(run.rendezvous_path("web")) is not None)
        info = read_rendezvous(run.rendezvous_path("web"))
        assert info is not None
        wait_for(lambda: is_healthy(info.host, info.port, HealthCheck(http_path="/")))
        exporter = f"http.server {info.port + 1}"
        if exporter_starts:
            wait_for(lambda: is_healthy(info.host, info.port + 1, HealthCheck(http_path="/")))
            (line,) = processes_matching(exporter)
            environ = psutil.Process(int(line.split(":")[0])).environ()
            assert environ["SERVED_ON"] == f"{info.host}:{info.port}"
        else:
            wait_for(lambda: "exporter not started" in handle.stderr_path.read_text())
            assert is_healthy(info.host, info.port, HealthCheck(http_path="/"))
        executor.cancel_all()
        wait_for(lambda: not psutil.pid_exists(info.pid), timeout=15)
        wait_for(lambda: not processes_matching(exporter), timeout=15)
    finally:
        executor.cancel_all()
