"""A capacity search against the real llama-server: the levels around the capacity bracket it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.helpers import run_benchmark, write_recipe

pytestmark = pytest.mark.slow


def sweep_recipe() -> dict[str, Any]:
    # one slot: requests queue at the server, so time to first token grows with the load and
    # the SLO breaks somewhere between 1 and 8 requests in flight
    return {
        "name": "sweep-smollm2",
        "services": {
            "llm": {
                "kind": "llamacpp",
                "model": "smollm2-135m",
                "args": ["--parallel", "1"],
                "health_timeout_s": 120,
            }
        },
        "clients": {
            "chat": {
                "kind": "openai",
                "service": "llm",
                "dataset": {"kind": "random", "input_tokens": 32, "output_tokens": 32},
                "load": {
                    "mode": "sweep",
                    "sweep": {"start": 1, "factor": 2, "max": 8},
                    "requests": 8,
                },
            }
        },
        "slo": {"chat": {"ttft_ms": {"p90": {"max": 2000}}, "error_rate": {"max": 0.0}}},
        "monitor": {"prometheus": False},
    }


def test_sweep_finds_a_capacity_bracketed_by_its_neighbours(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "recipe.yaml", sweep_recipe())
    session = run_benchmark(tmp_path, recipe, "-v")
    assert session.returncode == 0, session.output
    assert "test_serving[chat-sweep] PASSED" in session.stdout
    summary = session.summary()
    (sweep,) = summary["sweeps"]
    capacity = sweep["capacity"]
    assert capacity is not None
    assert 1 <= capacity < 8
    assert sweep["reached_max"] is False
    assert sweep["passed_at"]["level"] == capacity
    assert sweep["failed_at"]["level"] == capacity + 1
    assert "ttft_ms.p90" in sweep["failed_at"]["breaches"]
    by_id = {t["test_id"]: t for t in summary["tests"]}
    assert by_id[sweep["passed_at"]["test_id"]]["passed"] is True
    assert by_id[sweep["failed_at"]["test_id"]]["passed"] is False
    assert by_id[sweep["failed_at"]["test_id"]]["level"] == capacity + 1
    # every measured level is a saved test entry of the sweep, with its own records
    assert len(summary["tests"]) == len(sweep["steps"]) >= 2
    assert {t["sweep"]["test_id"] for t in summary["tests"]} == {sweep["test_id"]}
    assert f"chat: capacity concurrency={capacity:g}" in session.stdout
    (run,) = session.run_dirs()
    page = (run / "report.html").read_text()
    assert "<h2>Capacity</h2>" in page
    assert f"concurrency={capacity:g}</a>" in page
    assert f"concurrency={capacity + 1:g}</a>" in page
