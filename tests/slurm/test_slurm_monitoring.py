"""Monitoring on the dev Slurm cluster: Prometheus and the pushgateway as jobs on the monitor
partition, a node exporter on every node a service or client runs on."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pytest

from tests.helpers import Session, run_benchmark, write_recipe
from tests.slurm.test_slurm_executor import queued_names, run_id_of

if TYPE_CHECKING:
    from tests.conftest import SlurmCluster

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.requires("prometheus", "llama-server"),
]


REQUESTS = 24


def recipe() -> dict[str, Any]:
    return {
        "name": "slurm-monitored",
        "platform": {"executor": "slurm", "slurm": {"time_limit": "00:10:00"}},
        "services": {"llm": {"kind": "llamacpp", "model": "smollm2-135m", "health_timeout_s": 60}},
        "clients": {
            "chat": {
                "kind": "openai",
                "service": "llm",
                "nodes": 3,
                "dataset": {"kind": "random", "input_tokens": 16, "output_tokens": 24},
                # long enough that Prometheus, which applies discovered targets at most every
                # 5 s, scrapes the exporters the client jobs start on n2 and n3
                "load": {"mode": "concurrency", "levels": [3], "requests": REQUESTS},
            }
        },
        "slo": {"chat": {"error_rate": {"max": 0.0}}},
        "monitor": {"scrape_interval_s": 0.5, "partition": "monitor"},
    }


@pytest.fixture(scope="module")
def session(slurm_cluster: SlurmCluster, tmp_path_factory: pytest.TempPathFactory) -> Session:
    assert "monitor" in slurm_cluster.partitions
    tmp = tmp_path_factory.mktemp("slurm-monitored")
    path = write_recipe(tmp / "recipe.yaml", recipe())
    session = run_benchmark(tmp, path, "--executor", "slurm", "-v", timeout=300)
    assert session.returncode == 0, session.output
    return session


def partitions_of(prefix: str) -> dict[str, str]:
    out = subprocess.run(
        ["sacct", "-X", "-P", "-n", "-S", "now-1hours", "-o", "JobName,Partition"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {
        name: partition
        for name, _, partition in (line.partition("|") for line in out.splitlines())
        if name.startswith(prefix)
    }


def test_monitoring_servers_run_on_the_monitor_partition(session: Session) -> None:
    prefix = f"aif-{run_id_of(session)}-"
    partitions = partitions_of(prefix)
    assert partitions[f"{prefix}monitor-prometheus"] == "monitor", partitions
    assert partitions[f"{prefix}monitor-pushgateway"] == "monitor", partitions
    assert partitions[f"{prefix}service-llm"] == "debug", partitions
    assert not [n for n in queued_names() if n.startswith(prefix)]


def test_every_client_node_is_watched(session: Session) -> None:
    (run,) = session.run_dirs()
    metrics = pd.read_parquet(run / "metrics.parquet")
    cpu = metrics[metrics["series"] == "node_cpu_seconds"]
    assert set(cpu["node"]) == {"n1", "n2", "n3"}
    clients = metrics[metrics["series"] == "client_requests_completed"]
    assert set(clients["node"]) == {"n1", "n2", "n3"}
    # the last pushed counters of the three processes add up to the requests sent
    last = clients.sort_values("timestamp").groupby("labels")["value"].last()
    assert last.sum() == REQUESTS


def test_server_and_clients_agree_on_tokens(session: Session) -> None:
    (test,) = session.summary()["tests"]
    (check,) = test["cross_checks"]
    assert check["server"] == pytest.approx(check["client"], rel=0.02)
    assert session.summary()["monitoring"]["mode"] == "prometheus"


def test_prometheus_kept_its_database_on_its_node_and_the_run_has_a_copy(
    session: Session,
) -> None:
    """On the node's local disk while it ran (not the shared run folder), copied home at the
    end, and the local copy removed; the run says where each monitoring program ran."""
    (run,) = session.run_dirs()
    log = "".join(p.read_text() for p in (run / "logs" / "monitor-prometheus").glob("*_log.err"))
    local = log.split("Prometheus's database in ", 1)[1].split(" ", 1)[0]
    assert not local.startswith(str(run)), local
    assert f"--storage.tsdb.path={local}" in log
    assert "Prometheus's database copied to" in log
    assert not Path(local).exists()  # the dev nodes share this machine's /tmp
    assert (run / "monitor" / "tsdb" / "wal").is_dir()
    components = session.summary()["monitoring"]["components"]
    assert components["prometheus"]["nodes"] == ["n1"]  # the monitor partition's node
    assert components["node_exporter"]["nodes"] == ["n1", "n2", "n3"]
