"""pytest-xdist: two workers never load one service at the same time.

Two clients of one service, each at concurrency 1, run as two tests under `pytest -n 2`, one
per worker. Each client alone never has two requests open, so any moment the server holds two
is the workers' loads overlapping. The server is the token server, which records when each
request arrived and when its last event left (on the machine's monotonic clock).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from pytest_aifactory.testing.token_server import TokenServer
from tests.helpers import run_benchmark, write_recipe

pytestmark = pytest.mark.slow  # a pytest session with two workers

REQUESTS = 40
"""Per client: about 5 s of load each at 130 ms a request, far longer than the spread of the
two workers' starts."""


def lock_recipe(url: str) -> dict[str, Any]:
    def client() -> dict[str, Any]:
        return {
            "kind": "openai",
            "service": "srv",
            "dataset": {"input_tokens": 8, "output_tokens": 8},
            "load": {"levels": [1], "requests": REQUESTS, "warmup_requests": 0},
        }

    return {
        "name": "xdist-lock",
        "services": {"srv": {"kind": "external", "url": url, "health": {"http": "/health"}}},
        "clients": {"one": client(), "two": client()},
        "slo": {"one": {"error_rate": {"max": 0.0}}, "two": {"error_rate": {"max": 0.0}}},
        "monitor": {"prometheus": False},
    }


def most_open_at_once(truth: dict[str, Any]) -> int:
    """Most requests the server held at one instant; one that ended as another arrived at the
    same nanosecond does not count as overlapping."""
    events: list[tuple[int, int]] = []
    for request in truth["requests"]:
        end = request["events_ns"][-1] if request["events_ns"] else request["received_ns"]
        events += [(request["received_ns"], 1), (end, -1)]
    open_now = peak = 0
    for _, delta in sorted(events):
        open_now += delta
        peak = max(peak, open_now)
    return peak


def test_two_workers_take_turns_on_one_service(tmp_path: Path) -> None:
    with TokenServer(ttft_ms=60, gap_ms=10) as server:
        recipe = write_recipe(tmp_path / "lock.yaml", lock_recipe(server.url))
        temp = tmp_path / "tmp"
        temp.mkdir()
        session = run_benchmark(
            tmp_path, recipe, "-n", "2", "--dist", "load", env={"TMPDIR": str(temp)}, timeout=300
        )
        truth = server.truth()
    assert session.returncode == 0, session.output
    (run,) = session.run_dirs()
    # one test on each worker: without the lock they would have run side by side
    assert {p.stem for p in (run / "parts").glob("*.json")} == {"gw0", "gw1"}
    records = pd.read_parquet(run / "records.parquet")
    assert records.groupby("test_id").size().tolist() == [REQUESTS, REQUESTS]
    assert len(truth["requests"]) == 2 * REQUESTS
    assert most_open_at_once(truth) == 1
    # the locks' folder (in the session's temporary folder) went with the session
    assert not list(temp.glob("aifactory-locks-*"))
