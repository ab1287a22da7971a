"""The `shared_prefix` dataset, built by the real client code against the token test server
(whose tokenizer is known): groups share their prefix token for token, suffixes are each
prompt's own, counts are exact, the same seed gives the same prompts and every process of a
level the same prefixes; and the prompt tokens a server says it served from its cache reach
the records and the level's hit rate."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pytest_aifactory.loadgen.datasets import Prompt, build_prompts
from pytest_aifactory.loadgen.kinds import get_client_kind
from pytest_aifactory.loadgen.llm_datasets.shared_prefix import group_of
from pytest_aifactory.loadgen.records import read_records
from pytest_aifactory.loadgen.runner import run_load
from pytest_aifactory.loadgen.spec import DatasetSpec, LoadSpec
from pytest_aifactory.metrics.openai import summarize_openai
from pytest_aifactory.testing.load_specs import load_spec
from pytest_aifactory.testing.streaming_server import StreamingServer

PREFIX = 24
GROUPS = 3


@pytest.fixture
def server() -> Any:
    with StreamingServer(ttft_s=0.0, gap_s=0.0) as running:
        yield running


def dataset(**fields: Any) -> DatasetSpec:
    values: dict[str, Any] = {
        "kind": "shared_prefix",
        "groups": GROUPS,
        "prefix_tokens": PREFIX,
        "input_tokens": {"mean": 12, "range_ratio": 0.5},
        "output_tokens": 3,
        "seed": 4,
    }
    return DatasetSpec(**{**values, **fields})


def spec_for(tmp_path: Path, url: str, data: DatasetSpec, **fields: Any) -> LoadSpec:
    values: dict[str, Any] = {"model": "tiny", "requests": 12, "seed": 5, "timeout_s": 10.0}
    return load_spec(tmp_path, base_url=url, dataset=data, **{**values, **fields})


def prompts_of(spec: LoadSpec) -> list[Prompt]:
    async def build() -> list[Prompt]:
        async with aiohttp.ClientSession() as session:
            return await build_prompts(session, spec)

    return asyncio.run(build())


def tokens(server: StreamingServer, prompts: list[Prompt]) -> list[list[int]]:
    return [server.vocabulary.encode(p.text) for p in prompts]


def test_groups_share_their_prefix_and_nothing_else(
    tmp_path: Path, server: StreamingServer
) -> None:
    spec = spec_for(tmp_path, server.url, dataset())
    prompts = prompts_of(spec)
    assert len(prompts) == 12
    ids = tokens(server, prompts)
    assert all(p.exact for p in prompts)
    assert [len(t) for t in ids] == [p.input_tokens for p in prompts], "counted whole"
    suffixes = [len(t) - PREFIX for t in ids]
    assert all(6 <= n <= 18 for n in suffixes), suffixes
    assert len(set(suffixes)) > 2, "suffix lengths drawn from the distribution"
    assert [group_of(i, spec) for i in range(6)] == [0, 1, 2, 0, 1, 2], "groups in turn"
    prefixes = [tuple(t[:PREFIX]) for t in ids]
    for i, prefix in enumerate(prefixes):
        same = {j for j, other in enumerate(prefixes) if other == prefix}
        assert same == {j for j in range(12) if j % GROUPS == i % GROUPS}
    assert len(set(prefixes)) == GROUPS
    assert len({tuple(t[PREFIX:]) for t in ids}) == 12, "every suffix its own"
    assert [p.output_tokens for p in prompts] == [3] * 12


def test_the_seed_gives_the_same_prompts(tmp_path: Path, server: StreamingServer) -> None:
    spec = spec_for(tmp_path, server.url, dataset())
    first = [p.text for p in prompts_of(spec)]
    assert [p.text for p in prompts_of(spec)] == first
    other = [p.text for p in prompts_of(spec_for(tmp_path, server.url, dataset(seed=5)))]
    assert not set(other) & set(first)


def test_every_process_of_a_level_sends_the_same_prefixes(
    tmp_path: Path, server: StreamingServer
) -> None:
    """Another process (its own seed and index) starts at another group and draws other
    suffixes, but opens with the same prefixes; another level draws other prefixes."""
    first = spec_for(tmp_path, server.url, dataset())
    second = replace(first, process=1, seed=77)
    mine, theirs = tokens(server, prompts_of(first)), tokens(server, prompts_of(second))
    assert [tuple(t[:PREFIX]) for t in theirs[:GROUPS]] == [
        tuple(t[:PREFIX]) for t in mine[1 : GROUPS + 1]
    ], "process 1 starts one group on"
    assert {tuple(t[:PREFIX]) for t in theirs} == {tuple(t[:PREFIX]) for t in mine}
    assert not {tuple(t[PREFIX:]) for t in theirs} & {tuple(t[PREFIX:]) for t in mine}
    level = replace(first, level_label="concurrency=2")
    other = tokens(server, prompts_of(level))
    assert not {tuple(t[:PREFIX]) for t in other} & {tuple(t[:PREFIX]) for t in mine}


def test_without_a_tokenizer_prompts_are_words_that_share_a_prefix(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with StreamingServer(ttft_s=0.0, gap_s=0.0, tokenizer=None) as bare:
        spec = spec_for(tmp_path, bare.url, dataset(input_tokens=5))
        prompts = prompts_of(spec)
    assert "estimated length" in capfd.readouterr().err
    assert not any(p.exact for p in prompts)
    assert [p.input_tokens for p in prompts] == [PREFIX + 5] * 12
    words = [p.text.split() for p in prompts]
    assert all(len(w) == PREFIX + 5 for w in words)
    assert len({tuple(w[:PREFIX]) for w in words}) == GROUPS
    assert words[0][:PREFIX] == words[GROUPS][:PREFIX]


@pytest.mark.parametrize("where", ["usage", "timings"])
def test_cached_tokens_reach_the_records_and_the_hit_rate(tmp_path: Path, where: str) -> None:
    """The test server caches every prompt it saw: a group's first request finds at most a
    chance token or two of another group's prefix, the later ones at least the prefix."""
    with StreamingServer(ttft_s=0.0, gap_s=0.0, prefix_cache=where) as cached:
        spec = spec_for(tmp_path, cached.url, dataset())
        outcome = run_load(spec)
    assert outcome["failed"] == 0
    records = read_records([spec.records_path]).sort_values("request_id")
    cached_tokens = records["cached_tokens"].tolist()
    assert all(n < PREFIX for n in cached_tokens[:GROUPS]), cached_tokens
    assert all(n >= PREFIX for n in cached_tokens[GROUPS:]), cached_tokens
    summary = summarize_openai(records, kind=get_client_kind("openai"))
    expected = sum(cached_tokens) / records["input_tokens"].sum()
    assert summary["per_level"]["prefix_cache_hit_rate"] == pytest.approx(expected)
    assert summary["per_level"]["prefix_cache_hit_rate"] > 0.5
    block = summary["prefix_cache"]
    assert block["cached_tokens"] == sum(cached_tokens)
    assert block["requests"] == 12
    assert "cached_tokens" in block["source"]


def test_a_server_that_says_nothing_of_its_cache_has_no_hit_rate(
    tmp_path: Path, server: StreamingServer
) -> None:
    spec = spec_for(tmp_path, server.url, dataset(), requests=4)
    run_load(spec)
    records = read_records([spec.records_path])
    assert records["cached_tokens"].isna().all()
    summary = summarize_openai(records, kind=get_client_kind("openai"))
    assert summary["per_level"]["prefix_cache_hit_rate"] is None
    assert "prefix_cache" not in summary
