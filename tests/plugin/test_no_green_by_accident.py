"""A benchmark session that measured nothing cannot pass: no recipe is a usage error (exit 4),
and a session whose benchmark tests were all deselected or skipped says so, and fails when the
recipe has objectives or `--fail-on-regression` was asked for."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import BENCHMARK, processes_matching, run_benchmark, write_recipe

pytestmark = pytest.mark.slow  # each test is a pytest session of its own

SUITES = BENCHMARK.parent


def recipe_document(marker: str, objective: bool) -> dict[str, Any]:
    """One LLM client against a fake server (never started when no test runs)."""
    command = (
        f"{sys.executable} -m pytest_aifactory.testing.dying_server "
        f"--host {{host}} --port {{port}} --marker {marker}"
    )
    document: dict[str, Any] = {
        "name": "nothing-ran",
        "services": {"svc": {"kind": "command", "command": command, "health_timeout_s": 60}},
        "clients": {
            "chat": {
                "kind": "openai",
                "service": "svc",
                "dataset": {"input_tokens": 8, "output_tokens": 4},
                "load": {"mode": "concurrency", "levels": [1], "requests": 2},
            }
        },
        "monitor": {"prometheus": False},
    }
    if objective:
        document["slo"] = {"chat": {"ttft_ms": {"p50": {"max": 5000}}}}
    return document


def pytest_without_recipe(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", str(SUITES), "-p", "no:cacheprovider", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )


def test_benchmarks_without_a_recipe_are_a_usage_error(tmp_path: Path) -> None:
    done = pytest_without_recipe(tmp_path)
    assert done.returncode == pytest.ExitCode.USAGE_ERROR, done.stdout + done.stderr
    said = done.stdout + done.stderr
    assert "--recipe" in said
    assert "test_serving[no-recipe]" in said
    assert "Traceback" not in said


def test_listing_them_without_a_recipe_is_allowed(tmp_path: Path) -> None:
    done = pytest_without_recipe(tmp_path, "--collect-only", "-q")
    assert done.returncode == pytest.ExitCode.OK, done.stdout + done.stderr
    assert "test_serving[no-recipe]" in done.stdout


@pytest.mark.parametrize(
    ("objective", "options", "fails"),
    [
        (True, (), True),
        (False, ("--fail-on-regression", "ttft_ms.p99:10%"), True),
        (False, (), False),
    ],
    ids=["objective", "regression-gate", "nothing-asked"],
)
def test_a_session_where_every_benchmark_was_skipped(
    tmp_path: Path, objective: bool, options: tuple[str, ...], fails: bool
) -> None:
    marker = f"nothing-ran-{tmp_path.name}"
    recipe = write_recipe(tmp_path / "recipe.yaml", recipe_document(marker, objective))
    # the storage suite has no test for an LLM client: its one test is skipped
    session = run_benchmark(tmp_path, recipe, *options, benchmark=SUITES / "test_storage.py")
    said = session.stdout + session.stderr
    assert "no benchmark test ran" in said, said
    if fails:
        assert session.returncode == pytest.ExitCode.TESTS_FAILED, said
        assert "failing, since" in said
    else:
        assert session.returncode == pytest.ExitCode.OK, said
    assert processes_matching(marker) == []


def test_a_session_where_every_benchmark_was_deselected_fails(tmp_path: Path) -> None:
    marker = f"nothing-ran-{tmp_path.name}"
    recipe = write_recipe(tmp_path / "recipe.yaml", recipe_document(marker, objective=True))
    session = run_benchmark(tmp_path, recipe, "-k", "no-such-case")
    said = session.stdout + session.stderr
    assert session.returncode != pytest.ExitCode.OK, said
    assert "no benchmark test ran" in said, said
