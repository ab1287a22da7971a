"""`file`: the prompts of a user's JSONL, CSV or Parquet file (`prompt_rows.py` reads it), drawn
in an order shuffled by the process's seed; a row's `output_tokens` is asked for, else the
recipe's `output_tokens` (a count or a distribution), else 64.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pytest_aifactory.loadgen.datasets import DEFAULT_OUTPUT_TOKENS, Prompt, ServerTokenizer
from pytest_aifactory.loadgen.llm_datasets.counting import TokenCounter, estimate_tokens
from pytest_aifactory.loadgen.llm_datasets.lengths import draw_lengths
from pytest_aifactory.loadgen.llm_datasets.prompt_rows import load_prompt_rows
from pytest_aifactory.loadgen.spec import LoadSpec


async def file_pool(tokenizer: ServerTokenizer, spec: LoadSpec, count: int) -> list[Prompt]:
    """`count` rows (all of them, in turn, when the file has fewer), in an order shuffled by
    the process's seed."""
    dataset = spec.dataset
    if not dataset.path:
        raise ValueError("a dataset of kind 'file' needs a path")
    rows = load_prompt_rows(Path(dataset.path))
    rng = np.random.default_rng([spec.seed, 0xF11E])
    order = rng.permutation(len(rows))
    picked = [rows[int(order[i % len(rows)])] for i in range(min(count, len(rows)))]
    fallback = DEFAULT_OUTPUT_TOKENS if dataset.output_tokens is None else dataset.output_tokens
    drawn = draw_lengths(fallback, len(picked), rng)
    counter = await TokenCounter.start(tokenizer, spec)
    # a chat's length after the server's template is not what /tokenize counts: estimated
    counts = await counter.count_all([row.prompt or "" for row in picked])
    prompts = []
    for index, row in enumerate(picked):
        exact = counter.exact and row.messages is None
        tokens = counts[index] if row.messages is None else estimate_tokens(row.text)
        output = row.output_tokens if row.output_tokens is not None else drawn[index]
        prompts.append(Prompt(row.text, tokens, exact, output, row.messages))
    return prompts
