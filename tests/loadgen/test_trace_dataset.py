"""Request traces replayed (`trace` dataset, `load.mode: replay`): the layouts of public traces
read with each mistake named by file, line and key; prompts built by the real client code
against the token test server (whose tokenizer is known), Mooncake blocks of one hash id being
one text; and replays whose send instants are the trace's, scaled by the speed and dealt to
processes round-robin."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pytest_aifactory.loadgen.datasets import Prompt, build_prompts
from pytest_aifactory.loadgen.llm_datasets.trace import my_entries, pieces_of
from pytest_aifactory.loadgen.llm_datasets.trace_rows import (
    TraceEntry,
    TraceFileError,
    check_trace_file,
    detect_format,
    load_trace,
    read_trace,
)
from pytest_aifactory.loadgen.records import read_records
from pytest_aifactory.loadgen.runner import run_load
from pytest_aifactory.loadgen.spec import DatasetSpec, LoadSpec
from pytest_aifactory.testing.load_specs import load_spec
from pytest_aifactory.testing.streaming_server import StreamingServer

BURSTGPT_HEADER = "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"


@pytest.fixture
def server() -> Any:
    with StreamingServer(ttft_s=0.0, gap_s=0.0) as running:
        yield running


def mooncake(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def burstgpt(path: Path, rows: list[str]) -> Path:
    path.write_text(BURSTGPT_HEADER + "".join(row + "\n" for row in rows))
    return path


MOONCAKE_ROWS = [
    {"timestamp": 0, "input_length": 40, "output_length": 3, "hash_ids": [0, 1, 2]},
    {"timestamp": 250, "input_length": 35, "output_length": 4, "hash_ids": [0, 1, 3]},
    {"timestamp": 600, "input_length": 12, "output_length": 2, "hash_ids": [4]},
    {"timestamp": 900, "input_length": 30, "output_length": 5, "hash_ids": [0]},
]
"""Blocks of 16 tokens: entries 0 and 1 share their first two blocks, entry 3 its first."""


def spec_for(tmp_path: Path, url: str, dataset: DatasetSpec, **fields: Any) -> LoadSpec:
    values: dict[str, Any] = {
        "model": "tiny",
        "mode": "replay",
        "level": 1.0,
        "requests": None,
        "seed": 5,
        "timeout_s": 10.0,
    }
    return load_spec(tmp_path, base_url=url, dataset=dataset, **{**values, **fields})


def prompts_of(spec: LoadSpec) -> list[Prompt]:
    async def build() -> list[Prompt]:
        async with aiohttp.ClientSession() as session:
            return await build_prompts(session, spec)

    return asyncio.run(build())


# -- reading the layouts ------------------------------------------------------------------------


def test_mooncake_lines_in_time_order_with_milliseconds_as_seconds(tmp_path: Path) -> None:
    rows = [MOONCAKE_ROWS[1], MOONCAKE_ROWS[0], {**MOONCAKE_ROWS[2], "hash_ids": []}]
    entries = load_trace(mooncake(tmp_path / "t.jsonl", rows), "mooncake")
    assert [e.at_s for e in entries] == [0.0, 0.25, 0.6]
    assert entries[0] == TraceEntry(0.0, 40, 3, (0, 1, 2))
    assert entries[2].hash_ids == ()
    assert detect_format(tmp_path / "t.jsonl") == "mooncake"


def test_mooncake_mistakes_name_line_and_key(tmp_path: Path) -> None:
    path = mooncake(
        tmp_path / "t.jsonl",
        [
            MOONCAKE_ROWS[0],
            {"timestamp": 5, "output_length": 3},
            {"timestamp": -1, "input_length": 3, "output_length": 3},
            "{not json",
            {"timestamp": 5, "input_length": 2.5, "output_length": 3},
            {"timestamp": 5, "input_length": 2, "output_length": 3, "hash_ids": [1, "x"]},
        ],
    )
    _, problems = read_trace(path, "auto")
    assert problems == [
        "line 2: key 'input_length': required",
        "line 3: key 'timestamp': expected a finite time of at least 0, got -1",
        "line 4: not JSON: Expecting property name enclosed in double quotes",
        "line 5: key 'input_length': expected a whole number of at least 1, got 2.5",
        "line 6: key 'hash_ids': item 1: expected a whole number of at least 0, got 'x'",
    ]
    with pytest.raises(TraceFileError, match=r"t\.jsonl: line 2: key 'input_length'"):
        load_trace(path)


def test_burstgpt_rows_without_a_response_are_left_out(tmp_path: Path) -> None:
    path = burstgpt(
        tmp_path / "b.csv",
        [
            "5,ChatGPT,472,18,490,Conversation log",
            "1,GPT-4,30,0,30,Conversation log",  # failed in the trace
            "3.5,ChatGPT,12,7,19,API log",
            "4,ChatGPT,0,9,9,API log",  # no prompt
        ],
    )
    assert detect_format(path) == "burstgpt"
    entries = load_trace(path)
    assert [(e.at_s, e.input_tokens, e.output_tokens) for e in entries] == [
        (3.5, 12, 7),
        (5.0, 472, 18),
    ]


def test_burstgpt_mistakes_name_line_and_column(tmp_path: Path) -> None:
    path = burstgpt(tmp_path / "b.csv", ["1,ChatGPT,10,5,15,x", "soon,ChatGPT,10,5,15,x"])
    assert read_trace(path, "burstgpt")[1] == [
        "line 3: column 'Timestamp': expected a time (a number), got 'soon'"
    ]
    wrong = tmp_path / "w.csv"
    wrong.write_text("Timestamp,Model,Request tokens\n1,x,3\n")
    assert read_trace(wrong, "burstgpt")[1] == ["header: needs the columns 'Response tokens'"]
    assert detect_format(wrong) == "file", "a CSV without BurstGPT's columns is a prompt file"


def test_a_prompt_file_needs_a_timestamp_on_every_row(tmp_path: Path) -> None:
    path = mooncake(
        tmp_path / "p.jsonl",
        [
            {"prompt": "late", "timestamp": 2.5, "output_tokens": 4},
            {"prompt": "early", "timestamp": 0.5},
            {"prompt": "when?"},
        ],
    )
    assert detect_format(path) == "file"
    assert read_trace(path)[1] == ["line 3: key 'timestamp': required on every row"]
    path = mooncake(
        tmp_path / "q.jsonl",
        [{"prompt": "late", "timestamp": 2.5}, {"prompt": "a", "timestamp": 0.5}],
    )
    entries = load_trace(path)
    assert [(e.prompt, e.at_s) for e in entries] == [("a", 0.5), ("late", 2.5)]


def test_checks_name_what_a_client_cannot_replay(tmp_path: Path) -> None:
    chats = mooncake(
        tmp_path / "c.jsonl",
        [{"messages": [{"role": "user", "content": "hi"}], "timestamp": 0}],
    )
    assert check_trace_file(chats, "auto", "chat") == []
    assert check_trace_file(chats, "auto", "completions") == [
        "1 entries give messages: a chat needs api: chat"
    ]
    assert check_trace_file(chats, "auto", "embeddings") == [
        "a trace replays generation requests: api completions or chat"
    ]
    assert check_trace_file(chats, "mooncake", "chat") == ["line 1: key 'input_length': required"]
    assert check_trace_file(tmp_path / "gone.jsonl", "auto", "chat") == ["no such file"]
    assert check_trace_file(chats, "burstgpt", "chat") == ["a BurstGPT trace is a .csv file"]


# -- which entries a process replays ------------------------------------------------------------


def entries_at(*times: float) -> list[TraceEntry]:
    return [TraceEntry(t, 4, 2) for t in times]


def test_entries_are_dealt_round_robin_within_requests_and_duration(tmp_path: Path) -> None:
    entries = entries_at(10, 11, 12, 13, 14, 15, 16)
    dataset = DatasetSpec(kind="trace", path="x")

    def dealt(**fields: Any) -> list[list[int]]:
        processes = fields.pop("processes", 1)
        return [
            [
                i
                for i, _ in my_entries(
                    entries,
                    spec_for(tmp_path, "", dataset, process=p, processes=processes, **fields),
                )
            ]
            for p in range(processes)
        ]

    assert dealt() == [[0, 1, 2, 3, 4, 5, 6]]
    assert dealt(processes=3) == [[0, 3, 6], [1, 4], [2, 5]]
    # requests caps the entries replayed: 5 over 2 processes, split 3 + 2 as cases.py splits
    # them, are the trace's first 5
    first = my_entries(entries, spec_for(tmp_path, "", dataset, processes=2, requests=3))
    second = my_entries(
        entries, spec_for(tmp_path, "", dataset, process=1, processes=2, requests=2)
    )
    assert sorted(i for i, _ in [*first, *second]) == [0, 1, 2, 3, 4]
    # duration_s at speed 2: instants 0, 0.5, 1.0, ... before 1.5 s
    assert dealt(level=2.0, duration_s=1.5) == [[0, 1, 2]]


def test_mooncake_blocks_follow_the_hash_ids() -> None:
    entry = TraceEntry(0.0, 40, 3, (7, 8, 9))
    pieces = pieces_of(2, entry, 16)
    assert [(p.key[1], p.tokens) for p in pieces] == [(7, 16), (8, 16), (9, 8)]
    beyond = pieces_of(5, TraceEntry(0.0, 40, 3, (7,)), 16)
    assert [p.tokens for p in beyond] == [16, 24]
    assert beyond[1].key[1] == 5, "tokens past the named blocks are the entry's own"


# -- prompts against the token server -----------------------------------------------------------


def test_equal_hash_ids_send_equal_text_of_exact_length(tmp_path: Path, server: Any) -> None:
    path = mooncake(tmp_path / "t.jsonl", MOONCAKE_ROWS)
    dataset = DatasetSpec(kind="trace", path=str(path), block_tokens=16)
    prompts = prompts_of(spec_for(tmp_path, server.url, dataset))
    assert [p.input_tokens for p in prompts] == [40, 35, 12, 30]
    assert all(p.exact for p in prompts)
    counted = [len(server.vocabulary.encode(p.text)) for p in prompts]
    assert counted == [40, 35, 12, 30]
    assert [p.output_tokens for p in prompts] == [3, 4, 2, 5]
    assert [p.at_s for p in prompts] == [0.0, 0.25, 0.6, 0.9]
    first, second, third, fourth = (p.text for p in prompts)
    tokens = server.vocabulary.encode
    assert tokens(first)[:32] == tokens(second)[:32], "blocks 0 and 1 are the same text"
    assert tokens(first)[32:35] != tokens(second)[32:35], "blocks 2 and 3 are not"
    assert tokens(fourth)[:16] == tokens(first)[:16]
    assert tokens(third)[:12] != tokens(first)[:12]
    again = prompts_of(spec_for(tmp_path, server.url, dataset, process=0, seed=99))
    assert [p.text for p in again] == [p.text for p in prompts], "not the process's seed"
    other_level = prompts_of(spec_for(tmp_path, server.url, dataset, level_label="replay=2"))
    assert other_level[0].text != first, "a level's texts are new to the server"


def test_a_block_cut_short_is_the_opening_of_the_whole_block(tmp_path: Path, server: Any) -> None:
    rows = [
        {"timestamp": 0, "input_length": 40, "output_length": 2, "hash_ids": [0, 1, 2]},
        {"timestamp": 1, "input_length": 48, "output_length": 2, "hash_ids": [0, 1, 2]},
    ]
    path = mooncake(tmp_path / "t.jsonl", rows)
    dataset = DatasetSpec(kind="trace", path=str(path), block_tokens=16)
    cut, whole = (
        server.vocabulary.encode(p.text)
        for p in prompts_of(spec_for(tmp_path, server.url, dataset))
    )
    assert (len(cut), len(whole)) == (40, 48)
    assert cut[:38] == whole[:38], "all but the cut's last tokens, which may merge otherwise"


def test_burstgpt_prompts_and_the_recipes_output_tokens(tmp_path: Path, server: Any) -> None:
    path = burstgpt(tmp_path / "b.csv", ["0,ChatGPT,20,9,29,x", "1.5,ChatGPT,33,4,37,x"])
    dataset = DatasetSpec(kind="trace", path=str(path), output_tokens=6)
    prompts = prompts_of(spec_for(tmp_path, server.url, dataset, warmup_requests=1))
    warmup, *replayed = prompts
    assert warmup.at_s is None
    assert warmup.input_tokens == 20
    assert warmup.text not in (replayed[0].text, replayed[1].text)
    assert [(p.input_tokens, p.output_tokens, p.at_s) for p in replayed] == [
        (20, 6, 0.0),
        (33, 6, 1.5),
    ]
    assert [len(server.vocabulary.encode(p.text)) for p in replayed] == [20, 33]


def test_a_process_without_entries_says_so(tmp_path: Path, server: Any) -> None:
    path = burstgpt(tmp_path / "b.csv", ["0,ChatGPT,20,9,29,x"])
    spec = spec_for(
        tmp_path, server.url, DatasetSpec(kind="trace", path=str(path)), process=1, processes=2
    )
    with pytest.raises(ValueError, match="process 1 of 2 has no entry of the trace"):
        prompts_of(spec)


# -- replays ------------------------------------------------------------------------------------


def replayed(spec: LoadSpec) -> Any:
    outcome = run_load(spec)
    records = read_records([spec.records_path])
    return outcome, records[records["phase"] == "measure"].sort_values("request_id")


@pytest.mark.parametrize("speed", [1.0, 2.0])
def test_a_replay_sends_at_the_traces_instants_over_the_speed(
    tmp_path: Path, server: Any, speed: float
) -> None:
    path = mooncake(tmp_path / "t.jsonl", MOONCAKE_ROWS)
    dataset = DatasetSpec(kind="trace", path=str(path), block_tokens=16)
    spec = spec_for(
        tmp_path,
        server.url,
        dataset,
        level=speed,
        level_label=f"replay={speed:g}",
        warmup_requests=2,
    )
    outcome, records = replayed(spec)
    assert (outcome["sent"], outcome["completed"], outcome["warmup"]) == (4, 4, 2)
    assert (records["error"] == "").all()
    scheduled = records["scheduled_ts"].to_numpy()
    offsets = scheduled - scheduled[0]
    assert offsets == pytest.approx([0.0, 0.25 / speed, 0.6 / speed, 0.9 / speed], abs=1e-6)
    assert (records["send_ts"] >= records["scheduled_ts"]).all(), "none leaves early"
    assert list(records["output_tokens"]) == [3, 4, 2, 5]
    assert list(records["input_tokens"]) == [40, 35, 12, 30]
    prompts = [body["prompt"] for body in server.seen.bodies][2:]  # after the warmup
    built = prompts_of(spec)
    assert prompts == [p.text for p in built[2:]]


def test_a_prompt_files_rows_are_sent_at_their_timestamps(tmp_path: Path, server: Any) -> None:
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]
    path = mooncake(
        tmp_path / "p.jsonl",
        [
            {"prompt": "second one", "timestamp": 10.6, "output_tokens": 3},
            {"messages": chat, "timestamp": 10.0},
        ],
    )
    dataset = DatasetSpec(kind="trace", path=str(path), format="file")
    spec = spec_for(tmp_path, server.url, dataset, api="chat", level=2.0)
    outcome, records = replayed(spec)
    assert outcome["sent"] == 2
    scheduled = records["scheduled_ts"].to_numpy()
    assert scheduled - outcome["started_at"] == pytest.approx([0.0, 0.3], abs=1e-6)
    first, second = server.seen.bodies
    assert first["messages"] == chat
    assert first["max_tokens"] == 64, "no output_tokens: the default"
    assert second["messages"] == [{"role": "user", "content": "second one"}]
    assert second["max_tokens"] == 3
    assert list(records["prompt_tokens_exact"]) == [False, True], "a chat is estimated"


def test_processes_keep_the_traces_instants(tmp_path: Path, server: Any) -> None:
    path = burstgpt(tmp_path / "b.csv", [f"{t},ChatGPT,8,2,10,x" for t in (0, 0.1, 0.3, 0.35, 0.5)])
    dataset = DatasetSpec(kind="trace", path=str(path))
    for process in (0, 1):
        spec = spec_for(tmp_path / f"p{process}", server.url, dataset, process=process, processes=2)
        outcome, records = replayed(spec)
        assert outcome["sent"] == (3 if process == 0 else 2)
        scheduled = records["scheduled_ts"].to_numpy()
        expected = [0, 0.3, 0.5] if process == 0 else [0.1, 0.35]
        assert scheduled - outcome["started_at"] == pytest.approx(expected, abs=1e-6)


def test_a_replay_without_a_trace_is_refused(tmp_path: Path, server: Any) -> None:
    spec = spec_for(tmp_path, server.url, DatasetSpec(input_tokens=4), requests=2)
    with pytest.raises(ValueError, match="load mode 'replay' sends a trace"):
        run_load(spec)
    assert server.seen.bodies == [], "refused before any request"
