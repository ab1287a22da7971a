"""Fixtures shared by the project's tests: a real Slurm cluster when one is running."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "slurm: needs a running Slurm cluster with accounting (bash scripts/slurm-up.sh as root)",
    )


@dataclass(frozen=True)
class SlurmCluster:
    """What the tests need to know of the cluster they run on."""

    nodes: list[str]
    partitions: list[str]


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


@pytest.fixture(scope="session")
def slurm_cluster() -> SlurmCluster:
    """The running cluster; skips (saying how to get one) when Slurm does not answer."""
    if shutil.which("scontrol") is None:
        pytest.skip("Slurm is not installed (as root: bash scripts/slurm-up.sh)")
    ping = _run("scontrol", "ping")
    if ping.returncode != 0 or "UP" not in ping.stdout:
        pytest.skip(
            "Slurm is not running: `scontrol ping` failed (as root: bash scripts/slurm-up.sh)"
        )
    if _run("sacct", "-n", "-X", "-S", "now-1minutes").returncode != 0:
        pytest.skip("Slurm runs without accounting: sacct fails (scripts/slurm-up.sh sets it up)")
    nodes = _run("sinfo", "-h", "-N", "-o", "%N").stdout.split()
    partitions = _run("sinfo", "-h", "-o", "%R").stdout.split()
    return SlurmCluster(nodes=sorted(set(nodes)), partitions=sorted(set(partitions)))


@pytest.fixture(autouse=True, scope="session")
def private_state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Runs started by the tests go to a throwaway run index, not the user's own."""
    state = tmp_path_factory.mktemp("aifactory-state")
    saved = os.environ.get("AIFACTORY_STATE_DIR")
    os.environ["AIFACTORY_STATE_DIR"] = str(state)
    yield state
    if saved is None:
        os.environ.pop("AIFACTORY_STATE_DIR", None)
    else:
        os.environ["AIFACTORY_STATE_DIR"] = saved
