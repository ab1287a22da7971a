"""`trace`: a request trace replayed, each request sent at its own instant (`load.mode:
replay`, whose level is the speed: request i leaves `(t_i - t_0) / speed` after the start).

What each request sends is made before the start, untimed (`trace_rows.py` reads the file):

- A Mooncake entry's prompt is its blocks, `block_tokens` each (Mooncake's 512), one per hash
  id: a block's text is made once and every entry naming its id sends that same text, so a
  server's prefix cache meets the reuse the trace recorded. The last block is cut short so the
  prompt has `input_length` tokens (its opening: the whole block's first tokens); tokens
  beyond the blocks named are the entry's own text.
- A BurstGPT entry's prompt is random text of its `Request tokens`, its own.
- A prompt file's entry sends its `prompt` or `messages`.

Text is exact where the server tokenizes (random token ids detokenized and fixed up, as
`random` prompts are; a prompt of several blocks is counted whole and its last block fixed up
where tokens merged at a seam), else random words of about one token each. Block and prompt
texts are seeded by the dataset's seed and the level, alike in every process of a level (a
block shared by two processes' requests is the same text) and new at each level (a level's
server cache holds nothing of the one before). The processes of a level deal the entries
round-robin (entry i to process i mod P), each keeping the trace's instants.

A warmup sends random text of the first entries' lengths, sharing no block with the trace.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pytest_aifactory.loadgen.datasets import (
    DEFAULT_OUTPUT_TOKENS,
    PARALLEL,
    Prompt,
    ServerTokenizer,
    TokenizerUnavailable,
    exact_prompt,
    random_words,
)
from pytest_aifactory.loadgen.llm_datasets.counting import TokenCounter, estimate_tokens
from pytest_aifactory.loadgen.llm_datasets.lengths import draw_lengths
from pytest_aifactory.loadgen.llm_datasets.trace_rows import TraceEntry, load_trace
from pytest_aifactory.loadgen.spec import LoadSpec

BLOCK_STREAM = 0xB10C
OWN_STREAM = 0x0E1
WARMUP_STREAM = 0x3A4
FIX_STREAM = 0xF1C
OUTPUT_STREAM = 0x007
FIX_ROUNDS = 4
"""Attempts at a prompt's exact length after its blocks merged at a seam."""
VOCABULARY_WORDS = 2048


def trace_seed(spec: LoadSpec) -> int:
    """The seed of a level's texts: the dataset's, the client's and the level's, not the
    process's (blocks are shared across processes)."""
    key = f"{spec.dataset.seed}/{spec.client}/{spec.level_label}"
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big")


def my_entries(entries: Sequence[TraceEntry], spec: LoadSpec) -> list[tuple[int, TraceEntry]]:
    """(index in the trace, entry) of what this process replays: every P-th entry from its
    own, at most `requests` of them, none that would leave after `duration_s`."""
    mine = list(enumerate(entries))[spec.process :: max(1, spec.processes)]
    if spec.requests is not None:
        mine = mine[: spec.requests]
    if spec.duration_s is not None and entries:
        first = entries[0].at_s
        mine = [(i, e) for i, e in mine if (e.at_s - first) / spec.level < spec.duration_s]
    return mine


@dataclass(frozen=True)
class Piece:
    """A stretch of prompt text: the first `tokens` tokens of the text seeded by `key`, which
    is `whole` tokens long (a block cut short where a prompt ends inside it)."""

    key: tuple[int, ...]
    tokens: int
    whole: int


def pieces_of(index: int, entry: TraceEntry, block_tokens: int) -> list[Piece]:
    """An entry's prompt as blocks (one per hash id, the last cut to the prompt's length) and
    then, past the blocks named, a piece of its own."""
    total = entry.input_tokens or 0
    pieces: list[Piece] = []
    covered = 0
    for block in entry.hash_ids:
        if covered >= total:
            break
        size = min(block_tokens, total - covered)
        pieces.append(Piece((BLOCK_STREAM, block, block_tokens), size, block_tokens))
        covered += size
    if covered < total:
        own = total - covered
        pieces.append(Piece((OWN_STREAM, index, own), own, own))
    return pieces


class TextMaker:
    """Text of a given token count: exact where the server tokenizes, else random words."""

    def __init__(self, tokenizer: ServerTokenizer, seed: int) -> None:
        self.tokenizer = tokenizer
        self.seed = seed
        self.exact = False
        self.vocabulary = np.zeros(0, dtype=np.int64)
        self.limit = asyncio.Semaphore(PARALLEL)
        self.made: dict[Hashable, asyncio.Task[tuple[str, bool]]] = {}

    async def start(self, counter: TokenCounter) -> None:
        if not counter.exact:
            return
        rng = np.random.default_rng([self.seed, 0x70C])
        sample = await self.tokenizer.tokenize(random_words(rng, VOCABULARY_WORDS))
        self.vocabulary = np.unique(np.asarray(sample, dtype=np.int64))
        if self.vocabulary.size == 0:
            raise TokenizerUnavailable("the tokenizer returned no tokens")
        self.exact = True

    async def text(self, key: tuple[int, ...], tokens: int) -> tuple[str, bool]:
        """The text of `key` (made once, however many prompts ask for it at once): `tokens`
        long, and whether exactly."""
        if key not in self.made:
            self.made[key] = asyncio.ensure_future(self._make(key, tokens))
        return await self.made[key]

    async def piece(self, piece: Piece) -> tuple[str, bool]:
        """A piece's text: a block cut short is the opening of the whole block's text, so a
        prompt ending inside a block shares what it holds of it with the prompts that hold it
        all."""
        if piece.tokens == piece.whole:
            return await self.text(piece.key, piece.tokens)
        cut = ("cut", *piece.key, piece.tokens)
        if cut not in self.made:
            self.made[cut] = asyncio.ensure_future(self._cut(piece))
        return await self.made[cut]

    async def _cut(self, piece: Piece) -> tuple[str, bool]:
        whole, _ = await self.text(piece.key, piece.whole)
        if not self.exact:
            return " ".join(whole.split(" ")[: piece.tokens]), False
        async with self.limit:
            ids = (await self.tokenizer.tokenize(whole))[: piece.tokens]
            text = await self.tokenizer.detokenize(ids)
            if len(await self.tokenizer.tokenize(text)) == piece.tokens:
                return text, True
        # the opening does not tokenize alone as it did in the block: text of its own
        return await self.text((*piece.key, piece.tokens), piece.tokens)

    async def _make(self, key: tuple[int, ...], tokens: int) -> tuple[str, bool]:
        rng = np.random.default_rng([self.seed, *key])
        if not self.exact:
            made = random_words(rng, tokens), False
        else:
            async with self.limit:
                prompt = await exact_prompt(self.tokenizer, rng, tokens, self.vocabulary)
            made = prompt.text, prompt.exact
        return made

    async def prompt(self, index: int, pieces: list[Piece]) -> tuple[str, int, bool]:
        """The pieces' texts one after the other: (text, tokens, exact). Tokens can merge
        where two pieces meet, so a prompt of several is counted whole and its last piece
        made again, a few tokens longer or shorter, until the total is right."""
        target = sum(piece.tokens for piece in pieces)
        texts = [await self.piece(piece) for piece in pieces]
        head = "".join(text for text, _ in texts[:-1])
        text, exact = head + texts[-1][0], all(exact for _, exact in texts)
        if not self.exact:
            return " ".join(t for t, _ in texts), target, False
        if len(pieces) == 1:
            return text, target, exact
        last = pieces[-1].tokens
        for attempt in range(FIX_ROUNDS):
            async with self.limit:
                count = len(await self.tokenizer.tokenize(text))
            if count == target:
                return text, target, True
            last += target - count
            if last < 1:
                break
            tail, _ = await self.text((FIX_STREAM, index, attempt, last), last)
            text = head + tail
        return text, target, False


async def _prompts(
    maker: TextMaker,
    counter: TokenCounter,
    mine: list[tuple[int, TraceEntry]],
    spec: LoadSpec,
    first_s: float,
) -> list[Prompt]:
    dataset = spec.dataset
    outputs = (
        draw_lengths(
            dataset.output_tokens,
            len(mine),
            np.random.default_rng([maker.seed, OUTPUT_STREAM, spec.process]),
        )
        if dataset.output_tokens is not None
        else [entry.output_tokens or DEFAULT_OUTPUT_TOKENS for _, entry in mine]
    )
    # a prompt file's prompts are counted; a chat's length after the server's template is not
    # what /tokenize counts, so it is estimated (as the `file` dataset does)
    given = [p for p, (_, e) in enumerate(mine) if e.input_tokens is None and e.messages is None]
    counts = await counter.count_all([mine[p][1].prompt or "" for p in given])
    counted = dict(zip(given, counts, strict=True))

    async def one(position: int, index: int, entry: TraceEntry) -> Prompt:
        at_s = entry.at_s - first_s
        output = outputs[position]
        if entry.messages is not None:
            text = "\n".join(str(m.get("content", "")) for m in entry.messages)
            return Prompt(text, estimate_tokens(text), False, output, entry.messages, at_s)
        if entry.input_tokens is None:  # a prompt file's text
            prompt = entry.prompt or ""
            return Prompt(prompt, counted[position], counter.exact, output, at_s=at_s)
        text, tokens, exact = await maker.prompt(
            index, pieces_of(index, entry, dataset.block_tokens)
        )
        return Prompt(text, tokens, exact, output, at_s=at_s)

    async with asyncio.TaskGroup() as group:
        tasks = [
            group.create_task(one(position, index, entry))
            for position, (index, entry) in enumerate(mine)
        ]
    return [task.result() for task in tasks]


async def _warmup(maker: TextMaker, prompts: list[Prompt], spec: LoadSpec) -> list[Prompt]:
    """Random text of the first prompts' lengths, sharing no block with the trace."""
    warmup = []
    for j in range(spec.warmup_requests):
        like = prompts[j % len(prompts)]
        tokens = max(1, like.input_tokens or 1)
        text, exact = await maker.text((WARMUP_STREAM, spec.process, j, tokens), tokens)
        warmup.append(Prompt(text, tokens, exact, like.output_tokens))
    return warmup


async def trace_pool(tokenizer: ServerTokenizer, spec: LoadSpec, count: int) -> list[Prompt]:
    """The warmup's prompts, then one prompt per entry this process replays, in time order,
    each with its instant (`at_s`). `count` is not used: a trace sends what it holds."""
    dataset = spec.dataset
    if not dataset.path:
        raise ValueError("a dataset of kind 'trace' needs a path")
    entries = load_trace(Path(dataset.path), dataset.format)
    mine = my_entries(entries, spec)
    if not mine:
        raise ValueError(
            f"client '{spec.client}': process {spec.process} of {spec.processes} has no entry "
            f"of the trace {dataset.path} to replay ({len(entries)} entries"
            + (f", {spec.duration_s:g} s at speed {spec.level:g}" if spec.duration_s else "")
            + "): give fewer processes or more of the trace"
        )
    counter = await TokenCounter.start(tokenizer, spec)
    maker = TextMaker(tokenizer, trace_seed(spec))
    await maker.start(counter)
    prompts = await _prompts(maker, counter, mine, spec, entries[0].at_s)
    return [*await _warmup(maker, prompts, spec), *prompts]
