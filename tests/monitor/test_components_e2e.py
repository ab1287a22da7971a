"""Monitoring as a cluster user, for real: the programs come from the paths and images the
recipe and the environment name (the distribution's binaries under other names here; no
Apptainer exists on this machine, so a stand-in runtime runs the image's program), the run says
which ran and why the others did not, and Prometheus's database lives on the node's local disk
until the run copies it home."""

from __future__ import annotations

import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from pytest_aifactory.cluster.node import node_name
from pytest_aifactory.cluster.rendezvous import free_port
from pytest_aifactory.cluster.rundir import secrets_dir_of
from pytest_aifactory.monitor.grafana import replay_argv, write_replay_config
from pytest_aifactory.monitor.query import PrometheusClient
from tests.helpers import Session, processes_matching, run_benchmark, wait_for, write_recipe

pytestmark = [
    pytest.mark.slow,
    pytest.mark.requires("prometheus", "prometheus-node-exporter", "prometheus-pushgateway"),
]

REQUESTS = 48
DATABASE_LINE = re.compile(r"Prometheus's database in (\S+) on this node")


def recipe(components: dict[str, Any]) -> dict[str, Any]:
    """A token server of known timing as the service: cheap, and its client jobs and service job
    each run their node's exporter and push to the pushgateway. The load lasts about 7 s:
    Prometheus applies newly discovered targets (the exporter, the pushgateway) every 5 s."""
    server = f"{sys.executable} -m pytest_aifactory.testing.token_server"
    return {
        "name": "monitor-components",
        "services": {
            "svc": {
                "kind": "command",
                "command": f"{server} --host {{host}} --port {{port}} --tokens 8 --ttft-ms 300",
                "health": {"http": "/truth"},
                "health_timeout_s": 60,
            }
        },
        "clients": {
            "chat": {
                "kind": "openai",
                "service": "svc",
                "load": {"mode": "concurrency", "levels": [2], "requests": REQUESTS},
            }
        },
        "slo": {"chat": {"error_rate": {"max": 0.0}}},
        "monitor": {"scrape_interval_s": 0.5, "gpu_exporter_port": None, "components": components},
    }


def the(command: str) -> str:
    found = shutil.which(command)
    assert found is not None, command
    return found


def job_log(run: Path, job: str) -> str:
    return "".join(p.read_text() for p in sorted((run / "logs" / job).glob("*_log.err")))


def local_database(run: Path) -> Path:
    found = DATABASE_LINE.search(job_log(run, "monitor-prometheus"))
    assert found, "the Prometheus job did not say where its database was"
    return Path(found.group(1))


@pytest.fixture(scope="module")
def from_paths(tmp_path_factory: pytest.TempPathFactory) -> tuple[Session, Path]:
    """Every program from a folder of the project's (links to the distribution's binaries under
    names no PATH lookup would find); the database's local disk is a folder of the test's."""
    tmp = tmp_path_factory.mktemp("from-paths")
    tools = tmp / "tools"
    tools.mkdir()
    (tools / "prom").symlink_to(the("prometheus"))
    (tools / "gateway").symlink_to(the("prometheus-pushgateway"))
    (tools / "exporter").symlink_to(the("prometheus-node-exporter"))
    (tmp / "node-local").mkdir()
    components = {
        "prometheus": {"path": "tools/prom"},  # relative to the recipe
        "node_exporter": {"path": str(tools / "exporter")},
    }
    path = write_recipe(tmp / "recipe.yaml", recipe(components))
    env = {"AIFACTORY_PUSHGATEWAY": str(tools / "gateway"), "TMPDIR": str(tmp / "node-local")}
    session = run_benchmark(tmp, path, "-v", env=env, timeout=300)
    assert session.returncode == 0, session.output
    return session, tmp


def test_each_program_ran_from_the_named_path(from_paths: tuple[Session, Path]) -> None:
    session, tmp = from_paths
    tools = tmp / "tools"
    node = node_name()
    components = session.summary()["monitoring"]["components"]
    assert components["prometheus"] == {
        "ran": True,
        "source": f"{tools}/prom (monitor.components.prometheus)",
        "nodes": [node],
        "why_not": "",
    }
    assert components["pushgateway"]["source"] == f"{tools}/gateway (AIFACTORY_PUSHGATEWAY)"
    assert components["node_exporter"] == {
        "ran": True,
        "source": f"{tools}/exporter (monitor.components.node_exporter)",
        "nodes": [node],
        "why_not": "",
    }
    assert components["dcgm_exporter"]["ran"] is False
    assert f"monitoring: Prometheus ran on {node}: {tools}/prom" in session.output
    (run,) = session.run_dirs()
    assert f"starting aifactory-prometheus on {node}: {tools}/prom " in job_log(
        run, "monitor-prometheus"
    )
    assert f"{tools}/gateway --web.listen-address=" in job_log(run, "monitor-pushgateway")
    assert "node exporter on 127.0.0.1:" in job_log(run, "service-svc")
    metrics = pd.read_parquet(run / "metrics.parquet")
    assert {"node_cpu_seconds", "client_requests_completed"} <= set(metrics["series"])
    assert not processes_matching(str(tools))


def test_the_database_lived_on_the_local_disk_and_came_home(
    from_paths: tuple[Session, Path],
) -> None:
    session, tmp = from_paths
    (run,) = session.run_dirs()
    local = local_database(run)
    assert local.parent == tmp / "node-local"
    assert not local.exists(), "the node-local database was not removed"
    assert list((tmp / "node-local").iterdir()) == []
    copy = run / "monitor" / "tsdb"
    assert (copy / "wal").is_dir()
    assert not (copy / "lock").exists()
    assert stat.S_IMODE(copy.stat().st_mode) == 0o700
    assert [p.name for p in (run / "monitor").iterdir() if p.name.startswith(".")] == []
    assert not session.summary()["monitoring"]["warnings"]


def test_the_copied_database_serves_the_run_again(from_paths: tuple[Session, Path]) -> None:
    """What the samples were read from during the run is all in the copy."""
    session, _ = from_paths
    (run,) = session.run_dirs()
    (test,) = session.summary()["tests"]
    write_replay_config(run)
    listen = f"127.0.0.1:{free_port('127.0.0.1')}"
    proc = subprocess.Popen(
        replay_argv(run, listen, the("prometheus")),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = PrometheusClient(f"http://{listen}")
        wait_for(client.ready, 30, "replayed Prometheus ready")
        at = pd.Timestamp(test["ended_at"]).timestamp()
        run_id = session.summary()["run_id"]
        done = client.query(
            f'max(aifactory_client_requests_completed_total{{aif_run="{run_id}"}})', at=at
        )
        cpu = client.query(f'count(node_cpu_seconds_total{{aif_run="{run_id}"}})', at=at)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert cpu, "no node series in the copied database"
    assert done, "no client counters in the copied database"


@pytest.fixture(scope="module")
def image_and_missing(tmp_path_factory: pytest.TempPathFactory) -> tuple[Session, Path]:
    """Prometheus from an image (through a stand-in runtime that records its command line and
    runs the distribution's binary as the image would), the pushgateway turned off by the
    environment, and a node exporter path that does not exist."""
    tmp = tmp_path_factory.mktemp("image-and-missing")
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    runtime = bin_dir / "apptainer"
    runtime.write_text(
        "#!/bin/sh\n"
        f'printf "%s\\n" "$@" > "{tmp}/runtime-args"\n'
        'shift; while [ "$1" = --bind ] || [ "$1" = --nv ]; do\n'
        '  if [ "$1" = --bind ]; then shift 2; else shift; fi\n'
        "done\n"
        'shift; program="$1"; shift\n'
        'exec "$program" "$@"\n'
    )
    runtime.chmod(0o755)
    image = tmp / "images" / "prometheus.sif"
    image.parent.mkdir()
    image.write_bytes(b"SIF")
    (tmp / "node-local").mkdir()
    components = {
        "prometheus": {"image": str(image)},
        "node_exporter": {"path": str(tmp / "absent" / "node_exporter")},
    }
    path = write_recipe(tmp / "recipe.yaml", recipe(components))
    env = {
        "PATH": f"{bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin",
        "AIFACTORY_PUSHGATEWAY": "",
        "TMPDIR": str(tmp / "node-local"),
    }
    session = run_benchmark(tmp, path, "-v", env=env, timeout=300)
    assert session.returncode == 0, session.output
    return session, tmp


def test_prometheus_ran_from_the_image_with_its_folders_bound(
    image_and_missing: tuple[Session, Path],
) -> None:
    session, tmp = image_and_missing
    (run,) = session.run_dirs()
    image = tmp / "images" / "prometheus.sif"
    components = session.summary()["monitoring"]["components"]
    assert components["prometheus"]["ran"] is True
    assert components["prometheus"]["source"] == f"image {image} (monitor.components.prometheus)"
    local = local_database(run)
    args = (tmp / "runtime-args").read_text().splitlines()
    # the run's folder, its private one (key, monitoring credentials) and the database
    assert args[:9] == [
        "exec",
        "--bind",
        str(run),
        "--bind",
        str(secrets_dir_of(run)),
        "--bind",
        str(local),
        str(image),
        "prometheus",
    ]
    assert f"--storage.tsdb.path={local}" in args
    assert local.parent == tmp / "node-local"
    assert not local.exists()
    assert (run / "monitor" / "tsdb" / "wal").is_dir()
    assert session.summary()["monitoring"]["mode"] == "prometheus"


def test_the_run_says_which_programs_did_not_run_and_why(
    image_and_missing: tuple[Session, Path],
) -> None:
    session, tmp = image_and_missing
    node = node_name()
    absent = tmp / "absent" / "node_exporter"
    components = session.summary()["monitoring"]["components"]
    assert components["pushgateway"] == {
        "ran": False,
        "source": None,
        "nodes": [],
        "why_not": "turned off: AIFACTORY_PUSHGATEWAY is empty",
    }
    why = f"{node}: {absent} (monitor.components.node_exporter): no such file"
    assert components["node_exporter"]["ran"] is False
    assert components["node_exporter"]["why_not"] == why
    output = session.output
    # at the start, before any test
    start = output.index("monitoring: pushgateway did not run: turned off")
    assert start < output.index("PASSED")
    assert (
        f"monitoring: node exporter: {absent} (monitor.components.node_exporter): no such file"
        in output
    )
    # at the end, what the jobs found on their nodes
    assert f"monitoring: node exporter did not run: {why}" in output
    (run,) = session.run_dirs()
    page = (run / "report.html").read_text()
    assert "<h2>Monitoring</h2>" in page
    assert "turned off: AIFACTORY_PUSHGATEWAY is empty" in page
    assert f"{absent} (monitor.components.node_exporter): no such file" in page
    # no node exporter, no pushgateway: no node or client series (and so no samples at all)
    assert not (run / "metrics.parquet").exists()
