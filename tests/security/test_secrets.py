"""A run's secrets stay its owner's: kept outside the run folder, unreadable by other accounts,
masked where shown, never handed to a proxy; the run keeps going through passing faults and
acts only on its owner's runs."""

from __future__ import annotations

import contextlib
import datetime as dt
import http.server
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from pytest_aifactory import direct_http
from pytest_aifactory.cli import main
from pytest_aifactory.cluster import rundir as rundir_module
from pytest_aifactory.cluster.local import LocalJobExecutor
from pytest_aifactory.cluster.rendezvous import free_port
from pytest_aifactory.cluster.run_control import find_kept_services
from pytest_aifactory.cluster.run_records import (
    JobRecord,
    RunRecord,
    process_ref,
    state_dir,
    write_run,
)
from pytest_aifactory.cluster.rundir import (
    MIN_API_KEY_LENGTH,
    RunDir,
    make_run_id,
    private_root_of,
)
from pytest_aifactory.monitor.prometheus_config import write_config
from pytest_aifactory.monitor.query import PrometheusClient
from pytest_aifactory.monitor.scraper import DirectScraper
from pytest_aifactory.monitor.series import KIND_LABEL, SERVICE_LABEL
from pytest_aifactory.monitor.targets import Target, base_labels, write_target
from pytest_aifactory.redact import run_redactor
from pytest_aifactory.services.base import API_KEY_SETTING, HealthCheck
from pytest_aifactory.services.health import is_healthy
from pytest_aifactory.services.manager import ServiceManager, ServiceStartError
from pytest_aifactory.testing.other_user import OtherUser
from tests.factories import recipe, recipe_document
from tests.helpers import run_benchmark, start_benchmark, wait_for, write_recipe

PROXY_VARIABLES = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy")


# -- where secrets live -------------------------------------------------------------------------


def test_secrets_and_job_folders_live_in_the_private_state_folder(tmp_path: Path) -> None:
    """The run folder is what gets copied, tarred and uploaded: no key, no client credentials
    and no submitit pickle (they carry services' environments) may be in it."""
    run = RunDir.create(tmp_path / "reports", make_run_id("private"))
    key = run.api_key()
    run.save_client_settings("store", {"AIFACTORY_S3_SECRET_KEY": "s3-secret-0123456789"})
    folder = run.job_folder("service-llm")
    private = private_root_of(run.root)
    for path in (run.api_key_path, run.client_settings_path("store"), folder):
        assert private in path.parents
        assert run.root not in path.parents
    assert str(run.root) in str(private)  # a job's command line still names its run
    # every folder from the state folder down is the owner's alone
    assert stat.S_IMODE(state_dir().stat().st_mode) == 0o700
    for parent in run.api_key_path.relative_to(state_dir()).parents:
        assert stat.S_IMODE((state_dir() / parent).stat().st_mode) == 0o700, parent
    assert stat.S_IMODE(run.api_key_path.stat().st_mode) == 0o600
    everything = [p.read_bytes() for p in run.root.rglob("*") if p.is_file()]
    assert not any(key.encode() in data for data in everything)


@pytest.mark.requires("llama-server")
@pytest.mark.parametrize(
    ("service", "where"),
    [
        ({"env": {"LLAMA_API_KEY": ""}}, "env LLAMA_API_KEY is empty"),
        ({"env": {"LLAMA_API_KEY": "short-key"}}, "env LLAMA_API_KEY is 9 characters"),
        ({"args": ["--api-key", "abc"]}, "args --api-key is 3 characters"),
        ({"args": ["--api-key="]}, "args --api-key is empty"),
    ],
    ids=["empty-env", "short-env", "short-flag", "empty-flag"],
)
def test_an_empty_or_short_key_is_refused(
    tmp_path: Path, service: dict[str, Any], where: str
) -> None:
    """An empty key turns the server's authentication off; a short one is guessed."""
    run = RunDir.create(tmp_path / "reports", make_run_id("short-key"))
    services = ServiceManager(recipe(service=service), run, LocalJobExecutor(run))
    with pytest.raises(ServiceStartError) as refused:
        services.endpoint("llm")
    message = str(refused.value)
    assert message.startswith(f"service 'llm': the API key in {where}")
    assert f"at least {MIN_API_KEY_LENGTH} characters" in message
    assert not services.endpoints  # nothing was started


# -- robustness ---------------------------------------------------------------------------------


def test_the_heartbeat_survives_a_failed_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that fails once (here: the heartbeat made a dangling link, so touching it
    fails with ENOENT) must not stop the beat, or every job quits a minute later."""
    monkeypatch.setattr(rundir_module, "HEARTBEAT_INTERVAL_S", 0.05)
    run = RunDir.create(tmp_path / "reports", make_run_id("beat"))
    heartbeat = run.heartbeat_path
    failures: list[bool] = []
    original = run.beat

    def beat_once_failing() -> None:
        if not failures:
            failures.append(True)
            heartbeat.unlink()
            heartbeat.symlink_to(tmp_path / "gone" / "heartbeat")
            try:
                original()
            finally:
                heartbeat.unlink()
            return
        original()

    monkeypatch.setattr(run, "beat", beat_once_failing)
    run.start_heartbeat()
    try:
        wait_for(lambda: failures, timeout=10, what="the failed write")
        wait_for(heartbeat.is_file, timeout=10, what="a beat after the failed write")
        first = heartbeat.stat().st_mtime_ns
        wait_for(lambda: heartbeat.stat().st_mtime_ns != first, timeout=10, what="more beats")
    finally:
        run.stop_heartbeat()


@pytest.mark.slow
@pytest.mark.requires("llama-server")
def test_sighup_ends_the_session_like_sigterm(tmp_path: Path) -> None:
    """A closed terminal or ssh session: jobs stopped, what was measured saved."""
    document = recipe_document(
        name="hangup",
        service={"args": ["--parallel", "1"]},
        client={
            "dataset": {"input_tokens": 16, "output_tokens": 32},
            "load": {"levels": [1], "requests": 2000},
        },
    )
    document["monitor"] = {"prometheus": False}
    path = write_recipe(tmp_path / "recipe.yaml", document)
    report_dir = tmp_path / "reports"
    proc = start_benchmark(tmp_path, path)
    try:
        wait_for(lambda: any(report_dir.glob("*/records/*/*.jsonl")), timeout=120, what="the load")
        proc.send_signal(signal.SIGHUP)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, output
    (run,) = [p for p in report_dir.iterdir() if p.is_dir()]
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"


# -- other accounts' runs ------------------------------------------------------------------------


@pytest.fixture
def victim() -> Iterator[subprocess.Popen[bytes]]:
    """A process of ours that a planted run names as its job's."""
    proc = subprocess.Popen(["sleep", "300"])
    yield proc
    proc.kill()
    proc.wait()


@pytest.fixture
def foreign_run(
    tmp_path: Path, other_user: OtherUser, victim: subprocess.Popen[bytes]
) -> RunRecord:
    """A run folder that another account owns (planted, or shared by mistake): its job names
    a process and a log as that account chose them."""
    run_dir = tmp_path / "reports" / "20240501-120000-demo"
    run_dir.mkdir(parents=True)
    log = run_dir / "planted.out"
    log.write_text("planted log\n")
    job = JobRecord(
        name="service-llm",
        role="service",
        job_id=str(victim.pid),
        executor="local",
        state="RUNNING",
        kept=True,
        pids=[process_ref(victim.pid, "service")],
        stdout=str(log),
        submitted_at=dt.datetime.now(dt.UTC),
    )
    record = RunRecord(
        run_id=run_dir.name,
        run_dir=str(run_dir),
        recipe="demo",
        executor="local",
        driver_host=socket.gethostname(),
        started_at=dt.datetime.now(dt.UTC),
        jobs=[job],
    )
    write_run(record)
    for path in (run_dir, *run_dir.iterdir()):
        os.chown(path, other_user.uid, other_user.gid)
    return record


@pytest.mark.requires("other-user")
@pytest.mark.parametrize("command", ["stop", "logs"])
def test_stop_and_logs_refuse_another_accounts_run(
    foreign_run: RunRecord,
    victim: subprocess.Popen[bytes],
    command: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    status = main([command, foreign_run.run_dir])
    out, err = capsys.readouterr()
    assert status == 2, out + err
    assert f"{command}: run folder {foreign_run.run_dir} belongs to user aifactory-other" in err
    assert "refused" in err
    assert "planted log" not in out
    assert victim.poll() is None  # still running: nothing was stopped


@pytest.mark.requires("other-user")
def test_reuse_services_refuses_another_accounts_run(foreign_run: RunRecord) -> None:
    found, message = find_kept_services("demo", foreign_run.run_dir)
    assert found == {}
    assert "cannot reuse services" in message
    assert "belongs to user aifactory-other" in message


# -- proxies -------------------------------------------------------------------------------------


class _Recorder:
    """A listening socket posing as the site's proxy: it counts who connects, answers nothing."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections = 0
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def site_proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Recorder]:
    recorder = _Recorder()
    for variable in PROXY_VARIABLES:
        monkeypatch.setenv(variable, recorder.url)
    for variable in direct_http.NO_PROXY_VARIABLES:  # empty: nothing bypasses; restored after
        monkeypatch.setenv(variable, "")
    yield recorder
    recorder.close()


class _Answering(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"status": "success", "data": {"resultType": "vector", "result": []}}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_PUT(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def target() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answering)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_health_checks_queries_and_pushes_never_go_through_the_proxy(
    site_proxy: _Recorder, target: str
) -> None:
    from prometheus_client import CollectorRegistry, Counter, push_to_gateway

    host, port = target.split(":")
    assert is_healthy(host, int(port), HealthCheck(http_path="/health"))
    prometheus = PrometheusClient(f"http://{target}")
    assert prometheus.ready()
    prometheus.query("up")
    registry = CollectorRegistry()
    Counter("sent", "requests sent", registry=registry).inc()
    push_to_gateway(target, job="j", registry=registry, handler=direct_http.push_handler)
    assert direct_http.get(f"http://{target}/metrics").status_code == 200
    assert site_proxy.connections == 0


@pytest.mark.slow
@pytest.mark.requires("llama-server")
def test_a_run_never_reaches_the_proxy(tmp_path: Path, site_proxy: _Recorder) -> None:
    """A whole session with `http_proxy` set: health checks, the client's requests, its
    pushes, Prometheus' scrapes and queries all go straight to their targets."""
    document = recipe_document(
        name="no-proxy",
        service={"args": ["--parallel", "2"]},
        client={"dataset": {"input_tokens": 16, "output_tokens": 8}, "load": {"requests": 4}},
    )
    path = write_recipe(tmp_path / "recipe.yaml", document)
    session = run_benchmark(tmp_path, path, timeout=300)
    assert session.returncode == 0, session.output
    assert site_proxy.connections == 0


# -- what another account on the node can read after a real run -----------------------------------


@pytest.fixture
def open_base() -> Iterator[Path]:
    """A folder every account can enter (as a shared scratch file system is), so that only
    the run's own permissions stand between another account and its files."""
    base = Path(tempfile.mkdtemp(prefix="aif-secrets-", dir="/tmp"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


_WALK = """
import json, os, sys
readable, listed = [], []
for top in sys.argv[1:]:
    for root, dirs, files in os.walk(top, onerror=lambda err: None):
        listed.append(root)
        for name in files:
            try:
                with open(os.path.join(root, name), "rb") as fh:
                    readable.append([os.path.join(root, name), fh.read().decode("latin-1")])
            except OSError:
                pass
print(json.dumps({"readable": readable, "listed": listed}))
"""


@pytest.mark.slow
@pytest.mark.requires("other-user", "llama-server")
def test_another_account_can_read_no_secret_of_a_run(
    open_base: Path, other_user: OtherUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = open_base / "state"
    monkeypatch.setenv("AIFACTORY_STATE_DIR", str(state))  # the session's and ours alike
    document = recipe_document(
        name="walked",
        service={"args": ["--parallel", "2"], "env": {"PGPASSWORD": "pg-password-0123456789"}},
        client={"dataset": {"input_tokens": 16, "output_tokens": 8}, "load": {"requests": 4}},
    )
    path = write_recipe(open_base / "recipe.yaml", document)
    keys: list[str] = []
    ended = threading.Event()

    def read_key() -> None:
        """The run's key, read while the session runs: it goes with the run's end."""
        while not keys and not ended.wait(0.2):
            for found in state.glob("runs/**/secrets/api_key"):
                with contextlib.suppress(OSError):
                    keys.extend(key for key in [found.read_text().strip()] if key)

    reader = threading.Thread(target=read_key, daemon=True)
    reader.start()
    try:
        session = run_benchmark(
            open_base, path, timeout=300, env={"AIFACTORY_STATE_DIR": str(state)}
        )
    finally:
        ended.set()
        reader.join(timeout=5)
    assert session.returncode == 0, session.output
    (run,) = session.run_dirs()
    key_file = state / "runs" / run.resolve().relative_to("/") / "secrets" / "api_key"
    assert run not in key_file.parents
    (key,) = keys
    assert not key_file.exists()  # the run's secrets went with its end
    # everything the run wrote is the owner's alone (report, Prometheus, Grafana, job files)
    loose = [
        f"{p} {stat.S_IMODE(p.stat().st_mode):04o}"
        for top in (run, state)
        for p in [top, *top.rglob("*")]
        if not p.is_symlink() and stat.S_IMODE(p.stat().st_mode) & 0o077
    ]
    assert loose == []
    assert (run / "report.html").is_file()
    walked = other_user.run(
        ["/usr/bin/python3", "-c", _WALK, str(open_base / "reports"), str(state)], timeout_s=60
    )
    assert walked.returncode == 0, walked.stderr
    seen = json.loads(walked.stdout)
    assert seen["readable"] == []
    assert str(run) not in seen["listed"]
    # a report written again later is the owner's alone too, whatever the shell's umask
    (run / "report.html").unlink()
    previous = os.umask(0o022)
    try:
        assert main(["report", str(run)]) == 0
    finally:
        os.umask(previous)
    assert stat.S_IMODE((run / "report.html").stat().st_mode) == 0o600
    # and what the run shows of itself is masked
    logs = [p.relative_to(run).as_posix() for p in (run / "logs").rglob("*") if p.is_file()]
    for name in ["recipe.json", "summary.json", *logs]:
        text = (run / name).read_text(errors="replace")
        assert key not in text, name
        assert "pg-password-0123456789" not in text, name


class _KeyRecorder(http.server.BaseHTTPRequestHandler):
    """Metrics for anyone; notes which paths were sent an `Authorization` header."""

    authorized: ClassVar[dict[str, str | None]] = {}

    def do_GET(self) -> None:
        type(self).authorized[self.path] = self.headers.get("Authorization")
        body = b"up 1\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_the_runs_key_is_not_sent_to_an_external_service(tmp_path: Path) -> None:
    """An external service is someone else's server: scraping it must not hand it our key."""
    run = RunDir.create(tmp_path / "reports", make_run_id("external"))
    key = run.api_key()
    _KeyRecorder.authorized = {}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _KeyRecorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    address = f"127.0.0.1:{server.server_address[1]}"
    try:
        for name, kind in (("mine", "llamacpp"), ("theirs", "external")):
            labels = {**base_labels(run.run_id, "service", "n1"), SERVICE_LABEL: name}
            labels[KIND_LABEL] = kind
            write_target(run.root, Target("services", name, address, f"/{name}", labels))
        DirectScraper(run.root, {"service": []}).scrape_once()
    finally:
        server.shutdown()
        server.server_close()
    assert _KeyRecorder.authorized == {"/mine": f"Bearer {key}", "/theirs": None}


def test_logs_prints_job_logs_redacted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Job logs hold what servers echoed; `aifactory logs` is what gets pasted into chats."""
    run = RunDir.create(tmp_path / "reports", make_run_id("logs"))
    key = run.api_key()
    log = run.job_folder("service-llm") / "7_0_log.err"
    log.parent.mkdir(parents=True)
    log.write_text(f"listening, key {key}\nPGPASSWORD=pg-secret-77 psql\n")
    job = JobRecord(
        name="service-llm",
        role="service",
        job_id="7",
        executor="local",
        state="FINISHED",
        stderr=str(log),
        submitted_at=dt.datetime.now(dt.UTC),
    )
    write_run(
        RunRecord(
            run_id=run.run_id,
            run_dir=str(run.root),
            recipe="logs",
            executor="local",
            driver_host=socket.gethostname(),
            started_at=dt.datetime.now(dt.UTC),
            jobs=[job],
        )
    )
    assert main(["logs", str(run.root)]) == 0
    out = capsys.readouterr().out
    assert "listening, key ***" in out
    assert "PGPASSWORD=*** psql" in out
    assert key not in out
    assert "pg-secret-77" not in out


def test_a_start_failure_tail_goes_through_the_runs_redactor(tmp_path: Path) -> None:
    """A server that dies echoing a secret in words no pattern knows: the run knows the value."""
    secret = "pg-tail-secret-0123"
    program = (
        "import os, sys; "
        "print('cannot connect with', os.environ['PGPASSWORD'], file=sys.stderr); sys.exit(3)"
    )
    made = recipe(
        service={
            "kind": "command",
            "command": f'python3 -c "{program}"',
            "env": {"PGPASSWORD": secret},
        }
    )
    run = RunDir.create(tmp_path / "reports", make_run_id("tail"))
    run.redactor = run_redactor(made, env={})
    run.start_heartbeat()
    try:
        services = ServiceManager(made, run, LocalJobExecutor(run))
        with pytest.raises(ServiceStartError) as failed:
            services.endpoint("llm")
    finally:
        run.stop_heartbeat()
    message = str(failed.value)
    assert "cannot connect with ***" in message
    assert secret not in message


def test_a_client_process_bypasses_the_proxy_for_its_targets_only(
    site_proxy: _Recorder,
) -> None:
    """For the libraries a client kind may use that take no switch (httpx, gRPC): `no_proxy`
    names the run's servers, and the process's other traffic still goes through the proxy."""
    import requests

    direct_http.bypass_proxy_for(["http://10.1.2.3:8000/v1", None, "127.0.0.1:9091"])
    direct_http.bypass_proxy_for(["http://10.1.2.3:8001"])  # no host twice
    assert os.environ["no_proxy"] == os.environ["NO_PROXY"] == "10.1.2.3,127.0.0.1"
    assert requests.utils.should_bypass_proxies("http://10.1.2.3:8000/v1", no_proxy=None)
    assert not requests.utils.should_bypass_proxies("http://example.org/", no_proxy=None)


@pytest.mark.requires("prometheus")
def test_prometheus_sends_the_runs_key_to_no_external_service(tmp_path: Path) -> None:
    """The run's real Prometheus, with the configuration the run writes."""
    run = RunDir.create(tmp_path / "reports", make_run_id("external-prom"))
    key = run.api_key()
    _KeyRecorder.authorized = {}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _KeyRecorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    address = f"127.0.0.1:{server.server_address[1]}"
    for name, kind in (("mine", "llamacpp"), ("theirs", "external")):
        labels = {**base_labels(run.run_id, "service", "n1"), SERVICE_LABEL: name}
        labels[KIND_LABEL] = kind
        write_target(run.root, Target("services", name, address, f"/{name}", labels))
    config = write_config(run.root, 0.5, run.api_key_path)
    port = free_port("127.0.0.1")
    prometheus = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(
            lambda: {"/mine", "/theirs"} <= set(_KeyRecorder.authorized),
            timeout=60,
            what="Prometheus scraping both services",
        )
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=30)
        server.shutdown()
        server.server_close()
    assert _KeyRecorder.authorized == {"/mine": f"Bearer {key}", "/theirs": None}


def test_clients_of_an_external_service_are_given_no_key_of_the_runs(
    tmp_path: Path, target: str
) -> None:
    run = RunDir.create(tmp_path / "reports", make_run_id("external-client"))
    run.api_key()  # the run has a key (its own servers would get it)
    made = recipe(service={"kind": "external", "url": f"http://{target}"})
    endpoint = ServiceManager(made, run, LocalJobExecutor(run)).endpoint("llm")
    assert API_KEY_SETTING not in endpoint.client_env
