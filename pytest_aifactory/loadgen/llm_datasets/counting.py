"""Token counts of given texts (dataset prompts and replies): the server's own tokenizer where
it has one, else an estimate that the records mark as such (`prompt_tokens_exact: false`)."""

from __future__ import annotations

import asyncio
import math
import sys
from collections.abc import Sequence

from pytest_aifactory.loadgen.datasets import ServerTokenizer, TokenizerUnavailable
from pytest_aifactory.loadgen.spec import LoadSpec

CHARS_PER_TOKEN = 4
"""English text's usual ratio for BPE tokenizers: the estimate without a tokenizer."""
PARALLEL = 8


def estimate_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / CHARS_PER_TOKEN))


class TokenCounter:
    """Counts with the server's tokenizer once `start` found it usable, else estimates.
    A server that refuses the run's key is not a missing tokenizer: that error propagates."""

    def __init__(self, tokenizer: ServerTokenizer, exact: bool) -> None:
        self.tokenizer = tokenizer
        self.exact = exact
        self.limit = asyncio.Semaphore(PARALLEL)

    @classmethod
    async def start(cls, tokenizer: ServerTokenizer, spec: LoadSpec) -> TokenCounter:
        try:
            await tokenizer.probe()
        except TokenizerUnavailable as missing:
            if spec.process == 0:  # once per load, not once per process
                print(
                    f"client '{spec.client}': {spec.dataset.kind} prompt lengths are estimated "
                    f"(about {CHARS_PER_TOKEN} characters a token): the server's tokenizer is "
                    f"not usable ({missing}); input_tokens come from the server's usage",
                    file=sys.stderr,
                    flush=True,
                )
            return cls(tokenizer, exact=False)
        return cls(tokenizer, exact=True)

    async def count(self, text: str) -> int:
        if not self.exact:
            return estimate_tokens(text)
        async with self.limit:
            return len(await self.tokenizer.tokenize(text))

    async def count_all(self, texts: Sequence[str]) -> list[int]:
        """Counts in the texts' order, however the server answers."""
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(self.count(text)) for text in texts]
        return [task.result() for task in tasks]
