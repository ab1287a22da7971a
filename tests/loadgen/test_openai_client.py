"""The `openai` client kind against a streaming server whose timing and faults are known."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pandas as pd
import pytest

from pytest_aifactory.loadgen.datasets import build_prompts
from pytest_aifactory.loadgen.kinds import get_client_kind
from pytest_aifactory.loadgen.progress import read_progress
from pytest_aifactory.loadgen.records import RECORD_FIELDS, read_records
from pytest_aifactory.loadgen.runner import run_load
from pytest_aifactory.loadgen.spec import DatasetSpec, LoadSpec
from pytest_aifactory.testing.load_specs import load_spec
from pytest_aifactory.testing.streaming_server import FAULTS, StreamingServer
from tests.helpers import REPO


@pytest.fixture
def server() -> Any:
    with StreamingServer() as running:
        yield running


SMALL_LOAD: dict[str, Any] = {
    "model": "tiny",
    "requests": 3,
    "timeout_s": 5.0,
    "dataset": DatasetSpec(input_tokens=16, output_tokens=8),
    "seed": 7,
}
"""Three short requests: what most tests here send, unless they say otherwise."""


def make_spec(tmp_path: Path, url: str, **overrides: Any) -> LoadSpec:
    return load_spec(tmp_path, base_url=url, **{**SMALL_LOAD, **overrides})


def run(spec: LoadSpec) -> tuple[dict[str, Any], pd.DataFrame]:
    outcome = run_load(spec)
    return outcome, read_records([spec.records_path])


def measured(records: pd.DataFrame) -> pd.DataFrame:
    return records[records["phase"] == "measure"]


def max_overlap(records: pd.DataFrame) -> int:
    """Most requests in flight at once, from their send and end times (ends sort first)."""
    events = sorted(
        [(t, 1) for t in records["send_ts"]] + [(t, -1) for t in records["end_ts"]],
        key=lambda e: (e[0], e[1]),
    )
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak


def test_openai_kind_loads_with_the_openai_client() -> None:
    from pytest_aifactory.loadgen.openai import run_openai

    assert get_client_kind("openai").load_function() is run_openai


def test_timings_match_the_server(tmp_path: Path, server: StreamingServer) -> None:
    server.behaviour.ttft_s = 0.10
    server.behaviour.gap_s = 0.02
    server.behaviour.tokens = 6
    outcome, records = run(make_spec(tmp_path, server.url))
    assert outcome["completed"] == 3
    assert outcome["failed"] == 0
    assert list(records.columns[: len(RECORD_FIELDS)]) == list(RECORD_FIELDS)
    assert (records["error"] == "").all()
    assert records["ttft_ms"].median() == pytest.approx(100, abs=30)
    assert records["ttft_ms"].min() >= 99
    itl = np.concatenate([np.asarray(x) for x in records["itl_ms"]])
    assert len(itl) == 3 * 5
    assert float(np.median(itl)) == pytest.approx(20, abs=10)
    assert records["e2el_ms"].median() == pytest.approx(100 + 5 * 20, abs=40)
    assert records["tpot_ms"].median() == pytest.approx(20, abs=10)
    expected_tpot = (records["e2el_ms"] - records["ttft_ms"]) / 5
    assert np.allclose(records["tpot_ms"], expected_tpot)
    assert (records["output_tokens"] == 6).all()
    assert (records["content_events"] == 6).all()
    assert not records["tokens_estimated"].any()
    assert (records["http_status"] == 200).all()
    # timestamps agree with the durations measured on the monotonic clock
    ttft_from_ts = (records["first_token_ts"] - records["send_ts"]) * 1000
    assert np.allclose(ttft_from_ts, records["ttft_ms"], atol=0.01)
    assert (records["end_ts"] >= records["first_token_ts"]).all()


def test_exact_input_tokens_reported_by_usage(tmp_path: Path, server: StreamingServer) -> None:
    spec = make_spec(tmp_path, server.url, dataset=DatasetSpec(input_tokens=37, output_tokens=4))
    _, records = run(spec)
    assert (records["input_tokens"] == 37).all()
    prompts = [body["prompt"] for body in server.seen.bodies]
    assert len(set(prompts)) == 3, "each request of a small load has its own prompt"


def test_missing_usage_counts_content_events(tmp_path: Path, server: StreamingServer) -> None:
    server.behaviour.usage = False
    server.behaviour.tokens = 8
    server.behaviour.tokens_per_event = 2
    _, records = run(make_spec(tmp_path, server.url))
    assert (records["error"] == "").all()
    assert (records["content_events"] == 4).all()
    assert (records["output_tokens"] == 4).all()
    assert records["tokens_estimated"].all()
    assert (records["input_tokens"] == 16).all(), "the exact prompt count stands in for usage"


def test_usage_counts_tokens_of_multi_token_events(tmp_path: Path, server: StreamingServer) -> None:
    server.behaviour.tokens = 8
    server.behaviour.tokens_per_event = 2
    _, records = run(make_spec(tmp_path, server.url))
    assert (records["content_events"] == 4).all()
    assert (records["output_tokens"] == 8).all()
    assert not records["tokens_estimated"].any()
    assert records["itl_ms"].map(len).eq(3).all()
    expected_tpot = (records["e2el_ms"] - records["ttft_ms"]) / 7
    assert np.allclose(records["tpot_ms"], expected_tpot)


def test_request_body_and_headers(tmp_path: Path, server: StreamingServer) -> None:
    spec = make_spec(tmp_path, server.url + "/v1/", api_key="secret-key", requests=1)
    run(spec)
    (body,) = server.seen.bodies
    assert body["model"] == "tiny"
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 8
    assert body["ignore_eos"] is True
    assert isinstance(body["prompt"], str)
    assert server.seen.headers[0]["Authorization"] == "Bearer secret-key"


def test_no_ignore_eos_when_not_asked(tmp_path: Path, server: StreamingServer) -> None:
    dataset = DatasetSpec(input_tokens=8, output_tokens=4, ignore_eos=False)
    run(make_spec(tmp_path, server.url, requests=1, dataset=dataset))
    assert "ignore_eos" not in server.seen.bodies[0]
    assert "Authorization" not in server.seen.headers[0]


def test_chat_role_only_delta_is_not_content(tmp_path: Path, server: StreamingServer) -> None:
    server.behaviour.ttft_s = 0.15
    server.behaviour.tokens = 4
    _, records = run(make_spec(tmp_path, server.url, api="chat", requests=2))
    assert (records["error"] == "").all()
    assert records["ttft_ms"].min() >= 149, "the role-only delta arrives at once"
    assert (records["content_events"] == 4).all()
    (message,) = server.seen.bodies[0]["messages"]
    assert message["role"] == "user"


EXPECTED_ERRORS = {
    "http500": "HTTPError: 500 Internal Server Error: engine exploded",
    "invalid_json": "StreamError: invalid JSON in event",
    "truncated": "StreamError: stream ended without [DONE]",
    "cut": "StreamError: ",
    "content_type": "StreamError: expected text/event-stream",
    "hang": "Timeout: no response within 0.4 s",
    "empty": "EmptyResponse: no content events",
    "error_event": "StreamError: error event",
    "garbage": "StreamError: stream ended without [DONE]",
}


@pytest.mark.parametrize("fault", FAULTS)
def test_faults_become_error_records(tmp_path: Path, server: StreamingServer, fault: str) -> None:
    server.behaviour.fault = fault
    server.behaviour.ttft_s = 0.0
    server.behaviour.hang_s = 2.0
    spec = make_spec(tmp_path, server.url, requests=2, level=2, timeout_s=0.4)
    outcome, records = run(spec)
    assert outcome["failed"] == 2
    assert outcome["completed"] == 0
    assert len(records) == 2
    for error in records["error"]:
        assert error.startswith(EXPECTED_ERRORS[fault]), error
    if fault == "http500":
        assert (records["http_status"] == 500).all()
        assert len(records["error"].iloc[0]) < 300, "the body is cut to an excerpt"


def test_unreachable_server_gives_connection_errors(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    spec = make_spec(tmp_path, f"http://127.0.0.1:{port}", requests=2)
    outcome, records = run(spec)
    assert outcome["failed"] == 2
    assert records["error"].str.startswith("ConnectionError: ").all()
    assert records["http_status"].isna().all()


def test_server_closing_kept_alive_connections(tmp_path: Path, server: StreamingServer) -> None:
    """A server that closes kept-alive connections while announcing keep-alive must not turn the
    client's reuse of such a connection into failed requests: the request the server never saw
    is sent again, on a fresh connection, since the pool may hold more closed ones. The server
    closes every connection when its second request arrives, so once the connections opened by
    the prompt probe are used up, reusing one meets a closed connection, never by chance."""
    server.behaviour.close_on_reuse = True
    server.behaviour.ttft_s = 0.0
    server.behaviour.gap_s = 0.0
    server.behaviour.tokens = 2
    spec = make_spec(tmp_path, server.url, level=1, requests=24)
    _, records = run(spec)
    assert records["error"].tolist() == [""] * 24
    assert len(server.seen.bodies) == 24, "the server answered each request once"
    resent = records[records["resends"] > 0]
    assert server.seen.closed_on_reuse > 0
    assert int(records["resends"].sum()) == server.seen.closed_on_reuse
    assert (records["resends"] <= 1).all(), "a resend connects anew: it meets no closed one"
    assert (resent["connect_ms"] > 0).all(), "a resend connects anew"


def test_pooled_connections_are_reused(tmp_path: Path, server: StreamingServer) -> None:
    """A server that keeps connections alive: once each stream has a connection (from the
    prompt probe or the warmup), every request reuses a pooled one (connect_ms 0)."""
    spec = make_spec(tmp_path, server.url, level=4, requests=40, warmup_requests=4)
    _, records = run(spec)
    assert records["error"].tolist() == [""] * 44
    assert (measured(records)["connect_ms"] == 0).all()
    assert (records["connect_ms"] > 0).sum() <= 4, "at most one connection per stream"
    assert (records["resends"] == 0).all()


def test_a_connection_per_request_when_asked(tmp_path: Path, server: StreamingServer) -> None:
    spec = make_spec(tmp_path, server.url, level=4, requests=20, connections="per_request")
    _, records = run(spec)
    assert records["error"].tolist() == [""] * 20
    assert (records["connect_ms"] > 0).all(), "every request connects"
    assert (records["resends"] == 0).all()
    # the connect lies inside TTFT too: a request that spent longer connecting than its whole
    # TTFT would mean the clock started after the connect
    assert (records["connect_ms"] < records["ttft_ms"]).all()


def test_unknown_connections_setting_is_refused(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "http://127.0.0.1:9", connections="sometimes")
    with pytest.raises(ValueError, match="unknown connections 'sometimes'"):
        run_load(spec)


def test_concurrency_never_exceeds_its_level(tmp_path: Path, server: StreamingServer) -> None:
    server.behaviour.ttft_s = 0.01
    server.behaviour.gap_s = 0.003
    server.behaviour.tokens = 4
    spec = make_spec(tmp_path, server.url, level=3, requests=24)
    outcome, records = run(spec)
    assert outcome["completed"] == 24
    assert max_overlap(records) == 3
    assert server.seen.max_in_flight == 3
    assert sorted(records["request_id"]) == list(range(24))
    assert records["queue_ms"].max() < 50, "a free worker sends at once"


def test_rate_mode_achieves_the_requested_rate(tmp_path: Path, server: StreamingServer) -> None:
    server.behaviour.ttft_s = 0.01
    server.behaviour.tokens = 2
    spec = make_spec(
        tmp_path,
        server.url,
        mode="rate",
        level=20.0,
        arrival="constant",
        requests=None,
        duration_s=2.0,
    )
    outcome, records = run(spec)
    assert outcome["sent"] == 40
    # planned from the start, not from the last send: no drift, whatever this machine's speed
    planned = np.sort(records["scheduled_ts"].to_numpy())
    assert np.allclose(np.diff(planned), 1 / 20.0, atol=1e-6)
    late = records["send_ts"] - records["scheduled_ts"]
    assert (late >= -1e-6).all(), "no request leaves before its planned instant"
    # the wait before the write is the client's queue plus any connection it had to open
    waited_ms = records["queue_ms"] + records["connect_ms"]
    assert np.allclose(late * 1000, waited_ms, atol=0.01)


def test_rate_mode_cap_counts_waiting_as_queue(tmp_path: Path, server: StreamingServer) -> None:
    server.behaviour.ttft_s = 0.2
    server.behaviour.tokens = 1
    spec = make_spec(
        tmp_path,
        server.url,
        mode="rate",
        level=50.0,
        arrival="constant",
        requests=6,
        max_concurrency=1,
    )
    _, records = run(spec)
    assert max_overlap(records) == 1
    assert records["queue_ms"].max() > 500, "later requests waited for the single slot"


def test_duration_stops_a_concurrency_load(tmp_path: Path, server: StreamingServer) -> None:
    server.behaviour.ttft_s = 0.05
    server.behaviour.tokens = 1
    spec = make_spec(tmp_path, server.url, level=2, requests=None, duration_s=0.5)
    started = time.monotonic()
    outcome, records = run(spec)
    assert time.monotonic() - started < 3
    assert 4 <= outcome["completed"] <= 24
    first_send = records["send_ts"].min()
    assert records["send_ts"].max() - first_send < 0.5


def test_run_load_end_to_end(tmp_path: Path, server: StreamingServer) -> None:
    spec = make_spec(tmp_path, server.url, level=2, requests=5, warmup_requests=2)
    outcome = run_load(spec)
    assert set(outcome) == {
        "sent",
        "completed",
        "failed",
        "warmup",
        "started_at",
        "ended_at",
        "records_path",
        "interrupted",
    }
    assert (outcome["sent"], outcome["completed"], outcome["warmup"]) == (5, 5, 2)
    assert outcome["interrupted"] is False
    assert outcome["ended_at"] >= outcome["started_at"]
    json.dumps(outcome)
    path = Path(outcome["records_path"])
    assert path.stat().st_mode & 0o777 == 0o600
    records = read_records([path])
    assert list(records["phase"]).count("warmup") == 2
    assert list(records["phase"]).count("measure") == 5
    warm = records[records["phase"] == "warmup"]
    assert warm["end_ts"].max() <= measured(records)["send_ts"].min()
    assert measured(records)["send_ts"].min() >= outcome["started_at"]
    assert sorted(records["request_id"]) == list(range(7))
    assert set(records["client"]) == {"chat"}
    assert set(records["level_label"]) == {"concurrency=2"}
    progress = json.loads(Path(spec.progress_path).read_text())
    assert progress["done"] is True
    assert (progress["sent"], progress["completed"], progress["total"]) == (5, 5, 5)
    assert progress["ttft_p50_ms"] > 0
    assert read_progress([spec.progress_path])["completed"] == 5


def test_start_barrier_waits_after_warmup(tmp_path: Path, server: StreamingServer) -> None:
    start_at = time.time() + 0.6
    spec = make_spec(tmp_path, server.url, warmup_requests=1, requests=2, start_at=start_at)
    outcome, records = run(spec)
    assert records[records["phase"] == "warmup"]["send_ts"].max() < start_at
    assert measured(records)["send_ts"].min() >= start_at
    assert outcome["started_at"] >= start_at


def test_stale_heartbeat_stops_the_load(tmp_path: Path, server: StreamingServer) -> None:
    heartbeat = tmp_path / "heartbeat"
    heartbeat.touch()
    old = time.time() - 120
    os.utime(heartbeat, (old, old))
    spec = make_spec(
        tmp_path, server.url, requests=None, duration_s=30, heartbeat_path=str(heartbeat)
    )
    started = time.monotonic()
    outcome, records = run(spec)
    assert time.monotonic() - started < 5
    assert outcome["interrupted"] is True
    assert outcome["sent"] == 0, "the driver was already gone"
    assert len(records) == 0


def test_heartbeat_going_stale_keeps_records(
    tmp_path: Path, server: StreamingServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pytest_aifactory.cluster import rundir

    monkeypatch.setattr(rundir, "HEARTBEAT_STALE_S", 1.0)
    server.behaviour.ttft_s = 0.05
    server.behaviour.tokens = 2
    heartbeat = tmp_path / "heartbeat"
    heartbeat.touch()
    spec = make_spec(
        tmp_path, server.url, level=2, requests=None, duration_s=30, heartbeat_path=str(heartbeat)
    )
    beating = threading.Event()

    def driver_alive_until_some_requests_completed() -> None:
        # however slow the start on a busy machine, the driver goes away only mid-load
        while not beating.wait(0.1):
            os.utime(heartbeat)
            if (read_progress([Path(spec.progress_path)]).get("completed") or 0) >= 4:
                return

    beat = threading.Thread(target=driver_alive_until_some_requests_completed, daemon=True)
    beat.start()
    try:
        started = time.monotonic()
        outcome, records = run(spec)
    finally:
        beating.set()
        beat.join()
    assert 1.0 < time.monotonic() - started < 25
    assert outcome["interrupted"] is True
    assert outcome["completed"] >= 4
    assert outcome["sent"] == outcome["completed"], "requests in flight were finished"
    assert len(records) == outcome["completed"]


def test_sigterm_keeps_what_was_measured(tmp_path: Path, server: StreamingServer) -> None:
    server.behaviour.ttft_s = 0.02
    server.behaviour.tokens = 2
    spec = make_spec(tmp_path, server.url, level=2, requests=None, duration_s=60)
    spec_file = tmp_path / "spec.pkl"
    spec_file.write_bytes(pickle.dumps(spec))
    code = (
        "import json, pickle, sys\n"
        "from pytest_aifactory.loadgen.runner import run_load\n"
        "print(json.dumps(run_load(pickle.load(open(sys.argv[1], 'rb')))))\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code, str(spec_file)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if (read_progress([spec.progress_path]).get("completed") or 0) >= 4:
                break
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stderr
    outcome = json.loads(stdout.strip().splitlines()[-1])
    assert outcome["interrupted"] is True
    records = read_records([spec.records_path])
    assert len(records) >= 4
    assert len(records) == outcome["completed"] + outcome["failed"]
    assert json.loads(Path(spec.progress_path).read_text())["done"] is True


@pytest.mark.parametrize("shape", ["llama", "vllm"])
def test_prompts_have_exact_token_counts(tmp_path: Path, shape: str) -> None:
    with StreamingServer(tokenizer=shape) as srv:
        spec = make_spec(tmp_path, srv.url, requests=20, dataset=DatasetSpec(input_tokens=50))

        async def build() -> list[Any]:
            async with aiohttp.ClientSession() as session:
                return await build_prompts(session, spec)

        prompts = asyncio.run(build())
        again = asyncio.run(build())
    assert len(prompts) == 20
    assert all(p.exact and p.input_tokens == 50 for p in prompts)
    assert all(len(srv.vocabulary.encode(p.text)) == 50 for p in prompts)
    assert len({p.text for p in prompts}) == 20
    assert [p.text for p in prompts] == [p.text for p in again], "seeded"


def test_prompts_fall_back_to_words_without_tokenizer(tmp_path: Path) -> None:
    with StreamingServer(tokenizer=None, tokens=3) as srv:
        spec = make_spec(tmp_path, srv.url, requests=2, dataset=DatasetSpec(input_tokens=12))

        async def build() -> list[Any]:
            async with aiohttp.ClientSession() as session:
                return await build_prompts(session, spec)

        prompts = asyncio.run(build())
        assert all(not p.exact and len(p.text.split()) == 12 for p in prompts)
        _, records = run(spec)
    assert (records["error"] == "").all()
    # usage is still the truth for input tokens
    expected = [len(srv.vocabulary.encode(p.text)) for p in prompts]
    assert sorted(records["input_tokens"].tolist()) == sorted(expected)


def test_pool_is_shared_by_warmup_and_measure_without_repeats(
    tmp_path: Path, server: StreamingServer
) -> None:
    spec = make_spec(tmp_path, server.url, level=2, warmup_requests=2, requests=6)
    run(spec)
    prompts = [body["prompt"] for body in server.seen.bodies]
    assert len(prompts) == 8
    assert len(set(prompts)) == 8


def test_unknown_kind_and_bad_spec_are_refused(tmp_path: Path) -> None:
    base = make_spec(tmp_path, "http://127.0.0.1:9")
    with pytest.raises(ValueError, match="unknown client kind 'nope'"):
        run_load(replace(base, kind="nope"))
    with pytest.raises(ValueError, match="requests` or `duration_s"):
        run_load(replace(base, requests=None, duration_s=None))
    with pytest.raises(ValueError, match="unknown load mode"):
        run_load(replace(base, mode="burst"))
    with pytest.raises(ValueError, match="unknown api 'images'"):
        run_load(replace(base, api="images"))
