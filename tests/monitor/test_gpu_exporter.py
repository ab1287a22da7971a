"""GPU series: a node's own DCGM exporter is announced while a job runs there; where none
answers, a job on a GPU node starts one (NVIDIA's binary; a stand-in here, with no GPU), locked
with the run's monitoring credentials."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_aifactory.cluster.rendezvous import free_port
from pytest_aifactory.monitor.components import DCGM_EXPORTER, read_node_statuses
from pytest_aifactory.monitor.credentials import ensure_credentials
from pytest_aifactory.monitor.gpu_exporter import WEB_CONFIG_FLAG, answers_dcgm
from pytest_aifactory.monitor.node_exporter import (
    NodeExporterOrder,
    find_node_exporter,
    node_exporter,
)
from pytest_aifactory.monitor.series import AUTH_LABEL, NODE_LABEL, ROLE_LABEL, RUN_LABEL
from pytest_aifactory.monitor.targets import NO_AUTH, Target, read_targets
from tests.helpers import processes_matching, running_dcgm_exporter, running_server
from tests.monitor.gpu_node import STAND_IN, fake_gpu_node

HOST = "127.0.0.1"


@pytest.fixture
def site_exporter() -> Iterator[str]:
    """A DCGM exporter already running on the node, as GPU sites run one."""
    with running_dcgm_exporter() as address:
        yield address


def gpu_targets(run_root: Path) -> list[Target]:
    return [t for t in read_targets(run_root, ("nodes",)) if t.name.endswith("-gpu")]


def order(run_root: Path, port: int | None) -> NodeExporterOrder:
    return NodeExporterOrder(str(run_root), "run-1", port)


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def test_the_nodes_exporter_is_announced_while_the_job_runs(
    tmp_path: Path, site_exporter: str
) -> None:
    with node_exporter(order(tmp_path, port_of(site_exporter)), "node1", HOST):
        (target,) = gpu_targets(tmp_path)
        assert target.address == site_exporter
        assert target.labels[ROLE_LABEL] == "node"
        assert target.labels[NODE_LABEL] == "node1"
        assert target.labels[RUN_LABEL] == "run-1"
        # not the run's: it gets no credential of the run's, and the summary says it is open
        assert target.labels[AUTH_LABEL] == NO_AUTH
        (status,) = read_node_statuses(tmp_path, DCGM_EXPORTER)
        assert status.ran
        assert "as open as the site runs it" in str(status.source)
    assert gpu_targets(tmp_path) == []
    assert answers_dcgm(site_exporter), "the site's exporter is not ours to stop"


def test_no_port_means_no_gpu_series(tmp_path: Path, site_exporter: str) -> None:
    with node_exporter(order(tmp_path, None), "node1", HOST):
        assert gpu_targets(tmp_path) == []


@pytest.mark.requires("prometheus-node-exporter")
def test_a_port_serving_other_metrics_is_no_gpu_exporter(tmp_path: Path) -> None:
    binary = find_node_exporter()
    assert binary is not None
    with running_server(
        lambda address: [binary, f"--web.listen-address={address}"], "/metrics", "node exporter"
    ) as other:
        assert not answers_dcgm(other)
        with node_exporter(order(tmp_path, port_of(other)), "node1", HOST):
            assert gpu_targets(tmp_path) == []


def test_started_on_a_gpu_node_where_none_runs_locked_with_the_runs_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_gpu_node(tmp_path, monkeypatch, gpu=True)
    credentials = ensure_credentials(tmp_path / "run")  # as the driver makes them
    nothing_there = free_port(HOST)
    with node_exporter(order(tmp_path / "run", nothing_there), "node1", HOST):
        (target,) = gpu_targets(tmp_path / "run")
        assert target.address != f"{HOST}:{nothing_there}"
        assert answers_dcgm(target.address, headers=credentials.header)
        assert not answers_dcgm(target.address), "it answers without the run's password"
        assert target.labels[NODE_LABEL] == "node1"
        assert AUTH_LABEL not in target.labels  # scraped with the password, as node exporters
        started = f"--address {target.address} {WEB_CONFIG_FLAG} {credentials.web_config}"
        assert processes_matching(started)
    assert gpu_targets(tmp_path / "run") == []
    assert not answers_dcgm(target.address, headers=credentials.header)
    assert processes_matching(f"--address {target.address}") == []


def test_an_exporter_without_the_web_config_flag_is_not_started_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dcgm-exporter before 3.3.3-3.3.0 rejects the flag and exits: the node then has no GPU
    series, and the summary says what the exporter needs."""
    bin_dir = fake_gpu_node(tmp_path, monkeypatch, gpu=True)
    (bin_dir / "dcgm-exporter").write_text(
        '#!/bin/sh\necho "flag provided but not defined: -web-config-file" >&2\nexit 1\n'
    )
    ensure_credentials(tmp_path / "run")
    with node_exporter(order(tmp_path / "run", free_port(HOST)), "node1", HOST):
        assert gpu_targets(tmp_path / "run") == []
    (status,) = read_node_statuses(tmp_path / "run", DCGM_EXPORTER)
    assert not status.ran
    assert f"started with {WEB_CONFIG_FLAG}, which dcgm-exporter takes from 3.3.3-3.3.0" in (
        status.why_not
    )


def test_not_started_on_a_node_without_a_gpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_gpu_node(tmp_path, monkeypatch, gpu=False)
    with node_exporter(order(tmp_path / "run", free_port(HOST)), "node1", HOST):
        assert gpu_targets(tmp_path / "run") == []
    assert processes_matching(str(STAND_IN)) == []


def test_one_task_per_node_announces_it(tmp_path: Path, site_exporter: str) -> None:
    """A service and a client on one node: the second task finds the node's lock taken."""
    run_order = order(tmp_path, port_of(site_exporter))
    with node_exporter(run_order, "node1", HOST):
        first = gpu_targets(tmp_path)
        with node_exporter(run_order, "node1", HOST):
            assert gpu_targets(tmp_path) == first
        assert gpu_targets(tmp_path) == first  # the second task's end leaves it announced
    assert gpu_targets(tmp_path) == []
