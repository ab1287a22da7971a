"""One ShareGPT sample that our `sharegpt` dataset and vLLM's `bench serve --dataset-name
sharegpt` both send whole, so the two clients are compared on the same requests
(`benchmarks/peer_agreement.py`).

Our selection (`llm_datasets/sharegpt.py`: vLLM's walk over the shuffled conversations, counted
with the server's tokenizer) picks `count` first exchanges of the ShareGPT file; they are written
as a ShareGPT JSON file of exactly those conversations (their first two turns). Read again with
the same seed, both tools keep every one and shuffle them alike (`random.Random(seed)` over
`count` items), so they send the same prompts in the same order. vLLM counts with the Hugging
Face tokenizer instead and checks fixed bounds (`is_valid_sequence`: prompt and reply at least 4
tokens, prompt at most 1024, both at most 2048): `BOUNDS` keep the sample inside them with a
margin for two tokenizers that count a text a few tokens apart, and within what the server's
context and a short run allow.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp

from pytest_aifactory.loadgen.datasets import ServerTokenizer
from pytest_aifactory.loadgen.llm_datasets.counting import TokenCounter
from pytest_aifactory.loadgen.llm_datasets.sharegpt import sharegpt_pool, shuffled
from pytest_aifactory.loadgen.llm_datasets.sharegpt_source import (
    Exchange,
    dataset_file,
    read_exchanges,
)
from pytest_aifactory.loadgen.spec import DatasetSpec, LoadSpec

BOUNDS: dict[str, int] = {
    "min_input_tokens": 8,
    "min_output_tokens": 8,
    "max_input_tokens": 256,
    "max_total_tokens": 384,
}
"""The sample's bounds: vLLM's minimum of 4 tokens doubled; the maxima well under its 1024 and
2048, so that one tool's run over 32 conversations takes one or two minutes on two cores
(ShareGPT's replies are long: about 160-190 tokens on average within these bounds, 200
within vLLM's)."""


def sharegpt_sample_dataset(
    path: str | None, seed: int, bounds: dict[str, int] | None = None
) -> DatasetSpec:
    """Our `sharegpt` dataset over `path` (None: the package's file): the data's own output
    lengths, generated whole (EOS ignored), as vLLM's `--ignore-eos` asks."""
    limits = bounds or BOUNDS
    return DatasetSpec(
        kind="sharegpt",
        path=path,
        seed=seed,
        ignore_eos=True,
        min_input_tokens=limits["min_input_tokens"],
        min_output_tokens=limits["min_output_tokens"],
        max_input_tokens=limits["max_input_tokens"],
        max_total_tokens=limits["max_total_tokens"],
    )


def _selection_spec(url: str, dataset: DatasetSpec) -> LoadSpec:
    """What the selection reads of a load: the server, the dataset and the seed."""
    return LoadSpec(
        client="peer-sample",
        kind="openai",
        level_label="sample",
        mode="concurrency",
        level=1,
        base_url=url,
        model="",
        records_path="",
        progress_path="",
        dataset=dataset,
        seed=dataset.seed,
    )


async def select_exchanges(url: str, dataset: DatasetSpec, count: int) -> list[Exchange]:
    """The exchanges our `sharegpt` dataset picks, in its order. The pool holds prompts only; each
    is found again on the same walk: the next conversation with that prompt whose reply counts
    the tokens the pool asks for (ShareGPT repeats prompts with other replies)."""
    spec = _selection_spec(url, dataset)
    async with aiohttp.ClientSession() as session:
        tokenizer = ServerTokenizer(session, url, spec.model)
        prompts = await sharegpt_pool(tokenizer, spec, count)
        counter = await TokenCounter.start(tokenizer, spec)
        exchanges, _ = read_exchanges(dataset_file(dataset.path))
        walk = (exchanges[i] for i in shuffled(len(exchanges), spec.seed))
        picked: list[Exchange] = []
        for prompt in prompts:
            for exchange in walk:
                if exchange.prompt != prompt.text:
                    continue
                if await counter.count(exchange.reply) == prompt.output_tokens:
                    picked.append(exchange)
                    break
        if len(picked) != len(prompts):
            raise RuntimeError(
                f"{len(prompts) - len(picked)} of the {len(prompts)} selected prompts were not "
                "found again in the ShareGPT file"
            )
        return picked


def sharegpt_entries(exchanges: list[Exchange]) -> list[dict[str, Any]]:
    """ShareGPT's own layout: each conversation as its two turns, human then model."""
    return [
        {
            "id": f"sample-{index}",
            "conversations": [
                {"from": "human", "value": exchange.prompt},
                {"from": "gpt", "value": exchange.reply},
            ],
        }
        for index, exchange in enumerate(exchanges)
    ]


@dataclass(frozen=True)
class ShareGPTSample:
    written: list[Exchange]
    """The exchanges, in the file's order (the selection's)."""
    sent: list[Exchange]
    """The same, in the order both tools send them (shuffled by the seed)."""
    dataset: DatasetSpec
    """Our `sharegpt` dataset over the file: it sends exactly these."""


def write_sharegpt_sample(url: str, path: Path, count: int, dataset: DatasetSpec) -> ShareGPTSample:
    """Select `count` exchanges of `dataset` (counted by the server at `url`) and write them to
    `path`."""
    exchanges = asyncio.run(select_exchanges(url, dataset, count))
    if len(exchanges) < count:
        raise RuntimeError(
            f"only {len(exchanges)} conversations fit the bounds, not the {count} asked for"
        )
    path.write_text(json.dumps(sharegpt_entries(exchanges)), encoding="utf-8")
    sent = [exchanges[i] for i in shuffled(len(exchanges), dataset.seed)]
    return ShareGPTSample(exchanges, sent, replace(dataset, path=str(path)))
