"""A reasoning model's answer: thinking streamed first, then the answer.

The token server streams N reasoning tokens then M answer tokens at known instants, in the
shapes servers use (chat `reasoning_content`, chat `reasoning`, a completions choice's
`reasoning_content`). TTFT (first token of any kind) and TTFO (first answer token) must match
the server's own times within the one-stream fidelity bounds the fidelity tests hold the client
to; reasoning tokens are counted exactly and are part of the output tokens.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from benchmarks.tools.fidelity import compare
from pytest_aifactory.loadgen.records import read_records
from pytest_aifactory.loadgen.runner import run_load
from pytest_aifactory.loadgen.spec import DatasetSpec, LoadSpec
from pytest_aifactory.metrics.stats import summarize_llm
from pytest_aifactory.testing.load_specs import load_spec
from pytest_aifactory.testing.streaming_server import StreamingServer
from pytest_aifactory.testing.token_server import TokenServer
from tests.loadgen.test_client_fidelity import ATTEMPTS, ONE_STREAM_P99_MS

REASONING = 12
ANSWER = 20
TOKENS = REASONING + ANSWER
REQUESTS = 10

SHAPES = [
    ("chat", "reasoning_content"),
    ("chat", "reasoning"),
    ("completions", "reasoning_content"),
]


@pytest.fixture(scope="module")
def server() -> Iterator[TokenServer]:
    with TokenServer(ttft_ms=20, gap_ms=5, jitter_ms=2, seed=3) as running:
        yield running


def spec_for(tmp_path: Path, url: str, **overrides: Any) -> LoadSpec:
    values: dict[str, Any] = {
        "base_url": url,
        "model": "token-server",
        "requests": REQUESTS,
        "warmup_requests": 1,
        "timeout_s": 30.0,
        "dataset": DatasetSpec(input_tokens=8, output_tokens=TOKENS),
    }
    return load_spec(tmp_path, **{**values, **overrides})


def measured(spec: LoadSpec) -> pd.DataFrame:
    records = read_records([spec.records_path])
    return records[records["phase"] == "measure"].reset_index(drop=True)


def ttfo_errors(records: pd.DataFrame, truth: dict[str, Any]) -> np.ndarray:
    """Each request's TTFO minus the true one: first answer event sent - request arrived."""
    served = {t["request_id"]: t for t in truth["requests"]}
    errors = []
    for row in records.to_dict("records"):
        request = served[f"{row['process']}-{row['request_id']}"]
        first_answer = request["events_ns"][request["reasoning_events"]]
        errors.append(row["ttfo_ms"] - (first_answer - request["received_ns"]) / 1e6)
    return np.asarray(errors)


def p99_abs(values: np.ndarray) -> float:
    return float(np.percentile(np.abs(values), 99))


@pytest.mark.slow  # the token server runs in a child process
@pytest.mark.parametrize(("api", "field"), SHAPES)
def test_ttft_and_ttfo_match_the_server(
    tmp_path: Path, server: TokenServer, api: str, field: str
) -> None:
    server.configure(reasoning_tokens=REASONING, reasoning_field=field)
    try:
        for attempt in range(ATTEMPTS):
            server.reset()
            spec = spec_for(tmp_path / f"attempt-{attempt}", server.url, api=api)
            outcome = run_load(spec)
            records = measured(spec)
            truth = server.truth()
            fidelity = compare(records, truth)
            ttfo = ttfo_errors(records, truth)
            ttft_p99, ttfo_p99 = fidelity.p99_abs()["ttft_ms"], p99_abs(ttfo)
            bound = ONE_STREAM_P99_MS["ttft_ms"]
            if ttft_p99 <= bound and ttfo_p99 <= bound:
                break
    finally:
        server.configure(reasoning_tokens=0, reasoning_field="reasoning_content")
    print(api, field, fidelity.describe(), {"ttfo_p99_abs": ttfo_p99})
    assert outcome["failed"] == 0
    assert fidelity.matched == REQUESTS
    assert fidelity.unmatched == 0
    assert all(t["reasoning_events"] == REASONING for t in truth["requests"])
    # the client never times an event before the server wrote it
    assert fidelity.ttft_ms.min() > -0.05
    assert ttfo.min() > -0.05
    assert ttft_p99 <= ONE_STREAM_P99_MS["ttft_ms"], fidelity.describe()
    assert ttfo_p99 <= ONE_STREAM_P99_MS["ttft_ms"], ttfo
    # the answer starts REASONING gaps of about 5 ms after the first reasoning token
    assert (records["ttfo_ms"] - records["ttft_ms"]).min() > REASONING * (5 - 2) - 1
    assert (records["reasoning_tokens"] == REASONING).all()
    assert (records["output_tokens"] == REASONING + ANSWER).all()
    assert (records["content_events"] == TOKENS).all()
    assert not records["tokens_estimated"].any()
    # ITL and TPOT over every output token, reasoning included
    assert fidelity.itl_ms.size == REQUESTS * (TOKENS - 1)
    assert p99_abs(fidelity.itl_ms) <= ONE_STREAM_P99_MS["itl_ms"]
    assert p99_abs(fidelity.tpot_ms) <= ONE_STREAM_P99_MS["tpot_ms"]
    summary = summarize_llm(records)
    assert summary["per_request"]["reasoning_tokens"]["mean"] == REASONING
    assert summary["per_request"]["ttfo_ms"]["p50"] == pytest.approx(
        float(records["ttfo_ms"].median())
    )


@pytest.mark.slow
def test_the_servers_reasoning_count_is_taken(tmp_path: Path, server: TokenServer) -> None:
    """Several tokens per event: the events undercount; the server's usage says how many."""
    server.configure(reasoning_tokens=REASONING, reasoning_usage=True, tokens_per_event=5)
    try:
        server.reset()
        spec = spec_for(tmp_path, server.url, api="chat", requests=3)
        run_load(spec)
    finally:
        server.configure(reasoning_tokens=0, reasoning_usage=False, tokens_per_event=1)
    records = measured(spec)
    assert (records["error"] == "").all()
    assert (records["content_events"] == math.ceil(REASONING / 5) + math.ceil(ANSWER / 5)).all()
    assert (records["reasoning_tokens"] == REASONING).all()
    assert (records["output_tokens"] == TOKENS).all()


@pytest.mark.slow
def test_without_usage_reasoning_deltas_are_counted(tmp_path: Path, server: TokenServer) -> None:
    server.configure(reasoning_tokens=REASONING, usage=False)
    try:
        server.reset()
        spec = spec_for(tmp_path, server.url, api="completions", requests=3)
        run_load(spec)
    finally:
        server.configure(reasoning_tokens=0, usage=True)
    records = measured(spec)
    assert (records["error"] == "").all()
    assert records["tokens_estimated"].all()
    assert (records["reasoning_tokens"] == REASONING).all()
    assert (records["output_tokens"] == TOKENS).all(), "reasoning + answer events"


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_an_answer_of_reasoning_only_is_not_empty(tmp_path: Path, api: str) -> None:
    """A model that spent every token thinking answered nothing, but it generated: the request
    succeeds, its TTFT is timed and its TTFO has no value."""
    with StreamingServer(ttft_s=0.0, gap_s=0.001, reasoning_tokens=100) as server:
        spec = spec_for(tmp_path, server.url, api=api, requests=2, warmup_requests=0)
        outcome = run_load(spec)
    records = measured(spec)
    assert outcome["failed"] == 0, records["error"].tolist()
    assert (records["ttft_ms"] > 0).all()
    assert records["ttfo_ms"].isna().all()
    assert (records["reasoning_tokens"] == TOKENS).all()
    assert (records["output_tokens"] == TOKENS).all()


def test_an_ordinary_answer_has_ttfo_equal_to_ttft(tmp_path: Path) -> None:
    with StreamingServer(ttft_s=0.0, gap_s=0.001) as server:
        spec = spec_for(tmp_path, server.url, api="chat", requests=2, warmup_requests=0)
        run_load(spec)
    records = measured(spec)
    assert (records["error"] == "").all()
    assert (records["ttfo_ms"] == records["ttft_ms"]).all()
    assert (records["reasoning_tokens"] == 0).all()
