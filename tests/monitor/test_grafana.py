"""The run's Grafana dashboard: every panel's PromQL checked by a real Prometheus, which also
scrapes a real node exporter so the node panels are seen to select and compute the right data."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from pytest_aifactory.cluster.rendezvous import free_port
from pytest_aifactory.monitor.grafana import (
    DATASOURCE_UID,
    dashboard,
    dashboard_path,
    export_grafana,
    grafana_dir,
    panel_datasource_uids,
    panel_queries,
    provisioning_dir,
    replay_argv,
    write_replay_config,
)
from pytest_aifactory.monitor.layout import MonitorEndpoints, write_endpoints
from pytest_aifactory.monitor.node_exporter import exporter_argv
from pytest_aifactory.monitor.series import CLIENT_SERIES, GPU_SERIES, NODE_SERIES, service_series
from tests.components import require_component

PROMETHEUS = Path("/usr/bin/prometheus")
NODE_EXPORTER = Path("/usr/bin/prometheus-node-exporter")
RUN_ID = "20240501T100000Z-grafana"
NODE = "node-a"
START = dt.datetime(2024, 5, 1, 10, 0, tzinfo=dt.UTC)
END = START + dt.timedelta(minutes=5)
READY_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class Prometheus:
    url: str

    def query(self, expr: str) -> dict[str, Any]:
        response = requests.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        return dict(response.json())


def _start(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args} exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if requests.get(f"{url}/-/ready", timeout=1).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    pytest.fail(f"{url} not ready after {READY_TIMEOUT_S} s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """A real Prometheus scraping a real node exporter every second, labelled as a run's."""
    require_component("prometheus")
    require_component("prometheus-node-exporter")
    folder = tmp_path_factory.mktemp("prometheus")
    exporter_port = free_port("127.0.0.1")
    exporter = _start(
        exporter_argv(str(NODE_EXPORTER), "127.0.0.1", exporter_port), folder / "exporter.log"
    )
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": "aifactory-nodes",
                "static_configs": [
                    {
                        "targets": [f"127.0.0.1:{exporter_port}"],
                        "labels": {"aif_run": RUN_ID, "aif_role": "node", "aif_node": NODE},
                    }
                ],
            }
        ],
    }
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port("127.0.0.1")
    proc = _start(
        [
            str(PROMETHEUS),
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        folder / "prometheus.log",
    )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url, proc, folder / "prometheus.log")
        yield Prometheus(url)
    finally:
        _stop(proc)
        _stop(exporter)


def full_board() -> dict[str, Any]:
    return dashboard(
        RUN_ID, ["llamacpp", "vllm", "triton", "s3", "postgres", "command"], START, END
    )


def test_every_panel_query_is_valid_promql(prometheus: Prometheus) -> None:
    exprs = panel_queries(full_board(), interval="5s")
    assert len(exprs) >= len(CLIENT_SERIES) + len(GPU_SERIES) + 5
    for expr in exprs:
        assert "$" not in expr, expr
        assert f'aif_run="{RUN_ID}"' in expr, expr
        answer = prometheus.query(expr)
        assert answer["status"] == "success", (expr, answer)


def test_a_broken_query_is_reported(prometheus: Prometheus) -> None:
    """What the test above relies on: Prometheus refuses what it cannot parse."""
    answer = prometheus.query("sum by (aif_node (rate(node_load1[5s]))")
    assert answer["status"] == "error"
    assert answer["errorType"] == "bad_data"
    (raw,) = [q for q in panel_queries(full_board()) if "node_cpu_seconds_total" in q]
    assert "[$__rate_interval]" in raw
    assert prometheus.query(raw)["status"] == "error"  # Grafana's rate window left in


def _values(prometheus: Prometheus, expr: str) -> dict[str, float]:
    answer = prometheus.query(expr)
    assert answer["status"] == "success", answer
    return {
        entry["metric"].get("aif_node", ""): float(entry["value"][1])
        for entry in answer["data"]["result"]
    }


@pytest.mark.slow
def test_node_panels_select_the_run_and_compute(prometheus: Prometheus) -> None:
    exprs = panel_queries(full_board(), interval="5s")
    (cpu,) = [q for q in exprs if "node_cpu_seconds_total" in q]
    (used,) = [q for q in exprs if "MemAvailable" in q]
    (installed,) = [q for q in exprs if "MemTotal" in q and "MemAvailable" not in q]
    deadline = time.monotonic() + 15
    while not _values(prometheus, cpu) and time.monotonic() < deadline:
        time.sleep(0.5)  # a rate needs two scrapes
    busy = _values(prometheus, cpu)
    assert list(busy) == [NODE]
    assert 0.0 <= busy[NODE] <= 1.0
    total = _values(prometheus, installed)[NODE]
    assert 0 < _values(prometheus, used)[NODE] < total
    other = panel_queries(dashboard("another-run", [], START, END), interval="5s")
    assert all(not _values(prometheus, q) for q in other)  # nothing of another run shows


def test_dashboard_layout() -> None:
    board = full_board()
    assert board["schemaVersion"] == 39
    assert board["time"] == {"from": "2024-05-01T10:00:00.000Z", "to": "2024-05-01T10:05:00.000Z"}
    (run,) = board["templating"]["list"]
    assert (run["type"], run["name"], run["query"]) == ("constant", "run", RUN_ID)
    titles = [p["title"] for p in board["panels"] if p["type"] == "row"]
    assert titles == [
        "Clients",
        "Services: llamacpp",
        "Services: postgres",
        "Services: s3",
        "Services: triton",
        "Services: vllm",  # command services have no metrics: no row
        "Nodes",
        "GPUs (DCGM exporter; empty where none runs)",
    ]
    ids = [p["id"] for p in board["panels"]]
    assert len(set(ids)) == len(ids)
    for panel in board["panels"]:
        if panel["type"] == "timeseries":
            assert panel["gridPos"]["w"] == 12
            assert panel["targets"]
    cells = {(p["gridPos"]["x"], p["gridPos"]["y"]) for p in board["panels"]}
    assert len(cells) == len(board["panels"])  # no panel on top of another
    exprs = panel_queries(board)
    # each series only from its own kind of target: nothing pushed poses as a node's
    assert (
        "1 - avg by (aif_node) (rate(node_cpu_seconds_total"
        '{aif_role="node",aif_run="$run",mode="idle"}[$__rate_interval]))' in exprs
    )
    assert (
        "sum by (client) (rate(aifactory_client_requests_completed_total"
        '{aif_role="pushgateway",aif_run="$run"}[$__rate_interval]))' in exprs
    )
    assert (
        "sum by (client) (aifactory_client_in_flight"
        '{aif_role="pushgateway",aif_run="$run"})' in exprs
    )


@pytest.mark.parametrize(
    ("kind", "other"), [("llamacpp", "vllm"), ("vllm", "llamacpp"), ("postgres", "llamacpp")]
)
def test_dashboard_of_a_kind_has_its_series(kind: str, other: str) -> None:
    exprs = "\n".join(panel_queries(dashboard(RUN_ID, [kind], START, END)))
    declared = service_series(kind)
    assert declared
    for series in declared:
        assert f"{series.metric}{{" in exprs
        if series.type == "counter":
            assert f"rate({series.metric}{{" in exprs
    assert f"{other}:" not in exprs
    for series in (*NODE_SERIES[:1], *CLIENT_SERIES, *GPU_SERIES):
        assert series.metric in exprs


def _run_folder(tmp_path: Path) -> Path:
    run = tmp_path / RUN_ID
    run.mkdir()
    summary = {
        "run_id": RUN_ID,
        "started_at": START.isoformat(),
        "written_at": END.isoformat(),
        "services": {"llm": {"kind": "vllm"}, "web": {"kind": "command"}},
        "tests": [
            {
                "test_id": "benchmarks/test_inference.py::test_chat[chat-c1]",
                "name": "test_chat[chat-c1]",
                "passed": True,
                "started_at": (START + dt.timedelta(seconds=10)).isoformat(),
                "ended_at": (END - dt.timedelta(seconds=30)).isoformat(),
            }
        ],
    }
    (run / "summary.json").write_text(json.dumps(summary))
    write_endpoints(run, MonitorEndpoints("prometheus", 2.5, "http://127.0.0.1:1"))
    return run


def test_export_and_provisioning(tmp_path: Path) -> None:
    run = _run_folder(tmp_path)
    path = export_grafana(run, "http://127.0.0.1:9191")
    assert path == dashboard_path(run)
    board = json.loads(path.read_text())
    assert board["time"] == {"from": "2024-05-01T10:00:00.000Z", "to": "2024-05-01T10:05:00.000Z"}
    assert board["templating"]["list"][0]["query"] == RUN_ID
    exprs = "\n".join(panel_queries(board))
    assert "vllm:num_requests_running" in exprs
    assert "llamacpp:" not in exprs
    assert "test_chat[chat-c1]" in json.dumps(board)  # the tests' windows are listed

    provisioning = provisioning_dir(run)
    sources = yaml.safe_load((provisioning / "datasources" / "aifactory.yaml").read_text())
    (source,) = sources["datasources"]
    assert sources["apiVersion"] == 1
    assert (source["type"], source["url"]) == ("prometheus", "http://127.0.0.1:9191")
    assert source["uid"] == DATASOURCE_UID
    assert panel_datasource_uids(board) == {source["uid"]}
    assert source["jsonData"] == {"timeInterval": "2500ms"}

    providers = yaml.safe_load((provisioning / "dashboards" / "aifactory.yaml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    folder = Path(provider["options"]["path"])
    assert folder.is_absolute()
    assert folder == grafana_dir(run.resolve())
    assert sorted(p.name for p in folder.rglob("*.json")) == ["dashboard.json"]


def test_export_needs_the_run_times(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no summary\.json"):
        export_grafana(tmp_path, "http://127.0.0.1:9090")


def test_replay_command_starts_prometheus(tmp_path: Path) -> None:
    """The command `aifactory grafana` prints serves a run's folder with this Prometheus."""
    require_component("prometheus")
    run = _run_folder(tmp_path)
    write_replay_config(run)
    listen = f"127.0.0.1:{free_port('127.0.0.1')}"
    log = tmp_path / "replay.log"
    proc = _start(replay_argv(run, listen, binary=str(PROMETHEUS)), log)
    try:
        _wait_ready(f"http://{listen}", proc, log)
        answer = requests.get(f"http://{listen}/api/v1/status/flags", timeout=5).json()
        assert answer["data"]["storage.tsdb.path"] == str((run / "monitor" / "tsdb").resolve())
        assert answer["data"]["storage.tsdb.retention.time"] == "100y"
        targets = requests.get(f"http://{listen}/api/v1/targets", timeout=5).json()
        assert targets["data"]["activeTargets"] == []  # scrapes nothing into the run's data
    finally:
        _stop(proc)
    assert (run / "monitor" / "tsdb").is_dir()
