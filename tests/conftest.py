"""Fixtures shared by the project's tests: a real Slurm cluster when one is running, and
factories for the recipes and load specs tests build."""

from __future__ import annotations

import functools
import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pytest_aifactory.loadgen.spec import LoadSpec
from pytest_aifactory.recipe import Recipe
from pytest_aifactory.testing.load_specs import load_spec
from pytest_aifactory.testing.other_user import OtherUser, OtherUserUnavailable
from pytest_aifactory.testing.other_user import other_user as local_other_user
from tests.components import missing_component, require_component
from tests.factories import recipe
from tests.markers import (  # noqa: F401  (hooks: pytest finds them in this module)
    pytest_collection_modifyitems,
    pytest_runtest_setup,
)
from tests.markers import pytest_configure as configure_markers

pytest_plugins = ["pytester"]


def pytest_configure(config: pytest.Config) -> None:
    configure_markers(config)
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
    """The running cluster; skips (saying how to get one; under CI fails) when Slurm does not
    answer."""
    require_component("slurm")
    ping = _run("scontrol", "ping")
    if ping.returncode != 0 or "UP" not in ping.stdout:
        missing_component("slurm", "Slurm is not running: `scontrol ping` failed")
    if _run("sacct", "-n", "-X", "-S", "now-1minutes").returncode != 0:
        missing_component("slurm", "Slurm runs without accounting: sacct fails")
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


@pytest.fixture(scope="session")
def other_user() -> OtherUser:
    """Another local account on this node, with no rights to the run's files or services:
    tests act as it and try to get in (testing/other_user.py)."""
    require_component("other-user")
    try:
        return local_other_user()
    except OtherUserUnavailable as error:
        missing_component("other-user", str(error))


@pytest.fixture
def make_recipe() -> Callable[..., Recipe]:
    """`make_recipe(client={"load": {...}})`: a validated recipe of one `llamacpp` service and
    one `openai` client, changed where the test says (tests/factories.py)."""
    return recipe


@pytest.fixture
def make_load_spec(tmp_path: Path) -> Callable[..., LoadSpec]:
    """`make_load_spec(base_url=url, requests=3)`: one process's load, its records in the
    test's temporary folder (pytest_aifactory.testing.load_specs)."""
    make: Callable[..., LoadSpec] = functools.partial(load_spec, tmp_path)
    return make
