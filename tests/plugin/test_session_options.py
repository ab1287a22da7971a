"""pytest's own options on a benchmark session: `--co` lists the cases and starts nothing, `-x`
stops at the first failed case and still saves the run, `--lf` measures again only the cases
that failed. These need pytest's cache, which the other session tests switch off; here it
lives in the test's temporary folder."""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import processes_matching, run_benchmark, write_recipe

pytestmark = pytest.mark.slow

STRICT = "test_serving[strict-concurrency-1]"
CHAT = ["test_serving[chat-concurrency-1]", "test_serving[chat-concurrency-2]"]


def recipe_document(marker: str) -> dict[str, Any]:
    """A fake server as the service; `strict` (first) fails its objective, `chat` passes."""
    command = (
        f"{sys.executable} -m pytest_aifactory.testing.dying_server "
        "--host {host} --port {port} "
        f"--die-after-requests 1000000 --marker {marker}"
    )
    dataset = {"input_tokens": 8, "output_tokens": 4}
    return {
        "name": "session-options",
        "services": {"svc": {"kind": "command", "command": command, "health_timeout_s": 60}},
        "clients": {
            "strict": {
                "kind": "openai",
                "service": "svc",
                "dataset": dataset,
                "load": {"mode": "concurrency", "levels": [1], "requests": 4},
            },
            "chat": {
                "kind": "openai",
                "service": "svc",
                "dataset": dataset,
                "load": {"mode": "concurrency", "levels": [1, 2], "requests": 4},
            },
        },
        "slo": {"strict": {"ttft_ms": {"p50": {"max": 0.001}}}},
        "monitor": {"prometheus": False},
    }


def summary_test_names(run: Path) -> list[str]:
    summary = json.loads((run / "summary.json").read_text())
    return [entry["test_id"].rsplit("::", 1)[-1] for entry in summary["tests"]]


@pytest.fixture
def options_recipe(tmp_path: Path) -> tuple[Path, Path, str]:
    marker = f"options-{uuid.uuid4().hex[:8]}"
    recipe = write_recipe(tmp_path / "recipe.yaml", recipe_document(marker))
    return recipe, tmp_path / "cache", marker


def test_collect_only_lists_every_case_and_starts_nothing(
    tmp_path: Path, options_recipe: tuple[Path, Path, str]
) -> None:
    recipe, cache, marker = options_recipe
    session = run_benchmark(tmp_path, recipe, "--co", "-q", cache_dir=cache, timeout=120)
    assert session.returncode == 0, session.output
    listed = [line.rsplit("::", 1)[-1] for line in session.stdout.splitlines() if "::" in line]
    assert listed == [STRICT, *CHAT]
    assert "3 tests collected" in session.stdout
    assert session.run_dirs() == []  # no run: nothing was measured
    assert processes_matching(marker) == []


def test_exitfirst_stops_at_the_first_failure_then_last_failed_reruns_only_it(
    tmp_path: Path, options_recipe: tuple[Path, Path, str]
) -> None:
    recipe, cache, marker = options_recipe
    first = run_benchmark(tmp_path, recipe, "-x", "-rA", cache_dir=cache, timeout=180)
    assert first.returncode == pytest.ExitCode.TESTS_FAILED, first.output
    passed, failed = first.verdicts()
    assert (passed, failed) == (set(), [STRICT])
    assert "stopping after 1 failures" in first.output
    (stopped,) = first.run_dirs()
    assert summary_test_names(stopped) == [STRICT]  # the run is saved with what was measured
    assert processes_matching(marker) == []  # and the service is stopped

    again = run_benchmark(tmp_path, recipe, "--lf", "-rA", cache_dir=cache, timeout=180)
    assert again.returncode == pytest.ExitCode.TESTS_FAILED, again.output
    passed, failed = again.verdicts()
    assert (passed, failed) == (set(), [STRICT])
    assert "2 deselected" in again.output
    (rerun,) = [run for run in again.run_dirs() if run != stopped]
    assert summary_test_names(rerun) == [STRICT]
    assert processes_matching(marker) == []
