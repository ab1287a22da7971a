"""The storage benchmark on recipes/postgres.yaml, end to end: a real PostgreSQL service, real
client jobs, the recipe's own SLOs, and an impossible one that must fail naming its metric."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from pytest_aifactory.services import postgres_entry
from tests.helpers import REPO, benchmark_env, processes_matching, write_recipe

pytestmark = pytest.mark.slow

RECIPE = REPO / "recipes" / "postgres.yaml"
BENCHMARK = REPO / "benchmarks" / "test_storage.py"


def _installed() -> bool:
    try:
        postgres_entry.find_bin_dir()
    except postgres_entry.EntryError:
        return False
    return True


def short_recipe() -> dict[str, Any]:
    """The shipped recipe with fewer transactions per level, no Prometheus, and one more client
    whose throughput objective no server can meet."""
    document = yaml.safe_load(RECIPE.read_text())
    for client in document["clients"].values():
        client["load"].pop("duration_s", None)
        client["load"]["requests"] = 150
        client["load"]["warmup_requests"] = 5
    document["clients"]["impossible"] = {
        "kind": "sql",
        "service": "db",
        "sql": {"mix": "read-only"},
        "load": {"mode": "concurrency", "levels": [1], "requests": 20},
    }
    document["slo"]["impossible"] = {"tps": {"min": 1_000_000}}
    document["monitor"] = {"prometheus": False}
    return document


def node_name(line: str) -> str:
    """`PASSED path::test_x[id]` or `FAILED path::test_x[id] - message` -> `test_x[id]`."""
    return line.rsplit("::", 1)[-1].split(" - ", 1)[0]


@pytest.mark.skipif(not _installed(), reason="PostgreSQL is not installed")
def test_recipe_slos_hold_and_an_impossible_one_fails(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "postgres.yaml", short_recipe())
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(BENCHMARK),
            "--recipe",
            str(recipe),
            "--report-dir",
            str(tmp_path / "reports"),
            "-p",
            "no:cacheprovider",
            "-rA",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=benchmark_env(tmp_path),
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output[-4000:]
    lines = output.splitlines()
    passed = {node_name(line) for line in lines if line.startswith("PASSED")}
    failed = [node_name(line) for line in lines if line.startswith("FAILED")]
    assert passed == {
        "test_storage[tpcb-concurrency-1]",
        "test_storage[tpcb-concurrency-4]",
        "test_storage[point-rate-200]",
    }, output[-4000:]
    assert failed == ["test_storage[impossible-concurrency-1]"], output[-4000:]
    assert re.search(r"impossible\[concurrency=1\] tps = [\d.]+ tx/s < min 1000000", output)
    assert not processes_matching(str(tmp_path))  # the server and its jobs are gone
