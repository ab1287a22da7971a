"""Multi-turn sessions (`conversation` dataset) sent by the real client and load driver to the
token test server, whose answers and tokenizer are known: each turn carries the history with
the server's own answers, think times pass outside `queue_ms`, the level counts sessions, and
the summary gives figures per turn."""

from __future__ import annotations

import asyncio
import itertools
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pytest_aifactory.loadgen.conversation import build_sessions
from pytest_aifactory.loadgen.llm_datasets.conversation import (
    Conversation,
    draw_seconds,
    within_context,
)
from pytest_aifactory.loadgen.llm_datasets.conversation_source import (
    ConversationFileError,
    load_conversations,
    read_conversations,
    sharegpt_dialogue,
)
from pytest_aifactory.loadgen.records import read_records
from pytest_aifactory.loadgen.runner import run_load
from pytest_aifactory.loadgen.spec import DatasetSpec, LoadSpec
from pytest_aifactory.metrics.openai import summarize_openai
from pytest_aifactory.report.html_report import turns_table
from pytest_aifactory.testing.load_specs import load_spec
from pytest_aifactory.testing.streaming_server import StreamingServer

ANSWER = " t0 t1 t2"
"""What the test server streams for three tokens."""


@pytest.fixture
def server() -> Any:
    with StreamingServer(ttft_s=0.01, gap_s=0.001) as running:
        yield running


def write_conversations(path: Path, sessions: int = 4, turns: int = 3) -> Path:
    rows = [
        {"turns": [f"session {s} turn {t} asks" for t in range(turns)]} for s in range(sessions)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def spec_for(tmp_path: Path, url: str, **fields: Any) -> LoadSpec:
    dataset = DatasetSpec(
        kind="conversation",
        source="file",
        path=str(write_conversations(tmp_path / "conversations.jsonl")),
        output_tokens=3,
    )
    values: dict[str, Any] = {
        "api": "chat",
        "model": "tiny",
        "requests": 6,
        "seed": 5,
        "timeout_s": 10.0,
        "dataset": dataset,
    }
    return load_spec(tmp_path, base_url=url, **{**values, **fields})


def run(spec: LoadSpec) -> pd.DataFrame:
    outcome = run_load(spec)
    assert not outcome["interrupted"]
    records = read_records([spec.records_path])
    return records.sort_values(["session_id", "turn"]).reset_index(drop=True)


def with_dataset(spec: LoadSpec, **fields: Any) -> LoadSpec:
    return replace(spec, dataset=replace(spec.dataset, **fields))


# -- what each turn sends -----------------------------------------------------------------------


def test_each_turn_sends_the_history_with_the_servers_answers(
    tmp_path: Path, server: StreamingServer
) -> None:
    records = run(spec_for(tmp_path, server.url, requests=6))
    assert (records["error"] == "").all(), records["error"].tolist()
    assert records["turn"].tolist() == [0, 1, 2, 0, 1, 2]
    assert (records["session_turns"] == 3).all()
    by_first = {}
    for body in server.seen.bodies:
        messages = body["messages"]
        roles = [m["role"] for m in messages]
        assert roles == ["user", "assistant"] * (len(messages) // 2) + ["user"]
        assert all(m["content"] == ANSWER for m in messages if m["role"] == "assistant")
        asks = [m["content"] for m in messages if m["role"] == "user"]
        session = asks[0].split(" turn ")[0]
        assert asks == [f"{session} turn {t} asks" for t in range(len(asks))]
        by_first.setdefault(session, []).append(messages)
    for chats in by_first.values():
        for earlier, later in itertools.pairwise(chats):
            assert later[: len(earlier)] == earlier, "a turn extends the previous one's chat"
    for _, session in records.groupby("session_id"):
        assert session["input_tokens"].is_monotonic_increasing
        grown = session["input_tokens"].diff().dropna()
        assert (grown >= 3 + 1).all(), "each turn adds the answer and a new message"
    assert not records["prompt_tokens_exact"].any(), "the chat's own count is the server's"


def test_a_chats_system_message_leads_every_turn(tmp_path: Path, server: StreamingServer) -> None:
    chat = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "a recorded answer, never sent"},
        {"role": "user", "content": "second"},
    ]
    path = tmp_path / "chats.jsonl"
    path.write_text(json.dumps({"messages": chat, "output_tokens": [3, 3]}) + "\n")
    spec = with_dataset(spec_for(tmp_path, server.url, requests=2), path=str(path))
    records = run(spec)
    assert (records["error"] == "").all()
    assert [body["messages"] for body in server.seen.bodies] == [
        [chat[0], chat[1]],
        [chat[0], chat[1], {"role": "assistant", "content": ANSWER}, chat[3]],
    ]


def test_think_time_passes_after_each_answer_outside_queue_ms(
    tmp_path: Path, server: StreamingServer
) -> None:
    spec = spec_for(tmp_path, server.url, level=2, requests=6)
    records = run(with_dataset(spec, think_time_s=0.2))
    assert (records["error"] == "").all()
    for _, session in records.groupby("session_id"):
        for before, after in itertools.pairwise(session.itertuples()):
            assert after.scheduled_ts >= before.end_ts + 0.2
            assert after.send_ts >= after.scheduled_ts
    waited = records["send_ts"] - records["scheduled_ts"]
    told = (records["queue_ms"] + records["connect_ms"]) / 1000
    assert np.allclose(waited, told, atol=1e-3), "queue_ms runs from the end of the pause"


def test_the_level_counts_sessions_in_flight(tmp_path: Path, server: StreamingServer) -> None:
    spec = spec_for(tmp_path, server.url, level=3, requests=12)
    records = run(with_dataset(spec, think_time_s=0.05))
    assert len(records) == 12, "requests counts turns"
    spans = records.groupby("session_id").agg(start=("scheduled_ts", "min"), end=("end_ts", "max"))
    assert len(spans) >= 4, "a worker opens the next session when its last one ended"
    edges = sorted([(t, 1) for t in spans["start"]] + [(t, -1) for t in spans["end"]])
    in_flight = np.cumsum([step for _, step in edges])
    assert in_flight.max() == 3
    assert server.seen.max_in_flight <= 3


def test_rate_mode_opens_sessions_per_second(tmp_path: Path, server: StreamingServer) -> None:
    spec = spec_for(tmp_path, server.url, mode="rate", level=10.0, arrival="constant", requests=9)
    records = run(spec)
    assert len(records) == 9
    firsts = records[records["turn"] == 0].sort_values("scheduled_ts")["scheduled_ts"]
    assert len(firsts) == 3
    assert np.allclose(np.diff(firsts.to_numpy()), 0.1, atol=1e-4)
    later = records[records["turn"] > 0]
    assert (later["scheduled_ts"] > firsts.min()).all()


def test_max_concurrency_caps_the_turns_in_flight(tmp_path: Path, server: StreamingServer) -> None:
    spec = spec_for(tmp_path, server.url, mode="rate", level=50.0, requests=6, max_concurrency=1)
    records = run(spec)
    assert len(records) == 6
    assert (records["error"] == "").all()
    assert server.seen.max_in_flight == 1
    assert records["session_id"].nunique() >= 2, "sessions were opened while others went on"


def test_warmup_sends_first_turns_of_sessions_the_load_does_not_reopen(
    tmp_path: Path, server: StreamingServer
) -> None:
    records = run(spec_for(tmp_path, server.url, warmup_requests=2, requests=3))
    warmup = records[records["phase"] == "warmup"]
    measured = records[records["phase"] == "measure"]
    assert warmup["turn"].tolist() == [0, 0]
    assert set(warmup["session_id"]) == {0, 1}
    assert set(measured["session_id"]) == {2}
    assert measured["turn"].tolist() == [0, 1, 2]


def test_a_failed_turn_ends_its_session(tmp_path: Path) -> None:
    with StreamingServer(fault="http500") as failing:
        records = run(spec_for(tmp_path, failing.url, requests=3))
    assert (records["turn"] == 0).all(), "no session went on after its failed turn"
    assert records["session_id"].tolist() == [0, 1, 2]
    summary = summarize_openai(records)
    assert summary["sessions"] == {"started": 3, "completed": 0, "turns_mean": 1.0}


def test_the_summary_gives_figures_per_turn(tmp_path: Path, server: StreamingServer) -> None:
    records = run(spec_for(tmp_path, server.url, requests=9))
    summary = summarize_openai(records)
    by_turn = summary["by_turn"]
    assert list(by_turn) == ["0", "1", "2"]
    assert [by_turn[t]["requests"] for t in by_turn] == [3, 3, 3]
    means = [by_turn[t]["input_tokens_mean"] for t in by_turn]
    assert means == sorted(means)
    assert means[0] < means[2]
    assert all(by_turn[t]["ttft_ms"]["p50"] > 0 for t in by_turn)
    assert summary["sessions"] == {"started": 3, "completed": 3, "turns_mean": 3.0}
    table = turns_table(summary)
    assert table.count("<tr><td>") == 3, "a row per turn"
    assert "3 opened, 3 completed" in table
    assert turns_table({"by_model": {}}) == "", "no table without sessions"


# -- the sessions planned -----------------------------------------------------------------------


def sharegpt_file(path: Path) -> Path:
    """Conversations of two to four exchanges (and some that are not conversations)."""
    entries: list[dict[str, Any]] = []
    for index in range(24):
        exchanges = 2 + index % 3
        turns = []
        for turn in range(exchanges):
            turns.append({"from": "human", "value": f"question {index}.{turn} " + "w " * turn})
            turns.append({"from": "gpt", "value": "answer " + "x " * (3 + index % 5)})
        entries.append({"id": str(index), "conversations": turns})
    entries.append({"id": "short", "conversations": turns[:2]})
    entries.append({"id": "gpt first", "conversations": [{"from": "gpt", "value": "hi"}]})
    path.write_text(json.dumps(entries))
    return path


def pool_of(spec: LoadSpec) -> list[Conversation]:
    async def build() -> list[Conversation]:
        async with aiohttp.ClientSession() as session:
            return await build_sessions(session, spec)

    return asyncio.run(build())


def sharegpt_spec(tmp_path: Path, url: str, **dataset: Any) -> LoadSpec:
    path = sharegpt_file(tmp_path / "sharegpt.json")
    spec = spec_for(tmp_path, url, requests=8)
    fields = {"source": "sharegpt", "path": str(path), "output_tokens": None, **dataset}
    return with_dataset(spec, **fields)


def test_sharegpt_sessions_are_seeded_and_ask_for_the_recorded_answers(
    tmp_path: Path, server: StreamingServer
) -> None:
    spec = sharegpt_spec(tmp_path, server.url, think_time_s={"mean": 2.0, "range_ratio": 0.5})
    pool = pool_of(spec)
    assert len(pool) == 8
    assert pool == pool_of(spec), "the same seed plans the same sessions"
    assert pool != pool_of(replace(spec, seed=6))
    for session in pool:
        assert 2 <= len(session.turns) <= 4
        assert session.exact
        assert session.turns[0].think_s == 0.0
        assert all(1.0 <= turn.think_s <= 3.0 for turn in session.turns[1:])
        for turn in session.turns:
            # the test server's tokenizer: " x" pieces, and "answer"'s two pieces ("answ", "er")
            assert turn.output_tokens >= 3 + 2
            assert turn.tokens == len(server.vocabulary.encode(turn.text))


def test_sharegpt_sessions_are_cut_to_max_turns_and_the_context(
    tmp_path: Path, server: StreamingServer
) -> None:
    pool = pool_of(sharegpt_spec(tmp_path, server.url, max_turns=2))
    assert {len(session.turns) for session in pool} == {2}
    pool = pool_of(sharegpt_spec(tmp_path, server.url, output_tokens=10, max_total_tokens=50))
    for session in pool:
        context = sum(turn.tokens + turn.output_tokens for turn in session.turns)
        assert context <= 50
        assert len(session.turns) >= 2
    assert max(len(session.turns) for session in pool) < 4, "four turns pass the bound"
    assert within_context([5, 5, 5], [10, 10, 10], 2, 31) == 1
    assert within_context([5, 5, 5], [10, 10, 10], 2, 32) == 2
    assert within_context([5, 5, 5], [10, 10, 10], 0, 45) == 3


def test_sharegpt_keeps_conversations_of_two_exchanges_or_more() -> None:
    two = {"conversations": [{"from": f, "value": v} for f, v in [("human", "a"), ("gpt", "b")]]}
    assert sharegpt_dialogue(two) is None
    turns = [("system", "s"), ("human", "a"), ("gpt", "b"), ("human", "c"), ("gpt", "d")]
    turns += [("human", "e"), ("human", "f")]
    entry = {"conversations": [{"from": f, "value": v} for f, v in turns]}
    dialogue = sharegpt_dialogue(entry)
    assert dialogue is not None
    assert dialogue.turns == ("a", "c")
    assert dialogue.replies == ("b", "d")


def test_think_times_follow_their_distribution() -> None:
    rng = np.random.default_rng(1)
    assert draw_seconds(1.5, 3, rng) == [1.5, 1.5, 1.5]
    uniform = draw_seconds({"mean": 4.0, "range_ratio": 0.25}, 500, rng)
    assert min(uniform) >= 3.0
    assert max(uniform) <= 5.0
    exponential = draw_seconds({"distribution": "exponential", "mean": 2.0}, 4000, rng)
    assert 1.8 < float(np.mean(exponential)) < 2.2
    normal = draw_seconds({"distribution": "normal", "mean": 0.5, "std": 1.0}, 500, rng)
    assert min(normal) == 0.0, "never below 0"
    assert draw_seconds({"values": [1.0, 2.0], "order": "cycle"}, 3, rng) == [1.0, 2.0, 1.0]


# -- conversation files -----------------------------------------------------------------------


def test_a_file_gives_turns_or_a_chat_and_counts_per_turn(tmp_path: Path) -> None:
    chat = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "bye"},
    ]
    rows = [
        {"turns": ["one", "two"], "output_tokens": [4, 9]},
        {"messages": chat, "output_tokens": 7},
    ]
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    first, second = load_conversations(path)
    assert first.turns == ("one", "two")
    assert first.output_tokens == (4, 9)
    assert second.turns == ("hi", "bye")
    assert second.system == "be brief"
    assert second.output_tokens == (7, 7)
    parquet = tmp_path / "c.parquet"
    pq.write_table(pa.table({"turns": [["a", "b", "c"]], "output_tokens": [[1, 2, 3]]}), parquet)
    (only,) = load_conversations(parquet)
    assert only.turns == ("a", "b", "c")
    assert only.output_tokens == (1, 2, 3)


def test_a_file_names_each_mistake_with_its_line_and_key(tmp_path: Path) -> None:
    rows = [
        json.dumps({"turns": ["fine"]}),
        "{not json",
        json.dumps({"prompt": "one turn"}),
        json.dumps({"turns": ["a", ""]}),
        json.dumps({"turns": ["a", "b"], "output_tokens": [3]}),
        json.dumps({"messages": [{"role": "tool", "content": "x"}]}),
        json.dumps({"messages": [{"role": "assistant", "content": "x"}]}),
        json.dumps({"turns": ["a"], "messages": []}),
    ]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(rows) + "\n")
    _, problems = read_conversations(path)
    assert problems == [
        "line 2: not JSON: Expecting property name enclosed in double quotes",
        "line 3: give turns (user messages) or messages (a chat), not neither",
        "line 4: key 'turns': turn 1: expected a non-empty text",
        "line 5: key 'output_tokens': expected 2 counts (one per turn), got 1",
        "line 6: key 'messages': message 0: role 'tool' (expected user, assistant or system)",
        "line 7: key 'messages': holds no user message (the user messages are the turns)",
        "line 8: give turns (user messages) or messages (a chat), not both",
    ]
    with pytest.raises(ConversationFileError, match="line 2"):
        load_conversations(path)
    assert read_conversations(tmp_path / "c.csv")[1] == [
        "expected a .jsonl or .parquet file of conversations"
    ]
    assert read_conversations(tmp_path / "gone.jsonl")[1] == ["no such file"]


# -- several servers ----------------------------------------------------------------------------


def test_a_session_keeps_the_server_of_its_first_turn(tmp_path: Path) -> None:
    """Round robin per request would send a session's turns to every server in turn, each
    missing the history the previous one cached; a session stays with its first server, and
    the sessions still spread over both."""
    with (
        StreamingServer(ttft_s=0.005, gap_s=0.001) as first,
        StreamingServer(ttft_s=0.005, gap_s=0.001) as second,
    ):
        spec = spec_for(
            tmp_path, first.url, replica_urls=(first.url, second.url), level=1, requests=12
        )
        records = run(spec)
    assert (records["error"] == "").all(), records["error"].tolist()
    assert records.groupby("session_id")["replica"].nunique().max() == 1
    per_server = records.groupby("replica").size().to_dict()
    assert set(per_server) == {0, 1}
    assert len(first.seen.bodies) == per_server[0]
    assert len(second.seen.bodies) == per_server[1]
