"""A service of several servers: each replica a job of its own, all ready before the service
is, all stopped with it; one that cannot start stops the others; an external service's list of
URLs checked one by one."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from pytest_aifactory.cluster.local import LocalJobExecutor
from pytest_aifactory.cluster.rendezvous import read_rendezvous
from pytest_aifactory.cluster.rundir import RunDir, make_run_id
from pytest_aifactory.services.manager import ServiceManager, ServiceStartError
from pytest_aifactory.testing.streaming_server import StreamingServer
from tests.factories import recipe
from tests.helpers import answers

pytestmark = pytest.mark.slow  # each test starts real processes

SERVER = f"{sys.executable} -m http.server {{port}} --bind {{host}}"
FAILS_AS_REPLICA_1 = (
    f'{sys.executable} -c "import os, sys; '
    "sys.exit(3) if os.environ['AIFACTORY_SERVICE'].endswith('.replica1') else None; "
    "import http.server as h; h.test(h.SimpleHTTPRequestHandler, port={port}, bind='{host}')\""
)


@pytest.fixture
def run(tmp_path: Path) -> Iterator[RunDir]:
    run = RunDir.create(tmp_path / "reports", make_run_id("replicas"))
    run.start_heartbeat()  # the service jobs watch it, as under a session
    try:
        yield run
    finally:
        run.stop_heartbeat()


def manager(run: RunDir, service: dict[str, Any]) -> ServiceManager:
    document = recipe(name="replicas", service=service, client={"kind": "openai"})
    return ServiceManager(document, run, LocalJobExecutor(run))


def server_pids(services: ServiceManager) -> list[int]:
    return [
        pid
        for endpoint in services.endpoints.values()
        for replica in endpoint.all_replicas()
        if replica.job is not None
        for pid in replica.job.pids
    ]


def gone(pids: list[int]) -> bool:
    return not any(psutil.pid_exists(pid) for pid in pids)


def test_every_replica_is_started_and_stopped(run: RunDir) -> None:
    services = manager(
        run, {"kind": "command", "command": SERVER, "replicas": 3, "health": {"http": "/"}}
    )
    try:
        endpoint = services.endpoint("llm")
        replicas = endpoint.all_replicas()
        assert [r.replica for r in replicas] == [0, 1, 2]
        assert endpoint.urls == [r.url for r in replicas]
        assert len(set(endpoint.urls)) == 3
        assert all(answers(url + "/") for url in endpoint.urls)
        assert endpoint.alive()
        names = sorted(p.name for p in (run.root / "rendezvous").glob("llm*.json"))
        assert names == ["llm.json", "llm.replica1.json", "llm.replica2.json"]
        pids = server_pids(services)
        assert len(pids) == 3
    finally:
        services.stop_all()
    assert gone(pids)
    assert not endpoint.alive()


def test_a_replica_that_cannot_start_stops_the_others(run: RunDir) -> None:
    services = manager(
        run,
        {
            "kind": "command",
            "command": FAILS_AS_REPLICA_1,
            "replicas": 2,
            "health_timeout_s": 60,
        },
    )
    with pytest.raises(ServiceStartError) as caught:
        services.endpoint("llm")
    message = str(caught.value)
    assert "service 'llm.replica1' died while" in message, message
    assert "exited with code 3" in message
    first = read_pid(run.root / "rendezvous" / "llm.json")
    assert first is None or gone([first])
    with pytest.raises(ServiceStartError):  # remembered: not started again
        services.endpoint("llm")


def read_pid(path: Path) -> int | None:
    found = read_rendezvous(path)
    return found.pid if found is not None else None


def test_a_fixed_port_cannot_serve_replicas_on_one_machine(run: RunDir) -> None:
    services = manager(run, {"kind": "command", "command": SERVER, "replicas": 2, "port": 8123})
    with pytest.raises(ServiceStartError, match="cannot all listen on port 8123"):
        services.endpoint("llm")
    assert not list((run.root / "rendezvous").glob("*.json")), "nothing was started"


def test_an_external_service_lists_its_servers(run: RunDir) -> None:
    with StreamingServer() as first, StreamingServer() as second:
        services = manager(run, {"kind": "external", "url": [first.url, second.url + "/"]})
        endpoint = services.endpoint("llm")
    assert endpoint.urls == [first.url, second.url]
    assert [r.replica for r in endpoint.all_replicas()] == [0, 1]
    assert [r.port for r in endpoint.all_replicas()] == [
        int(first.url.rsplit(":", 1)[1]),
        int(second.url.rsplit(":", 1)[1]),
    ]


def test_an_unreachable_external_server_is_named(run: RunDir) -> None:
    with StreamingServer() as first:
        dead = "http://127.0.0.1:9"  # discard: nothing listens
        services = manager(
            run, {"kind": "external", "url": [first.url, dead], "health_timeout_s": 0.5}
        )
        with pytest.raises(ServiceStartError, match=f"'llm' at {dead} is not reachable"):
            services.endpoint("llm")
