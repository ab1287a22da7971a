"""`shared_prefix`: `groups` groups of prompts, each group opening with the same prefix of
`prefix_tokens` tokens and ending in a suffix of its own (`input_tokens`, a count or a
distribution): what a server's prefix cache is for (a system prompt, few-shot examples, a
document asked several questions).

Every process of a level sends the same prefixes: they are seeded by the dataset's `seed`, the
client and the level, never by the process, so a group's prefix cached by the server for one
process serves the others too. The level is part of the seed for the reason each level's
prompts differ (`cases.process_seed`): a level must not find its prefixes cached by the level
before it. Suffixes are seeded by the process's own seed, so no two requests are alike.

The groups are taken in turn (prompt `i` of process `p` belongs to group `(i + p) % groups`),
so consecutive requests, of one process or of several, hit different groups and a group comes
round again only after all the others: vLLM's prefix-repetition dataset shuffles its requests
to the same end. Where the server tokenizes, the prefix and each whole prompt have exactly the
counts asked for, the prefix's tokens staying the same inside every prompt of its group (a
suffix whose first piece would merge with the prefix's last is drawn again); `input_tokens` of
a prompt is prefix plus suffix. Without a tokenizer, prefix and suffix are random words and the
server's usage tells the counts.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys

import numpy as np

from pytest_aifactory.loadgen.datasets import (
    MAX_ROUNDS,
    PARALLEL,
    Prompt,
    ServerTokenizer,
    TokenizerUnavailable,
    estimated_note,
    exact_prompt,
    random_lengths,
    random_words,
)
from pytest_aifactory.loadgen.spec import LoadSpec

PREFIX_STREAM = 0x5AFE
"""Seeds the prefixes' generators apart from the suffixes' (`[seed, PREFIX_STREAM, ...]`)."""
SUFFIX_STREAM = 0x5FF1


def prefix_seed(spec: LoadSpec) -> int:
    """The prefixes' seed: the dataset's, the client's and the level's, not the process's."""
    text = f"{spec.dataset.seed}/{spec.client}/{spec.level_label}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")


def group_of(index: int, spec: LoadSpec) -> int:
    """The group of a process's `index`-th prompt: groups in turn, each process starting at
    its own so that processes sending together hit different groups."""
    return (index + spec.process) % spec.dataset.groups


async def shared_prefix_pool(
    tokenizer: ServerTokenizer, spec: LoadSpec, count: int
) -> list[Prompt]:
    """`count` prompts, the groups in turn; exact where the server tokenizes, else words."""
    try:
        return await _exact_pool(tokenizer, spec, count)
    except* TokenizerUnavailable as missing:
        if spec.process == 0:  # once per load, not once per process
            print(estimated_note(spec, missing.exceptions[0]), file=sys.stderr, flush=True)
    return _word_pool(spec, count)


def _word_pool(spec: LoadSpec, count: int) -> list[Prompt]:
    suffixes, outputs = random_lengths(spec, count)
    size = spec.dataset.prefix_tokens
    seed = prefix_seed(spec)
    prefixes = {
        group: random_words(np.random.default_rng([seed, PREFIX_STREAM, group]), size)
        for group in sorted({group_of(i, spec) for i in range(count)})
    }
    prompts = []
    for i in range(count):
        rng = np.random.default_rng([spec.seed, SUFFIX_STREAM, i])
        text = f"{prefixes[group_of(i, spec)]} {random_words(rng, suffixes[i])}"
        prompts.append(Prompt(text, size + suffixes[i], False, outputs[i]))
    return prompts


async def _exact_pool(tokenizer: ServerTokenizer, spec: LoadSpec, count: int) -> list[Prompt]:
    suffixes, outputs = random_lengths(spec, count)
    size = spec.dataset.prefix_tokens
    await tokenizer.probe()
    seed = prefix_seed(spec)
    # the same vocabulary in every process: the prefixes are drawn from it
    words = random_words(np.random.default_rng([seed, PREFIX_STREAM]), 2 * max(size, 128))
    vocabulary = np.unique(np.asarray(await tokenizer.tokenize(words), dtype=np.int64))
    if vocabulary.size == 0:
        raise TokenizerUnavailable("the tokenizer returned no tokens")
    limit = asyncio.Semaphore(PARALLEL)

    async def prefix(group: int) -> tuple[str, list[int]]:
        async with limit:
            rng = np.random.default_rng([seed, PREFIX_STREAM, group])
            made = await exact_prompt(tokenizer, rng, size, vocabulary)
            return made.text, await tokenizer.tokenize(made.text)

    groups = sorted({group_of(i, spec) for i in range(count)})
    async with asyncio.TaskGroup() as tasks:
        started = {group: tasks.create_task(prefix(group)) for group in groups}
    prefixes = {group: task.result() for group, task in started.items()}

    async def one(index: int) -> Prompt:
        text, ids = prefixes[group_of(index, spec)]
        rng = np.random.default_rng([spec.seed, SUFFIX_STREAM, index])
        async with limit:
            made = await _exact_suffix(tokenizer, rng, text, ids, suffixes[index], vocabulary)
        return Prompt(made.text, made.input_tokens, made.exact, outputs[index])

    async with asyncio.TaskGroup() as tasks:
        built = [tasks.create_task(one(i)) for i in range(count)]
    return [task.result() for task in built]


async def _exact_suffix(
    tokenizer: ServerTokenizer,
    rng: np.random.Generator,
    prefix: str,
    prefix_ids: list[int],
    target: int,
    vocabulary: np.ndarray,
) -> Prompt:
    """The prefix followed by `target` random tokens, re-tokenized whole and fixed up until the
    whole prompt counts prefix plus `target` and still opens with the prefix's own tokens (the
    server's cache matches tokens, not text)."""
    ids = rng.choice(vocabulary, target).tolist()
    text, count = prefix, len(prefix_ids)
    for _ in range(MAX_ROUNDS):
        text = prefix + await tokenizer.detokenize(ids)
        tokens = await tokenizer.tokenize(text)
        count = len(tokens)
        if tokens[: len(prefix_ids)] != prefix_ids:
            ids = rng.choice(vocabulary, target).tolist()  # merged at the seam: draw again
            continue
        tail = tokens[len(prefix_ids) :]
        if len(tail) == target:
            return Prompt(text, count, True)
        if len(tail) > target:
            ids = tail[:target]
        else:
            ids = tail + rng.choice(vocabulary, target - len(tail)).tolist()
    return Prompt(text, count, False)
