"""Every load reports how busy its own client was, and says plainly when it was saturated."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import pytest_aifactory.loadgen.openai  # noqa: F401  (registers the kind)
from pytest_aifactory.loadgen.records import read_records
from pytest_aifactory.loadgen.runner import run_load
from pytest_aifactory.loadgen.selfcheck import client_stats_path, read_client_stats
from pytest_aifactory.loadgen.spec import DatasetSpec, LoadSpec
from pytest_aifactory.metrics.stats import client_health, saturation_note
from pytest_aifactory.testing.load_specs import load_spec
from pytest_aifactory.testing.token_server import TokenServer


@pytest.fixture(scope="module")
def server() -> Iterator[TokenServer]:
    with TokenServer() as running:
        yield running


def spec_for(tmp_path: Path, url: str, **overrides: object) -> LoadSpec:
    """Process 3 of a load at concurrency 2 (its number shows in its self-measurement's name)."""
    values: dict[str, object] = {
        "level": 2,
        "base_url": url,
        "model": "token-server",
        "records_path": str(tmp_path / "records" / "p0003.jsonl"),
        "requests": 20,
        "process": 3,
        "timeout_s": 10.0,
        "dataset": DatasetSpec(input_tokens=8, output_tokens=16),
    }
    return load_spec(tmp_path, **{**values, **overrides})


def test_each_process_writes_its_self_measurement(tmp_path: Path) -> None:
    """The server takes about 100 ms per request: the measured phase lasts far longer than the
    event-loop probe's tick, so the lag has samples however fast the machine answers."""
    with TokenServer(ttft_ms=20, gap_ms=5) as paced:
        spec = spec_for(tmp_path, paced.url)
        run_load(spec)
    path = client_stats_path(spec.records_path)
    assert path == tmp_path / "records" / "p0003.client.json"
    (stats,) = read_client_stats([path])
    records = read_records([spec.records_path])
    assert stats["process"] == 3
    assert stats["requests"] == 20
    assert stats["events"] == int(records["content_events"].sum()) == 20 * 16
    assert 0 < stats["cpu_s"] <= stats["wall_s"] * 4
    assert stats["cpu_percent"] > 0
    assert stats["loop_lag_ms"]["p99"] is not None
    assert "uvloop" in stats["event_loop"]
    health = client_health(records, [stats])
    assert health["processes"] == 1
    assert health["cpu_percent"]["max"] == pytest.approx(stats["cpu_percent"])
    assert health["queue_ms_p99"] >= 0


@pytest.mark.slow
def test_overdriven_client_says_it_was_saturated(tmp_path: Path, server: TokenServer) -> None:
    """A rate far beyond what one process can send: requests leave late, and the run says so.
    Which sign it names first depends on the machine: late sends (queue_ms) where the process
    keeps up with its own bookkeeping, a CPU core at its limit where it does not."""
    spec = spec_for(tmp_path, server.url, mode="rate", level=4000.0, requests=None, duration_s=0.5)
    run_load(spec)
    records = read_records([spec.records_path])
    health = client_health(records, read_client_stats([client_stats_path(spec.records_path)]))
    assert health["saturated"], health
    assert "queue_ms p99" in health["reason"] or "of a CPU core" in health["reason"], health
    note = saturation_note(health)
    assert note is not None
    assert "measure the client, not the server" in note


def frame(queue_ms: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"phase": "measure", "queue_ms": queue_ms, "error": ""})


def process(cpu: float, lag: float = 0.5, capped: bool = False) -> dict[str, object]:
    return {
        "cpu_percent": cpu,
        "loop_lag_ms": {"p50": 0.1, "p99": lag, "max": lag},
        "queue_capped": capped,
        "events": 100,
        "wall_s": 1.0,
    }


def test_health_verdicts() -> None:
    calm = client_health(frame([0.1] * 100), [process(30.0), process(50.0)])
    assert not calm["saturated"]
    assert calm["reason"] == ""
    assert calm["cpu_percent"] == {"max": 50.0, "mean": 40.0}
    assert calm["events_per_s"] == 200.0
    assert saturation_note(calm) is None
    busy = client_health(frame([0.1] * 100), [process(97.0)])
    assert busy["saturated"]
    assert "97% of a CPU core" in busy["reason"]
    late = client_health(frame([5.0] * 100), [process(40.0)])
    assert late["saturated"]
    assert "queue_ms p99 5.00 ms" in late["reason"]
    capped = client_health(frame([500.0] * 100), [process(40.0, capped=True)])
    assert not capped["saturated"], "waiting for a concurrency cap is the load, not the client"
    stalled = client_health(frame([0.1] * 100), [process(40.0, lag=50.0)])
    assert stalled["saturated"]
    assert "event loop" in stalled["reason"]
    # FAISS searching inside the client, fio: the client's own work is the workload
    workload = client_health(frame([5.0] * 100), [process(99.0, lag=50.0)], cpu_is_workload=True)
    assert not workload["saturated"]
    assert workload["queue_ms_p99"] == 5.0  # still reported
    unknown = client_health(frame([]), [])
    assert not unknown["saturated"]
    assert unknown["cpu_percent"]["max"] is None


def closed_loop_frame(queue_ms: float, in_flight_s: float, count: int = 100) -> pd.DataFrame:
    send = np.arange(count, dtype=float)
    return pd.DataFrame(
        {
            "phase": "measure",
            "queue_ms": queue_ms,
            "send_ts": send,
            "end_ts": send + in_flight_s,
            "ttft_ms": 80.0,
            "error": "",
        }
    )


def test_a_closed_loop_is_late_only_when_its_workers_wait_on_it() -> None:
    """In a concurrency load a late send thins the load; it counts when workers spend a
    material share of their time waiting on the client, not for a burst's few milliseconds."""
    loop = {**process(30.0), "closed_loop": True}
    # 12 ms late (far above 5% of an 80 ms TTFT) on requests in flight for 425 ms: 2.7%
    burst = client_health(closed_loop_frame(12.0, 0.425), [loop])
    assert not burst["saturated"], burst
    assert burst["client_wait_share"] == pytest.approx(0.012 / 0.437)
    # the same lateness in rate mode moves arrivals: judged on queue_ms p99 as before
    assert client_health(closed_loop_frame(12.0, 0.425), [process(30.0)])["saturated"]
    # 40 ms on 200 ms requests: the workers idled 1/6 of the time
    thin = client_health(closed_loop_frame(40.0, 0.2), [loop])
    assert thin["saturated"]
    assert "waited on the client 16.7% of the time" in thin["reason"]
