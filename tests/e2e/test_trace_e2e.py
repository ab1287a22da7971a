"""Traces replayed against the real llama-server and SmolLM2: what the server received (its
usage: prompt and completion tokens) is what each trace entry asked for, and each request left
at its trace instant over the speed, late by no more than docs/metrics.md allows a rate-mode
send (`queue_ms` p99 within 1 ms or 5% of the median TTFT); a Mooncake-style trace (blocks
shared by hash id) and a BurstGPT-style CSV, at speeds 1 and 2; and a whole session replaying a
trace from a recipe."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pandas as pd
import pytest

from pytest_aifactory.cluster.local import LocalJobExecutor
from pytest_aifactory.cluster.rundir import RunDir, make_run_id
from pytest_aifactory.loadgen.datasets import ServerTokenizer, build_prompts
from pytest_aifactory.loadgen.records import read_records
from pytest_aifactory.loadgen.runner import run_load
from pytest_aifactory.loadgen.spec import DatasetSpec, LoadSpec
from pytest_aifactory.services.manager import ServiceManager
from pytest_aifactory.testing.load_specs import load_spec
from tests.factories import recipe, recipe_document
from tests.helpers import Session, run_benchmark, write_recipe

pytestmark = [pytest.mark.slow, pytest.mark.requires("llama-server")]

BLOCK = 32
MOONCAKE: list[dict[str, Any]] = [
    {"timestamp": 0, "input_length": 80, "output_length": 4, "hash_ids": [0, 1, 2]},
    {"timestamp": 400, "input_length": 70, "output_length": 3, "hash_ids": [0, 1, 3]},
    {"timestamp": 900, "input_length": 40, "output_length": 5, "hash_ids": [4, 5]},
    {"timestamp": 1300, "input_length": 90, "output_length": 2, "hash_ids": [0, 1, 2, 6]},
    {"timestamp": 2100, "input_length": 33, "output_length": 4, "hash_ids": [4, 7]},
]
"""Blocks of 32 tokens: entries 0, 1 and 3 open with the same 64 tokens, 2 and 4 with 32."""
BURSTGPT = [
    (0.0, 30, 4),
    (0.5, 45, 0),  # failed in the trace: not replayed
    (0.7, 25, 3),
    (1.6, 50, 5),
    (2.2, 20, 2),
]
"""(Timestamp, Request tokens, Response tokens)."""


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A keyed llama-server of a run: (url, the run's key)."""
    tmp = tmp_path_factory.mktemp("llama")
    run = RunDir.create(tmp / "reports", make_run_id("traces"))
    run.start_heartbeat()  # the service job watches it, as under a session
    # one core for the server, one left for the client: its sends are what is measured
    service = {"args": ["--parallel", "4", "--threads", "1"]}
    services = ServiceManager(recipe(name="traces", service=service), run, LocalJobExecutor(run))
    try:
        yield services.endpoint("llm").url, run.api_key()
    finally:
        services.stop_all()
        run.stop_heartbeat()


def mooncake_trace(folder: Path) -> tuple[Path, list[tuple[float, int, int]]]:
    path = folder / "mooncake.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in MOONCAKE))
    expected = [(r["timestamp"] / 1000, r["input_length"], r["output_length"]) for r in MOONCAKE]
    return path, expected


def burstgpt_trace(folder: Path) -> tuple[Path, list[tuple[float, int, int]]]:
    path = folder / "burstgpt.csv"
    header = "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
    rows = "".join(f"{t},ChatGPT,{i},{o},{i + o},Conversation log\n" for t, i, o in BURSTGPT)
    path.write_text(header + rows)
    return path, [(t, i, o) for t, i, o in BURSTGPT if o > 0]


def replay(tmp_path: Path, llama: tuple[str, str], path: Path, speed: float) -> pd.DataFrame:
    url, key = llama
    spec: LoadSpec = load_spec(
        tmp_path,
        base_url=url,
        api_key=key,
        mode="replay",
        level=speed,
        level_label=f"replay={speed:g}",
        requests=None,
        warmup_requests=1,
        timeout_s=120.0,
        dataset=DatasetSpec(kind="trace", path=str(path), block_tokens=BLOCK),
    )
    outcome = run_load(spec)
    records = read_records([spec.records_path])
    measured = records[records["phase"] == "measure"].sort_values("request_id")
    assert (measured["error"] == "").all(), measured["error"].tolist()
    measured.attrs["started_at"] = outcome["started_at"]
    return measured


def assert_received(records: pd.DataFrame, expected: list[tuple[float, int, int]]) -> None:
    """The server's usage says it got each entry's prompt length (give or take the
    begin-of-sequence token it adds to every prompt alike) and generated its reply length."""
    assert len(records) == len(expected)
    assert list(records["output_tokens"]) == [o for _, _, o in expected]
    added = set(records["input_tokens"].to_numpy() - np.array([i for _, i, _ in expected]))
    assert len(added) == 1, added
    assert added <= {0, 1}
    assert records["prompt_tokens_exact"].all()


def assert_on_time(
    records: pd.DataFrame, expected: list[tuple[float, int, int]], speed: float
) -> None:
    """Each request's instant is its trace time over the speed after the start, and it left
    within the bound docs/metrics.md sets for rate-mode sends."""
    started = records.attrs["started_at"]
    first = expected[0][0]
    wanted = [(t - first) / speed for t, _, _ in expected]
    assert list(records["scheduled_ts"] - started) == pytest.approx(wanted, abs=1e-6)
    late_s = records["send_ts"] - records["scheduled_ts"]
    assert (late_s >= 0).all(), "no request leaves before its instant"
    bound_ms = max(1.0, 0.05 * float(records["ttft_ms"].median()))
    assert float(np.percentile(records["queue_ms"], 99)) <= bound_ms, list(records["queue_ms"])


@pytest.mark.parametrize("speed", [1.0, 2.0])
def test_a_mooncake_trace_reaches_the_server_on_time(
    tmp_path: Path, llama: tuple[str, str], speed: float
) -> None:
    path, expected = mooncake_trace(tmp_path)
    records = replay(tmp_path, llama, path, speed)
    assert_received(records, expected)
    assert_on_time(records, expected, speed)


def test_mooncake_blocks_are_one_text_to_the_servers_tokenizer(
    tmp_path: Path, llama: tuple[str, str]
) -> None:
    """Entries naming the same hash ids open with the same tokens, as the server tokenizes
    them: its prefix cache meets the trace's reuse (whether it hits depends on its slots)."""
    url, key = llama
    path, expected = mooncake_trace(tmp_path)
    spec = load_spec(
        tmp_path,
        base_url=url,
        api_key=key,
        mode="replay",
        requests=None,
        dataset=DatasetSpec(kind="trace", path=str(path), block_tokens=BLOCK),
    )

    async def tokens() -> list[list[int]]:
        async with aiohttp.ClientSession() as session:
            prompts = await build_prompts(session, spec)
            tokenizer = ServerTokenizer(session, url, "", key)
            await tokenizer.probe()
            return [await tokenizer.tokenize(p.text) for p in prompts]

    made = asyncio.run(tokens())
    assert [len(t) for t in made] == [i for _, i, _ in expected]
    assert made[0][:64] == made[1][:64] == made[3][:64], "blocks 0 and 1"
    # entry 0 ends 16 tokens into block 2, entry 3 holds it all: the same opening (the cut's
    # last tokens may merge otherwise with what follows them)
    assert made[0][:76] == made[3][:76], "and block 2, as far as entry 0 goes"
    assert made[0][64:70] != made[1][64:70], "block 2 is not block 3"
    assert made[2][:32] == made[4][:32], "block 4"
    assert made[2][:32] != made[0][:32]


@pytest.mark.parametrize("speed", [1.0, 2.0])
def test_a_burstgpt_trace_reaches_the_server_on_time(
    tmp_path: Path, llama: tuple[str, str], speed: float
) -> None:
    path, expected = burstgpt_trace(tmp_path)
    records = replay(tmp_path, llama, path, speed)
    assert_received(records, expected)
    assert_on_time(records, expected, speed)


# -- a whole session ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Session:
    tmp = tmp_path_factory.mktemp("trace-session")
    mooncake_trace(tmp)
    clients: dict[str, Any] = {
        "replayed": {
            "kind": "openai",
            "service": "llm",
            "processes_per_node": 2,
            "dataset": {"kind": "trace", "path": "mooncake.jsonl", "block_tokens": BLOCK},
            "load": {"mode": "replay", "levels": [2]},
        },
    }
    document = recipe_document(
        name="e2e-trace",
        service={"args": ["--parallel", "4", "--threads", "1"], "health_timeout_s": 120},
        clients=clients,
        monitor={"prometheus": False},
    )
    return run_benchmark(tmp, write_recipe(tmp / "trace.yaml", document), "-v")


def test_a_session_replays_a_trace_over_its_processes(session: Session) -> None:
    assert session.returncode == 0, session.output
    assert "Traceback" not in session.output
    assert "replay=2" in session.output
    (run,) = session.run_dirs()
    records = pd.read_parquet(run / "records.parquet")
    records = records[records["phase"] == "measure"]
    assert (records["error"] == "").all()
    assert set(records["level_label"]) == {"replay=2"}
    assert sorted(records["output_tokens"]) == sorted(r["output_length"] for r in MOONCAKE)
    assert set(records["process"]) == {0, 1}, "entries dealt to both processes"
    # both processes started together: their instants are the trace's, at twice its speed
    scheduled = np.sort(records["scheduled_ts"].to_numpy())
    wanted = [r["timestamp"] / 2000 for r in MOONCAKE]
    assert list(scheduled - scheduled[0]) == pytest.approx(wanted, abs=0.005)
    (test,) = session.summary()["tests"]
    assert test["mode"] == "replay"
    assert test["level"] == 2
    assert test["counts"]["completed"] == len(MOONCAKE)
    assert test["prompt_tokens_exact"]
    assert not test["load_generator"]["saturated"], test["load_generator"]
