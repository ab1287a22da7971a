"""The Slurm cluster a run names in its summary (and the dashboard beside its nodes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_aifactory.report.environment import collect_environment, slurm_cluster


def test_the_allocation_names_its_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_CLUSTER_NAME", "meluxina")
    monkeypatch.setenv("SLURM_CONF", "/nonexistent/slurm.conf")
    assert slurm_cluster() == "meluxina"
    assert collect_environment()["slurm_cluster"] == "meluxina"


def test_else_slurm_conf_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "slurm.conf"
    conf.write_text("# ClusterName=commented\nSlurmctldHost=head\n  clustername = dev-cluster\n")
    monkeypatch.delenv("SLURM_CLUSTER_NAME", raising=False)
    monkeypatch.setenv("SLURM_CONF", str(conf))
    assert slurm_cluster() == "dev-cluster"


def test_no_slurm_no_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLURM_CLUSTER_NAME", raising=False)
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "absent.conf"))
    assert slurm_cluster() is None
