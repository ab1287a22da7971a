"""Another user on the same node calls the run's services without the run's credentials.

Each server is started as a run starts it (the service manager, the local executor); the other
account (tests/conftest.py, `other_user`) then calls it with the standard library only. What
must be refused is; what a server cannot lock is kept off addresses other hosts reach
(services/exposure.py). Multi-node vLLM's Ray cluster: tests/services/test_ray_auth.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pytest_aifactory.cluster.local import LocalJobExecutor
from pytest_aifactory.cluster.rundir import RunDir, make_run_id
from pytest_aifactory.endpoints import Endpoint
from pytest_aifactory.recipe import Recipe
from pytest_aifactory.services.base import get_kind
from pytest_aifactory.services.exposure import check_exposure
from pytest_aifactory.services.kinds import triton_entry
from pytest_aifactory.services.manager import ServiceManager, ServiceStartError
from pytest_aifactory.testing.other_user import OtherUser
from tests.factories import recipe
from tests.helpers import REPO

CALL = """\
import json, sys, urllib.error, urllib.request
method, url, headers, body = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
request = urllib.request.Request(url, data=body.encode() or None, headers=headers, method=method)
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    with opener.open(request, timeout=20) as answer:
        print(answer.status)
except urllib.error.HTTPError as err:
    print(err.code)
"""


def call_as(
    user: OtherUser,
    method: str,
    url: str,
    headers: dict[str, str] | None = None,
    body: dict[str, Any] | None = None,
) -> int:
    """The HTTP status another account gets for one request."""
    payload = json.dumps(body) if body is not None else ""
    argv = ["/usr/bin/python3", "-c", CALL, method, url, json.dumps(headers or {}), payload]
    done = user.run(argv, timeout_s=60)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.strip())


def started(tmp: Path, plan: Recipe, name: str) -> Iterator[Endpoint]:
    """Service `name` of `plan`, started as a run starts it, stopped afterwards."""
    run = RunDir.create(tmp / "reports", make_run_id("auth"))
    run.start_heartbeat()
    services = ServiceManager(plan, run, LocalJobExecutor(run))
    try:
        yield services.endpoint(name)
    finally:
        services.stop_all()
        run.stop_heartbeat()


# -- what cannot be locked stays off other hosts' reach -----------------------------------------


def one_service(kind: str, **keys: Any) -> Recipe:
    document: dict[str, Any] = {"name": "open", "services": {"db": {"kind": kind, **keys}}}
    return Recipe.model_validate(document)


@pytest.mark.parametrize("kind", ["chroma", "milvus", "triton"])
def test_a_server_without_credentials_is_refused_where_other_hosts_reach_it(
    tmp_path: Path, kind: str
) -> None:
    plan = one_service(kind, host="0.0.0.0")
    run = RunDir.create(tmp_path / "reports", make_run_id("open"))
    executor = LocalJobExecutor(run)
    with pytest.raises(ServiceStartError) as refused:
        ServiceManager(plan, run, executor).endpoint("db")
    message = str(refused.value)
    assert f"service 'db' (kind {kind})" in message
    assert "takes no credentials" in message or "take no key" in message
    assert "address 0.0.0.0" in message
    assert "`exclusive: true` on service 'db'" in message
    assert not run.rendezvous_path("db").exists()  # refused before any job


@pytest.mark.parametrize("kind", ["chroma", "milvus", "triton"])
def test_on_a_cluster_only_exclusive_nodes_or_loopback_take_them(kind: str) -> None:
    service_kind = get_kind(kind)
    node_address = one_service(kind).services["db"]
    with pytest.raises(Exception, match="its node's own address"):
        check_exposure("db", node_address, service_kind, "slurm")
    check_exposure("db", one_service(kind, exclusive=True).services["db"], service_kind, "slurm")
    for loopback in ("127.0.0.1", "::1", "localhost"):
        check_exposure("db", one_service(kind, host=loopback).services["db"], service_kind, "slurm")
    check_exposure("db", node_address, service_kind, "local")  # loopback on this machine


def test_servers_that_lock_themselves_may_listen_anywhere() -> None:
    for kind in ("llamacpp", "vllm", "postgres", "s3"):
        service = one_service(kind, host="0.0.0.0").services["db"]
        check_exposure("db", service, get_kind(kind), "slurm")


# -- another account against running servers ---------------------------------------------------


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    document = yaml.safe_load((REPO / "recipes" / "triton.yaml").read_text())
    plan = Recipe.model_validate(document)
    yield from started(tmp_path_factory.mktemp("triton-auth"), plan, "triton")


@pytest.mark.slow
@pytest.mark.requires("tritonserver", "other-user")
def test_triton_refuses_its_administrative_protocols_to_another_user(
    triton: Endpoint, other_user: OtherUser
) -> None:
    index = f"{triton.url}/v2/repository/index"
    unload = f"{triton.url}/v2/repository/models/mlp/unload"
    assert call_as(other_user, "POST", index) == 403
    assert call_as(other_user, "POST", unload) == 403
    wrong = {triton_entry.KEY_HEADER: "guess-0123456789"}
    assert call_as(other_user, "POST", index, wrong) == 403
    assert call_as(other_user, "GET", f"{triton.url}/v2/models/stats") == 403
    assert call_as(other_user, "POST", f"{triton.url}/v2/logging", body={}) == 403
    # what stays open, as the README says: health, metadata and inference
    assert call_as(other_user, "GET", f"{triton.url}/v2/health/ready") == 200
    assert call_as(other_user, "GET", f"{triton.url}/v2/models/mlp") == 200


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    plan = recipe(name="auth", service={"args": ["--parallel", "1"]})
    yield from started(tmp_path_factory.mktemp("llama-auth"), plan, "llm")


@pytest.mark.slow
@pytest.mark.requires("llama-server", "other-user")
def test_llama_cpp_refuses_another_user_without_the_runs_key(
    llama: Endpoint, other_user: OtherUser
) -> None:
    completion = {"model": "smollm2-135m", "prompt": "Hello", "max_tokens": 1}
    url = f"{llama.url}/v1/completions"
    assert call_as(other_user, "POST", url, body=completion) == 401
    guessed = {"Authorization": "Bearer guess-0123456789"}
    assert call_as(other_user, "POST", url, guessed, completion) == 401
    assert call_as(other_user, "POST", f"{llama.url}/tokenize", body={"content": "hi"}) == 401
    assert call_as(other_user, "GET", f"{llama.url}/metrics") == 401
    # what stays open, as the README says: its health check alone
    assert call_as(other_user, "GET", f"{llama.url}/health") == 200
    assert call_as(other_user, "GET", f"{llama.url}/models") == 401
