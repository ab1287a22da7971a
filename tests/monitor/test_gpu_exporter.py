"""GPU series: a node's own DCGM exporter is announced while a job runs there; where none
answers, a job on a GPU node starts one (NVIDIA's binary; a stand-in here, with no GPU)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_aifactory.cluster.rendezvous import free_port
from pytest_aifactory.monitor.gpu_exporter import answers_dcgm
from pytest_aifactory.monitor.node_exporter import (
    NodeExporterOrder,
    find_node_exporter,
    node_exporter,
)
from pytest_aifactory.monitor.series import NODE_LABEL, ROLE_LABEL, RUN_LABEL
from pytest_aifactory.monitor.targets import Target, read_targets
from pytest_aifactory.testing import dcgm_exporter
from tests.helpers import processes_matching, running_dcgm_exporter, running_server

STAND_IN = Path(dcgm_exporter.__file__)
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


def fake_gpu_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gpu: bool) -> None:
    """`dcgm-exporter` (the stand-in) and `nvidia-smi` first on PATH; `gpu`: whether
    nvidia-smi lists one or fails as it does without a driver."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exporter = bin_dir / "dcgm-exporter"
    exporter.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{STAND_IN}" "$@"\n')
    smi = bin_dir / "nvidia-smi"
    if gpu:
        smi.write_text('#!/bin/sh\necho "GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-0-test)"\n')
    else:
        smi.write_text('#!/bin/sh\necho "NVIDIA-SMI has failed: no driver" >&2\nexit 9\n')
    for path in (exporter, smi):
        path.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_the_nodes_exporter_is_announced_while_the_job_runs(
    tmp_path: Path, site_exporter: str
) -> None:
    with node_exporter(order(tmp_path, port_of(site_exporter)), "node1", HOST):
        (target,) = gpu_targets(tmp_path)
        assert target.address == site_exporter
        assert target.labels[ROLE_LABEL] == "node"
        assert target.labels[NODE_LABEL] == "node1"
        assert target.labels[RUN_LABEL] == "run-1"
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


def test_started_on_a_gpu_node_where_none_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_gpu_node(tmp_path, monkeypatch, gpu=True)
    nothing_there = free_port(HOST)
    with node_exporter(order(tmp_path / "run", nothing_there), "node1", HOST):
        (target,) = gpu_targets(tmp_path / "run")
        assert target.address != f"{HOST}:{nothing_there}"
        assert answers_dcgm(target.address)
        assert target.labels[NODE_LABEL] == "node1"
    assert gpu_targets(tmp_path / "run") == []
    assert not answers_dcgm(target.address)
    assert processes_matching(f"--address {target.address}") == []


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
