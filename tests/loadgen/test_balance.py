"""An `openai` client spreading its requests over the servers of a service: in turn, or to the
one with the fewest requests in flight, checked against what each of two streaming servers
received; records name the server of each request and the summary has its figures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from pytest_aifactory.loadgen.balance import ReplicaBalancer
from pytest_aifactory.loadgen.records import read_records
from pytest_aifactory.loadgen.runner import run_load
from pytest_aifactory.loadgen.spec import DatasetSpec, LoadSpec
from pytest_aifactory.metrics.openai import summarize_openai
from pytest_aifactory.testing.load_specs import load_spec
from pytest_aifactory.testing.streaming_server import StreamingServer


def test_round_robin_takes_turns() -> None:
    balancer = ReplicaBalancer(["http://a:1", "http://b:2", "http://c:3"])
    picked = [balancer.acquire() for _ in range(7)]
    assert picked == [0, 1, 2, 0, 1, 2, 0]
    assert balancer.addresses == ["a:1", "b:2", "c:3"]


def test_least_outstanding_picks_the_least_busy_first_listed() -> None:
    balancer = ReplicaBalancer(["http://a:1", "http://b:2"], "least_outstanding")
    assert [balancer.acquire() for _ in range(3)] == [0, 1, 0]
    balancer.release(0)
    balancer.release(0)
    assert balancer.acquire() == 0, "a has none in flight, b one"
    assert balancer.acquire() == 0, "a tie goes to the first listed"
    assert balancer.in_flight == [2, 1]
    assert balancer.acquire() == 1


def test_one_server_needs_no_balancing() -> None:
    balancer = ReplicaBalancer(["http://a:1"], "least_outstanding")
    assert [balancer.acquire() for _ in range(3)] == [0, 0, 0]


def test_an_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown balance 'random'"):
        ReplicaBalancer(["http://a:1"], "random")


@pytest.fixture
def servers() -> Iterator[tuple[StreamingServer, StreamingServer]]:
    """A fast server and a slow one (each request holds it 30 times longer)."""
    with (
        StreamingServer(ttft_s=0.002, gap_s=0.001) as fast,
        StreamingServer(ttft_s=0.06, gap_s=0.01) as slow,
    ):
        yield fast, slow


def spread_spec(tmp_path: Path, urls: list[str], **fields: Any) -> LoadSpec:
    values: dict[str, Any] = {
        "base_url": urls[0],
        "replica_urls": tuple(urls),
        "model": "tiny",
        "level": 4,
        "requests": 40,
        "timeout_s": 10.0,
        "dataset": DatasetSpec(input_tokens=8, output_tokens=4),
    }
    return load_spec(tmp_path, **{**values, **fields})


def load(spec: LoadSpec) -> pd.DataFrame:
    run_load(spec)
    records = read_records([spec.records_path])
    assert (records["error"] == "").all(), records["error"].tolist()
    return records


def address(server: StreamingServer) -> str:
    return server.url.removeprefix("http://")


def test_round_robin_splits_requests_exactly(
    tmp_path: Path, servers: tuple[StreamingServer, StreamingServer]
) -> None:
    fast, slow = servers
    records = load(spread_spec(tmp_path, [fast.url, slow.url]))
    assert len(fast.seen.bodies) == len(slow.seen.bodies) == 20
    assert records["replica"].value_counts().to_dict() == {0: 20, 1: 20}
    assert (records.loc[records["replica"] == 0, "replica_address"] == address(fast)).all()
    assert (records.loc[records["replica"] == 1, "replica_address"] == address(slow)).all()
    # each server generated what its records say it did
    for index, server in enumerate(servers):
        mine = records[records["replica"] == index]
        assert mine["output_tokens"].sum() == sum(b["max_tokens"] for b in server.seen.bodies)


def test_least_outstanding_sends_more_to_the_faster_server(
    tmp_path: Path, servers: tuple[StreamingServer, StreamingServer]
) -> None:
    fast, slow = servers
    spec = spread_spec(tmp_path, [slow.url, fast.url], options={"balance": "least_outstanding"})
    records = load(spec)
    assert len(fast.seen.bodies) + len(slow.seen.bodies) == 40
    assert len(fast.seen.bodies) > 2 * len(slow.seen.bodies), (
        len(fast.seen.bodies),
        len(slow.seen.bodies),
    )
    counts = records["replica"].value_counts().to_dict()
    assert counts == {0: len(slow.seen.bodies), 1: len(fast.seen.bodies)}


def test_the_summary_has_each_replicas_figures(
    tmp_path: Path, servers: tuple[StreamingServer, StreamingServer]
) -> None:
    fast, slow = servers
    records = load(spread_spec(tmp_path, [fast.url, slow.url], requests=12, level=2))
    summary = summarize_openai(records)
    by_replica = summary["by_replica"]
    assert set(by_replica) == {"0", "1"}
    assert by_replica["0"]["address"] == address(fast)
    assert by_replica["1"]["address"] == address(slow)
    for figures in by_replica.values():
        assert figures["counts"] == {"sent": 6, "completed": 6, "failed": 0}
        assert figures["ttft_ms"]["p50"] > 0
    assert by_replica["1"]["ttft_ms"]["p50"] > by_replica["0"]["ttft_ms"]["p50"]
    total = sum(f["output_throughput"] for f in by_replica.values())
    assert total == pytest.approx(summary["per_level"]["output_throughput"])


def test_one_server_has_no_per_replica_figures(tmp_path: Path) -> None:
    with StreamingServer() as server:
        records = load(spread_spec(tmp_path, [server.url], requests=4))
    assert (records["replica"] == 0).all()
    assert "by_replica" not in summarize_openai(records)


def test_embeddings_spread_too(
    tmp_path: Path, servers: tuple[StreamingServer, StreamingServer]
) -> None:
    fast, slow = servers
    records = load(spread_spec(tmp_path, [fast.url, slow.url], api="embeddings", requests=6))
    assert records["replica"].value_counts().to_dict() == {0: 3, 1: 3}
    assert len(fast.seen.bodies) == len(slow.seen.bodies) == 3
    assert set(summarize_openai(records)["by_replica"]) == {"0", "1"}
