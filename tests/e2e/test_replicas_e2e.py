"""Replicas against the real llama-server: `replicas: 2` starts two servers, each a job of its
own with its own port, log and metrics; a client spreads its requests over them, and what each
server says it did (its own request count in its log, its token counters on /metrics) is what
the records say went to it. A whole session saves per-replica figures, monitors each server and
leaves nothing running."""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from pytest_aifactory.cluster.local import LocalJobExecutor
from pytest_aifactory.cluster.rundir import RunDir, make_run_id
from pytest_aifactory.endpoints import Endpoint
from pytest_aifactory.loadgen.records import read_records
from pytest_aifactory.loadgen.runner import run_load
from pytest_aifactory.loadgen.spec import DatasetSpec
from pytest_aifactory.services.manager import ServiceManager
from pytest_aifactory.testing.load_specs import load_spec
from tests.factories import recipe, recipe_document
from tests.helpers import Session, answers, processes_matching, run_benchmark, write_recipe

pytestmark = [pytest.mark.slow, pytest.mark.requires("llama-server")]

_COUNTER = re.compile(r"^(llamacpp:[a-z_]+) ([0-9.e+]+)$", re.MULTILINE)


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Endpoint, str]]:
    """Two keyed llama-servers of one service: (its endpoint, the run's key)."""
    tmp = tmp_path_factory.mktemp("replicas")
    run = RunDir.create(tmp / "reports", make_run_id("replicas"))
    run.start_heartbeat()  # the service jobs watch it, as under a session
    services = ServiceManager(
        recipe(name="replicas", service={"replicas": 2, "args": ["--parallel", "2"]}),
        run,
        LocalJobExecutor(run),
    )
    try:
        yield services.endpoint("llm"), run.api_key()
    finally:
        services.stop_all()
        run.stop_heartbeat()


def counters(replica: Endpoint, key: str) -> dict[str, float]:
    assert replica.metrics_url is not None
    request = urllib.request.Request(
        replica.metrics_url, headers={"Authorization": f"Bearer {key}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
    return {name: float(value) for name, value in _COUNTER.findall(text)}


def requests_logged(replica: Endpoint) -> int:
    """Requests the server itself says it processed: one `launch_slot_` line each in its log."""
    assert replica.job is not None
    return replica.job.log_tail(100_000).count("launch_slot_")


def test_each_replica_is_a_server_of_its_own(replicas: tuple[Endpoint, str]) -> None:
    endpoint, _ = replicas
    servers = endpoint.all_replicas()
    assert [r.replica for r in servers] == [0, 1]
    assert endpoint.urls == [r.url for r in servers]
    assert len({r.port for r in servers}) == 2
    assert len({r.job.job_id for r in servers if r.job is not None}) == 2
    assert all(answers(r.url + "/health") for r in servers)
    assert endpoint.alive()
    logs = [r.job.stderr_path for r in servers if r.job is not None]
    assert logs[0] != logs[1]
    assert "service-llm.replica1" in str(logs[1])


def test_round_robin_reaches_each_server_as_recorded(
    tmp_path: Path, replicas: tuple[Endpoint, str]
) -> None:
    endpoint, key = replicas
    servers = endpoint.all_replicas()
    before = [counters(r, key) for r in servers]
    logged_before = [requests_logged(r) for r in servers]
    spec = load_spec(
        tmp_path,
        base_url=endpoint.url,
        replica_urls=tuple(endpoint.urls),
        api_key=key,
        level=2,
        requests=8,
        seed=3,
        timeout_s=120.0,
        dataset=DatasetSpec(input_tokens=24, output_tokens={"values": [3, 5, 8]}),
    )
    run_load(spec)
    records = read_records([spec.records_path])
    assert (records["error"] == "").all(), records["error"].tolist()
    assert records["replica"].value_counts().to_dict() == {0: 4, 1: 4}
    for index, server in enumerate(servers):
        mine = records[records["replica"] == index]
        assert (mine["replica_address"] == f"{server.host}:{server.port}").all()
        after = counters(server, key)
        generated = after["llamacpp:tokens_predicted_total"]
        generated -= before[index]["llamacpp:tokens_predicted_total"]
        prompt = sum(
            after[name] - before[index][name]
            for name in ("llamacpp:prompt_tokens_total", "llamacpp:prompt_tokens_cached_total")
        )
        assert generated == mine["output_tokens"].sum(), (index, generated)
        assert prompt == mine["input_tokens"].sum(), (index, prompt)
        assert requests_logged(server) - logged_before[index] == len(mine)


# -- a whole session ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Session:
    tmp = tmp_path_factory.mktemp("replicas-session")
    document = recipe_document(
        name="e2e-replicas",
        service={"replicas": 2, "args": ["--parallel", "2"], "health_timeout_s": 120},
        client={
            "openai": {"balance": "least_outstanding"},
            "dataset": {"input_tokens": 16, "output_tokens": 6},
            "load": {"mode": "concurrency", "levels": [4], "requests": 12},
        },
        monitor={"scrape_interval_s": 0.5},
    )
    return run_benchmark(tmp, write_recipe(tmp / "replicas.yaml", document), "-v")


def test_a_session_spreads_over_replicas_and_reports_each(session: Session) -> None:
    assert session.returncode == 0, session.output
    assert "Traceback" not in session.output
    summary = session.summary()
    urls = summary["services"]["llm"]["urls"]
    assert len(urls) == 2
    (test,) = summary["tests"]
    by_replica = test["by_replica"]
    assert [by_replica[i]["address"] for i in ("0", "1")] == [
        u.removeprefix("http://") for u in urls
    ]
    assert sum(r["counts"]["completed"] for r in by_replica.values()) == 12
    (run,) = session.run_dirs()
    records = pd.read_parquet(run / "records.parquet")
    measured = records[records["phase"] == "measure"]
    assert measured["replica"].value_counts().sort_index().tolist() == [
        by_replica[i]["counts"]["sent"] for i in ("0", "1")
    ]
    assert "service-llm.replica1" in {p.name for p in (run / "logs").iterdir()}
    html = (run / "report.html").read_text()
    assert '<table class="replicas">' in html


def test_a_session_monitors_every_replica(session: Session) -> None:
    """The servers' own token counts, one series per replica, add up to the clients'."""
    (test,) = session.summary()["tests"]
    (check,) = test["cross_checks"]
    assert check["server"] == pytest.approx(check["client"], rel=0.02), check
    (run,) = session.run_dirs()
    metrics = pd.read_parquet(run / "metrics.parquet")
    generated = metrics[metrics["series"] == "llamacpp_generated_tokens"]
    replicas = {json.loads(labels).get("aif_replica") for labels in generated["labels"]}
    assert replicas == {"0", "1"}


def test_a_session_leaves_no_server_running(session: Session) -> None:
    (run,) = session.run_dirs()
    assert not processes_matching(str(run))
    for url in session.summary()["services"]["llm"]["urls"]:
        assert not answers(url + "/health")
