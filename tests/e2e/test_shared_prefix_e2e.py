"""`shared_prefix` against the real llama-server and SmolLM2: the server receives prompts of
exactly prefix plus suffix tokens (its usage says so), serves a group's later requests from its
prompt cache (each response's `cached_tokens`), and its own counters give the same kind of hit
rate as the records; and a whole monitored session reports both rates."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pandas as pd
import pytest

from pytest_aifactory.loadgen.datasets import Prompt, build_prompts
from pytest_aifactory.loadgen.kinds import get_client_kind
from pytest_aifactory.loadgen.records import read_records
from pytest_aifactory.loadgen.runner import run_load
from pytest_aifactory.loadgen.spec import DatasetSpec, LoadSpec
from pytest_aifactory.metrics.openai import summarize_openai
from pytest_aifactory.monitor.run_monitor import find_prometheus
from pytest_aifactory.services.base import get_kind
from pytest_aifactory.testing.load_specs import load_spec
from tests.factories import recipe_document
from tests.helpers import Session, keyed_llama_server, run_benchmark, write_recipe

pytestmark = [pytest.mark.slow, pytest.mark.requires("llama-server")]

GROUPS = 3
PREFIX = 48
SUFFIX = 12
REQUESTS = 12


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A keyed llama-server of a run: (url, the run's key)."""
    tmp = tmp_path_factory.mktemp("llama")
    with keyed_llama_server(tmp, "prefix", "--parallel", "4") as server:
        yield server


def shared_prefix(**fields: Any) -> DatasetSpec:
    values: dict[str, Any] = {
        "kind": "shared_prefix",
        "groups": GROUPS,
        "prefix_tokens": PREFIX,
        "input_tokens": SUFFIX,
        "output_tokens": 4,
        "seed": 3,
    }
    return DatasetSpec(**{**values, **fields})


def spec_for(tmp_path: Path, llama: tuple[str, str], **fields: Any) -> LoadSpec:
    url, key = llama
    values: dict[str, Any] = {
        "level": 1,
        "requests": REQUESTS,
        "seed": 11,
        "timeout_s": 120.0,
        "dataset": shared_prefix(),
    }
    return load_spec(tmp_path, base_url=url, api_key=key, **{**values, **fields})


def pool_of(spec: LoadSpec) -> list[Prompt]:
    async def build() -> list[Prompt]:
        async with aiohttp.ClientSession() as session:
            return await build_prompts(session, spec)

    return asyncio.run(build())


def counters(url: str, key: str) -> dict[str, float]:
    """llama-server's /metrics as {series name: value}, by the names the kind collects."""

    async def scrape() -> str:
        headers = {"Authorization": f"Bearer {key}"}
        async with (
            aiohttp.ClientSession() as session,
            session.get(url.rstrip("/") + "/metrics", headers=headers) as response,
        ):
            response.raise_for_status()
            return await response.text()

    text = asyncio.run(scrape())
    values = {}
    for series in get_kind("llamacpp").metric_series:
        found = re.search(rf"^{re.escape(series.metric)} (\S+)$", text, re.MULTILINE)
        if found:
            values[series.name] = float(found.group(1))
    return values


def test_the_server_gets_exact_prompts_and_serves_their_prefix_from_its_cache(
    tmp_path: Path, llama: tuple[str, str]
) -> None:
    spec = spec_for(tmp_path, llama)
    pool = pool_of(spec)
    assert all(p.exact for p in pool)
    assert {p.input_tokens for p in pool} == {PREFIX + SUFFIX}
    before = counters(*llama)
    outcome = run_load(spec)
    after = counters(*llama)
    assert outcome["failed"] == 0
    records = read_records([spec.records_path]).sort_values("request_id")
    assert (records["error"] == "").all(), records["error"].tolist()
    # what the server received: prefix plus suffix, give or take the begin-of-sequence token
    added = set(records["input_tokens"] - (PREFIX + SUFFIX))
    assert len(added) == 1, added
    assert added <= {0, 1}
    assert (records["output_tokens"] == 4).all()
    cached = records["cached_tokens"].tolist()
    assert all(n >= PREFIX for n in cached[GROUPS:]), cached
    assert all(n < PREFIX for n in cached[:GROUPS]), cached
    summary = summarize_openai(records, kind=get_client_kind("openai"))
    rate = summary["per_level"]["prefix_cache_hit_rate"]
    assert rate == pytest.approx(sum(cached) / records["input_tokens"].sum())
    assert rate > (REQUESTS - GROUPS) / REQUESTS * PREFIX / (PREFIX + SUFFIX + 1)
    # the server's own counters: every cached token the responses told of, and the same rate
    grown = {name: after[name] - before.get(name, 0.0) for name in after}
    assert grown["llamacpp_prompt_tokens_cached"] == sum(cached)
    figures = get_kind("llamacpp").server_figures(grown.get)
    assert figures["prefix_cache_hit_rate"] == pytest.approx(rate)


def test_every_process_reuses_the_same_prefixes(tmp_path: Path, llama: tuple[str, str]) -> None:
    """A second process of the same level, started after the first, finds every group's
    prefix already cached: the prefixes are the level's, not the process's."""
    first = spec_for(tmp_path / "p0", llama, requests=GROUPS, dataset=shared_prefix(seed=8))
    second = spec_for(
        tmp_path / "p1", llama, requests=GROUPS, process=1, seed=12, dataset=shared_prefix(seed=8)
    )
    run_load(first)
    run_load(second)
    records = read_records([second.records_path])
    assert (records["error"] == "").all()
    assert (records["cached_tokens"] >= PREFIX).all(), records["cached_tokens"].tolist()


# -- a whole session ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Session:
    tmp = tmp_path_factory.mktemp("prefix-session")
    document = recipe_document(
        name="e2e-prefix",
        service={"args": ["--parallel", "4"], "health_timeout_s": 120},
        client={
            "dataset": {
                "kind": "shared_prefix",
                "groups": GROUPS,
                "prefix_tokens": PREFIX,
                "input_tokens": SUFFIX,
                "output_tokens": 4,
            },
            "load": {"mode": "concurrency", "levels": [2], "requests": REQUESTS},
        },
        monitor={"prometheus": True, "scrape_interval_s": 0.5},
    )
    return run_benchmark(tmp, write_recipe(tmp / "prefix.yaml", document), "-v")


def test_a_session_reports_both_hit_rates(session: Session) -> None:
    assert session.returncode == 0, session.output
    assert "Traceback" not in session.output
    (run,) = session.run_dirs()
    (test,) = session.summary()["tests"]
    records = pd.read_parquet(run / "records.parquet")
    measured = records[records["phase"] == "measure"]
    rate = test["per_level"]["prefix_cache_hit_rate"]
    assert rate == pytest.approx(measured["cached_tokens"].sum() / measured["input_tokens"].sum())
    assert rate > 0.5
    assert test["prefix_cache"]["requests"] == REQUESTS
    server = test["server"]["llm"]
    assert server["prefix_cache_hit_rate"] > 0.5, server
    mode = "prometheus" if find_prometheus() else "scrape"
    assert session.summary()["monitoring"]["mode"] == mode
    html = next(run.glob("*.html")).read_text()
    assert "prefix cache hit rate" in html
