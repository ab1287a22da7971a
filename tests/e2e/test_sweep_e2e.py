"""A capacity search against the real llama-server: the levels around the capacity bracket it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.factories import recipe_document
from tests.helpers import run_benchmark, write_recipe

pytestmark = [pytest.mark.slow, pytest.mark.requires("llama-server")]


def one_slot_recipe(load: dict[str, Any], ttft_p90_max_ms: float) -> dict[str, Any]:
    """One slot: requests queue at the server, so time to first token grows with the load."""
    return recipe_document(
        name="sweep-smollm2",
        service={"model": "smollm2-135m", "args": ["--parallel", "1"], "health_timeout_s": 120},
        client={
            "dataset": {"kind": "random", "input_tokens": 32, "output_tokens": 16},
            "load": load,
        },
        slo={"chat": {"ttft_ms": {"p90": {"max": ttft_p90_max_ms}}, "error_rate": {"max": 0.0}}},
        monitor={"prometheus": False},
    )


def lone_request_ms(tmp_path: Path) -> tuple[float, float]:
    """TTFT and end-to-end latency (medians: one slow request of eight on a busy machine must
    not stretch the bound) of one request at a time, on this machine."""
    folder = tmp_path / "alone"
    folder.mkdir()
    load = {"mode": "concurrency", "levels": [1], "requests": 8}
    recipe = write_recipe(folder / "recipe.yaml", one_slot_recipe(load, 1e9))
    session = run_benchmark(folder, recipe)
    assert session.returncode == 0, session.output
    (test,) = session.summary()["tests"]
    latency = test["per_request"]
    return latency["ttft_ms"]["p50"], latency["e2el_ms"]["p50"]


def test_sweep_finds_a_capacity_bracketed_by_its_neighbours(tmp_path: Path) -> None:
    # At c requests in flight a request waits for the c - 1 ahead of it in the one slot: about
    # c - 1 lone latencies. A bound of 2.5 lone latencies over the lone TTFT holds at 1 and 2
    # in flight and breaks by 4, however fast this machine is.
    ttft_alone, e2el_alone = lone_request_ms(tmp_path)
    # two loads confirm the boundary (three by default): enough to show the confirmation
    search = {"start": 1, "factor": 2, "max": 8, "boundary_repeats": 2}
    document = one_slot_recipe(
        {"mode": "sweep", "sweep": search, "requests": 8}, ttft_alone + 2.5 * e2el_alone
    )
    recipe = write_recipe(tmp_path / "recipe.yaml", document)
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
    # the capacity held over two loads, judged on its intervals, not on one lucky load
    assert sweep["passed_at"]["confirmed"] is True
    assert sweep["passed_at"]["repeats"] == 2
    assert sweep["capacity_range"] == [capacity, capacity + 1]
    assert "ttft_ms.p90" in sweep["failed_at"]["breaches"]
    by_id = {t["test_id"]: t for t in summary["tests"]}
    assert by_id[sweep["passed_at"]["test_id"]]["passed"] is True
    assert by_id[sweep["passed_at"]["test_id"]]["repeats"]["count"] == 2
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
