"""The run's monitoring, as another account on the same node sees it: Prometheus, the
pushgateway, the node exporter and the DCGM exporter a job starts each refuse whoever lacks the
run's credentials, Prometheus cannot be stopped over HTTP, pushed series cannot pose as a
server's, and no run's pushgateway hands its state to the next."""

from __future__ import annotations

import contextlib
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pytest_aifactory import direct_http
from pytest_aifactory.cluster.child import stop_child
from pytest_aifactory.cluster.local import LocalJobExecutor
from pytest_aifactory.cluster.rendezvous import free_port, free_port_block
from pytest_aifactory.cluster.rundir import RunDir, make_run_id
from pytest_aifactory.endpoints import Endpoint
from pytest_aifactory.loadgen.live import LivePusher, fetch_client_counters
from pytest_aifactory.monitor.credentials import MonitorCredentials
from pytest_aifactory.monitor.gpu_exporter import gpu_exporter
from pytest_aifactory.monitor.layout import tsdb_dir
from pytest_aifactory.monitor.node_exporter import node_exporter
from pytest_aifactory.monitor.prometheus_config import (
    EXPORTER_SERVICES_JOB,
    SCRAPE_JOBS,
    SITE_EXPORTERS_JOB,
)
from pytest_aifactory.monitor.run_monitor import RunMonitor
from pytest_aifactory.monitor.series import RUN_LABEL, service_series
from pytest_aifactory.monitor.targets import read_targets
from pytest_aifactory.services.base import get_kind
from pytest_aifactory.services.kinds.postgres import exporter_for
from pytest_aifactory.services.launch import ServiceLaunch, TaskPlace, _start_exporter
from pytest_aifactory.services.manager import ServiceManager
from pytest_aifactory.testing.other_user import OtherUser
from tests.factories import recipe
from tests.helpers import accepts, running_dcgm_exporter, wait_for
from tests.monitor.gpu_node import fake_gpu_node

pytestmark = [
    pytest.mark.slow,
    pytest.mark.requires("prometheus", "prometheus-pushgateway", "prometheus-node-exporter"),
]

SCRAPE_INTERVAL_S = 0.5
NODE = "n1"


@dataclass
class Stack:
    run: RunDir
    monitor: RunMonitor
    node_exporter: str
    """`host:port` of the node exporter the run started."""

    @property
    def credentials(self) -> MonitorCredentials:
        assert self.monitor.credentials is not None
        return self.monitor.credentials

    @property
    def prometheus(self) -> str:
        assert self.monitor.prometheus is not None
        return self.monitor.prometheus.url

    @property
    def pushgateway(self) -> str:
        assert self.monitor.pushgateway is not None
        return self.monitor.pushgateway.url


@contextlib.contextmanager
def monitored(tmp: Path, name: str) -> Iterator[Stack]:
    """A run's monitoring as the driver starts it (Prometheus and the pushgateway as jobs), and
    its node exporter as a service job runs it; no service."""
    run = RunDir.create(tmp / "reports", make_run_id(name))
    run.start_heartbeat()
    document = recipe(
        name=name,
        monitor={
            "prometheus": True,
            "scrape_interval_s": SCRAPE_INTERVAL_S,
            "gpu_exporter_port": None,
        },
    )
    executor = LocalJobExecutor(run)
    services = ServiceManager(document, run, executor)
    monitor = RunMonitor(document.monitor, run, services, "local")
    try:
        monitor.start()
        assert monitor.mode == "prometheus", monitor.warnings
        assert monitor.node_exporter is not None
        with node_exporter(monitor.node_exporter, NODE, "127.0.0.1"):
            (target,) = read_targets(run.root, ("nodes",))
            yield Stack(run, monitor, target.address)
    finally:
        monitor.stop()
        executor.cancel_all()  # the pushgateway's job too, as the driver does at the end
        run.stop_heartbeat()


def up_by_role(stack: Stack) -> dict[str, float]:
    assert stack.monitor.client is not None
    found = stack.monitor.client.query(f'up{{{RUN_LABEL}="{stack.run.run_id}"}}')
    return {entry["metric"]["aif_role"]: float(entry["value"][1]) for entry in found}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with monitored(tmp_path_factory.mktemp("monitored"), "guarded") as running:
        wanted = {"node": 1.0, "pushgateway": 1.0, "prometheus": 1.0}
        wait_for(lambda: up_by_role(running) == wanted, 30, "the run's own scrapes up")
        yield running


def status_as(
    user: OtherUser, url: str, method: str = "GET", body: bytes | None = None, auth: str = ""
) -> int:
    """The HTTP status another account gets (with the `Authorization` header `auth`, if any)."""
    code = f"""
import urllib.error, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({{}}))
request = urllib.request.Request({url!r}, data={body!r}, method={method!r})
if {auth!r}:
    request.add_header("Authorization", {auth!r})
try:
    print(opener.open(request, timeout=10).status)
except urllib.error.HTTPError as err:
    print(err.code)
"""
    attempt = user.python(code)
    assert attempt.returncode == 0, attempt.stderr
    return int(attempt.stdout.strip())


WRONG = "Basic YWlmYWN0b3J5Ondyb25n"  # aifactory:wrong


@pytest.mark.requires("other-user")
def test_another_account_cannot_query_or_stop_prometheus(
    stack: Stack, other_user: OtherUser
) -> None:
    query = f"{stack.prometheus}/api/v1/query?query=up"
    assert status_as(other_user, query) == 401
    assert status_as(other_user, query, auth=WRONG) == 401
    assert status_as(other_user, f"{stack.prometheus}/api/v1/targets") == 401
    assert status_as(other_user, f"{stack.prometheus}/-/quit", "POST", b"") == 401
    # and not even the run's own credentials stop it: there is no lifecycle API
    header = stack.credentials.header["Authorization"]
    assert status_as(other_user, f"{stack.prometheus}/-/quit", "POST", b"", header) == 403
    assert stack.monitor.alive()


@pytest.mark.requires("other-user")
def test_another_account_cannot_push_to_or_delete_from_the_pushgateway(
    stack: Stack, other_user: OtherUser
) -> None:
    group = f"{stack.pushgateway}/metrics/job/aifactory_client/{RUN_LABEL}/{stack.run.run_id}"
    body = b"aifactory_client_requests_completed_total 1e9\n"
    assert status_as(other_user, group, "PUT", body) == 401
    assert status_as(other_user, group, "POST", body, WRONG) == 401
    assert status_as(other_user, group, "DELETE") == 401
    assert status_as(other_user, f"{stack.pushgateway}/api/v1/admin/wipe", "PUT", b"") == 401
    assert status_as(other_user, f"{stack.pushgateway}/metrics") == 401


@pytest.mark.requires("other-user")
def test_another_account_cannot_scrape_the_node_exporter(
    stack: Stack, other_user: OtherUser
) -> None:
    assert status_as(other_user, f"http://{stack.node_exporter}/metrics") == 401
    assert status_as(other_user, f"http://{stack.node_exporter}/metrics", auth=WRONG) == 401
    # while the run's own scrapes of it go on
    assert up_by_role(stack)["node"] == 1.0


def scraped_by(stack: Stack, address: str) -> dict[str, float]:
    """The run's scrapes of `host:port` so far: Prometheus job -> `up`."""
    assert stack.monitor.client is not None
    found = stack.monitor.client.query(
        f'up{{{RUN_LABEL}="{stack.run.run_id}",instance="{address}"}}'
    )
    return {entry["metric"]["job"]: float(entry["value"][1]) for entry in found}


@pytest.mark.requires("other-user")
def test_another_account_cannot_scrape_the_gpu_exporter_a_job_starts(
    stack: Stack, other_user: OtherUser, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a GPU node where no DCGM exporter answers, the job starts one (the stand-in as
    `dcgm-exporter` beside a faked `nvidia-smi`: no GPU here) locked with the run's web config,
    and the run's Prometheus scrapes it with the password. A site's own exporter stays as open
    as the site runs it, and is scraped without the password."""
    fake_gpu_node(tmp_path, monkeypatch, gpu=True)
    run_root, run_id = stack.run.root, stack.run.run_id
    with (
        gpu_exporter(run_root, run_id, NODE, "127.0.0.1", free_port("127.0.0.1")) as started,
        running_dcgm_exporter(gpus=1) as site_address,
        gpu_exporter(run_root, run_id, "n2", "127.0.0.1", int(site_address.split(":")[1])) as site,
    ):
        assert started is not None
        assert site == site_address
        metrics = f"http://{started}/metrics"
        assert status_as(other_user, metrics) == 401
        assert status_as(other_user, metrics, auth=WRONG) == 401
        assert status_as(other_user, metrics, auth=stack.credentials.header["Authorization"]) == 200
        assert status_as(other_user, f"http://{site}/metrics") == 200  # the site's choice
        wanted = {started: {SCRAPE_JOBS["nodes"]: 1.0}, site: {SITE_EXPORTERS_JOB: 1.0}}
        wait_for(
            lambda: {address: scraped_by(stack, address) for address in wanted} == wanted,
            30,
            "both GPU exporters scraped, each by its job",
        )


@pytest.mark.requires("other-user")
def test_another_account_cannot_read_the_credentials(stack: Stack, other_user: OtherUser) -> None:
    for path in (stack.credentials.password_file, stack.credentials.web_config):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        attempt = other_user.python(f"print(open({str(path)!r}).read())")
        assert attempt.returncode != 0
        assert "Permission denied" in attempt.stderr
    config = stack.run.root / "monitor" / "prometheus.yml"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert stack.credentials.password not in config.read_text()


def test_a_pushed_series_with_the_runs_labels_is_no_server_series(stack: Stack) -> None:
    """Even a push that gets in (the run's own clients may push) cannot fill in a server's
    figures: what the gateway serves keeps the gateway's role."""
    kind = get_kind("llamacpp")
    (tokens,) = [s for s in service_series("llamacpp") if s.name == kind.generated_tokens_series]
    run_id = stack.run.run_id
    labels = f'aif_role="service",aif_service="llm",aif_kind="llamacpp",aif_node="{NODE}"'
    started_at = time.time()
    for value in (0, 50_000):
        pushed = direct_http.session().put(
            f"{stack.pushgateway}/metrics/job/aifactory_client/{RUN_LABEL}/{run_id}",
            data=f"{tokens.metric}{{{labels}}} {value}\n",
            headers=stack.credentials.header,
            timeout=5,
        )
        assert pushed.status_code == 200, pushed.text
        time.sleep(3 * SCRAPE_INTERVAL_S)
    assert stack.monitor.client is not None
    stored = stack.monitor.client.query(f'{{__name__="{tokens.metric}",{RUN_LABEL}="{run_id}"}}')
    assert stored, "the pushed series was not scraped"
    assert {entry["metric"]["aif_role"] for entry in stored} == {"pushgateway"}
    assert {entry["metric"].get("exported_aif_role") for entry in stored} == {"service"}
    result = stack.monitor.collect(
        "test_posing", "test_posing", started_at, time.time(), {"llm": "llamacpp"}, 50_000, 1.0
    )
    assert tokens.name not in set(result.samples["series"])
    assert result.server.get("llm", {}).get("output_tokens") is None


def test_two_runs_pushgateways_share_nothing(tmp_path: Path) -> None:
    """A run's pushes end with its pushgateway: the next run's starts empty."""
    with monitored(tmp_path / "first", "first") as first:
        first_run = first.run.run_id
        group = f"{first.pushgateway}/metrics/job/aifactory_client/{RUN_LABEL}/{first_run}"
        pushed = direct_http.session().put(
            group,
            data="# TYPE aifactory_client_in_flight gauge\naifactory_client_in_flight 7\n",
            headers=first.credentials.header,
        )
        assert pushed.status_code == 200, pushed.text
        served = direct_http.get(f"{first.pushgateway}/metrics", headers=first.credentials.header)
        assert first_run in served.text
    with monitored(tmp_path / "second", "second") as second:
        assert second.credentials.password != first.credentials.password
        served = direct_http.get(f"{second.pushgateway}/metrics", headers=second.credentials.header)
        assert served.status_code == 200
        assert first_run not in served.text
        # nor anything from any earlier gateway (a distribution's default persistence file
        # holds every run's groups that ever used it): a fresh gateway has no group at all
        assert "push_time_seconds{" not in served.text
        # the first run's credentials do not open the second run's gateway
        refused = direct_http.get(f"{second.pushgateway}/metrics", headers=first.credentials.header)
        assert refused.status_code == 401


def test_prometheus_is_stopped_by_its_job_and_its_database_kept(tmp_path: Path) -> None:
    with monitored(tmp_path, "stopped") as running:
        wait_for(lambda: up_by_role(running).get("node") == 1.0, 30, "node scraped")
        running.monitor.stop()
        assert running.monitor.prometheus is not None
        job = running.monitor.prometheus.job
        assert job is not None
        assert job.finished()
        assert not running.monitor.warnings, running.monitor.warnings
        assert tsdb_dir(running.run.root).is_dir()


def test_the_runs_clients_push_with_its_credentials(stack: Stack) -> None:
    """A load process's live counters get in with the run's password, and only with it."""
    key = {RUN_LABEL: stack.run.run_id, "client": "chat", "level": "1", "node": NODE}
    password_file = str(stack.credentials.password_file)
    allowed = LivePusher(stack.pushgateway, {**key, "process": "0"}, password_file=password_file)
    refused = LivePusher(stack.pushgateway, {**key, "process": "1"})
    assert allowed.push()
    assert not refused.push()
    rows = fetch_client_counters(
        stack.pushgateway, stack.run.run_id, headers=stack.credentials.header
    )
    assert [row.process for row in rows] == ["0"]


@pytest.mark.requires("other-user", "prometheus-postgres-exporter")
def test_a_services_exporter_lets_in_only_the_runs_prometheus(
    stack: Stack, other_user: OtherUser, tmp_path: Path
) -> None:
    """PostgreSQL's exporter, started as a service job starts it beside the server (no
    database behind it here: it still serves its own series), takes the run's web config;
    another account is refused, the run's Prometheus scrapes it with the monitoring password."""
    exporter = exporter_for("aifactory", "unused-password")
    assert exporter is not None
    port = free_port_block("127.0.0.1", 2)
    launch = ServiceLaunch(
        name="db",
        argv=[],
        rendezvous_path=str(tmp_path / "rendezvous"),
        exporter=exporter,
        exporter_web_config=str(stack.credentials.web_config),
        metrics_port_offset=1,
    )
    proc = _start_exporter(launch, TaskPlace(0, 1, NODE, "127.0.0.1"), port, str(tmp_path))
    assert proc is not None
    metrics = f"http://127.0.0.1:{port + 1}/metrics"
    try:
        wait_for(lambda: accepts("127.0.0.1", port + 1), 15, "the exporter listening")
        assert status_as(other_user, metrics) == 401
        assert status_as(other_user, metrics, auth=WRONG) == 401
        # the run's credentials open it (as its Prometheus sends them)
        assert status_as(other_user, metrics, auth=stack.credentials.header["Authorization"]) == 200
        stack.monitor.service_ready(
            Endpoint(
                name="db",
                kind="postgres",
                host="127.0.0.1",
                port=port,
                url=f"http://127.0.0.1:{port}",
                served_model=None,
                metrics_url=metrics,
                metrics_basic_auth=True,
            )
        )
        # scraped by the job that sends the monitoring password, not the one sending the key
        # (with no database behind it, the exporter's answer may outlast the scrape timeout)
        assert stack.monitor.client is not None
        scraped = [t for t in stack.monitor.client.targets() if t["scrapeUrl"] == metrics]
        assert [t["labels"]["job"] for t in scraped] == [EXPORTER_SERVICES_JOB]
        assert "401" not in scraped[0]["lastError"]
    finally:
        stop_child(proc)
