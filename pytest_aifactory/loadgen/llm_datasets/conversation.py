"""`conversation`: multi-turn sessions, built once per process before the load (not timed).

A session's turns are its user messages, from ShareGPT (`conversation_source.py`: every human
turn with the recorded reply after it, conversations of at least two exchanges) or from a
user's file. ShareGPT conversations are walked in the order vLLM's benchmarks shuffle them
(Python's `random` seeded by the process's seed), a file's in an order shuffled by that seed.
Each turn asks for the recorded reply's token count (ShareGPT), the file's own count, else the
recipe's `output_tokens` (a count or a distribution), else 64. A session is cut at `max_turns`
and before the turn whose context (the history, the new message and the tokens it asks for)
would pass `max_total_tokens`, a server's context window being finite; the history's replies
are the server's, so the bound counts the tokens each reply was asked for. The think time
before each turn after the first is drawn here too, so a seeded run repeats its pauses.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pytest_aifactory.loadgen.datasets import DEFAULT_OUTPUT_TOKENS, ServerTokenizer
from pytest_aifactory.loadgen.llm_datasets.conversation_source import (
    MIN_SHAREGPT_TURNS,
    Dialogue,
    load_conversations,
    read_sharegpt_dialogues,
)
from pytest_aifactory.loadgen.llm_datasets.counting import CHARS_PER_TOKEN, TokenCounter
from pytest_aifactory.loadgen.llm_datasets.lengths import draw_lengths
from pytest_aifactory.loadgen.llm_datasets.sharegpt_source import dataset_file
from pytest_aifactory.loadgen.spec import DatasetSpec, LoadSpec

BATCH = 16
"""Conversations counted at once while walking the shuffled ones."""
THINK_STREAM = 0x7417
"""Seeds the think times' generator apart from the lengths'."""
LENGTH_STREAM = 0xC0
CERTAINLY_OVER = 4
"""Text of this many times the context bound in estimated tokens (four characters each) is
over the bound for any tokenizer that takes up to sixteen characters a token."""
Setting = float | Mapping[str, Any]


class ConversationError(ValueError):
    """No session of the data fits the recipe's bounds."""


@dataclass(frozen=True)
class Turn:
    """One user message: its text, its own token count, the tokens it asks for and the pause
    before it (after the previous turn's answer; 0 for the first)."""

    text: str
    tokens: int
    output_tokens: int
    think_s: float = 0.0


@dataclass(frozen=True)
class Conversation:
    """A session's plan. `exact`: the messages were counted by the server's tokenizer (the
    whole request, with the chat template and the server's own replies, is counted by the
    server's usage report)."""

    turns: tuple[Turn, ...]
    system: str | None = None
    system_tokens: int = 0
    exact: bool = False


def draw_seconds(setting: Setting, count: int, rng: np.random.Generator) -> list[float]:
    """`count` pauses in seconds, each at least 0, as the recipe's `think_time_s` says (a
    number, or a mapping already checked by the recipe's `ThinkTime` model)."""
    if not isinstance(setting, Mapping):
        return [float(setting)] * count
    values = setting.get("values")
    if values:
        if setting.get("order", "cycle") == "sample":
            return [float(v) for v in rng.choice(np.asarray(values, dtype=float), count)]
        return [float(values[i % len(values)]) for i in range(count)]
    mean = float(setting["mean"])
    distribution = setting.get("distribution") or (
        "normal" if setting.get("std") is not None else "uniform"
    )
    if distribution == "exponential":
        return [float(v) for v in rng.exponential(mean, count)] if mean > 0 else [0.0] * count
    if distribution == "normal":
        return [float(v) for v in np.maximum(rng.normal(mean, float(setting["std"]), count), 0)]
    ratio = float(setting.get("range_ratio") or 0.0)
    return [float(v) for v in rng.uniform(mean * (1 - ratio), mean * (1 + ratio), count)]


def within_context(
    tokens: Sequence[int], outputs: Sequence[int], system_tokens: int, limit: int
) -> int:
    """How many turns from the first fit `limit`: each turn's context is the system message,
    every earlier message and the reply it asked for, its own message and its own output."""
    context = system_tokens
    for index, (ask, answer) in enumerate(zip(tokens, outputs, strict=True)):
        context += ask + answer
        if context > limit:
            return index
    return len(tokens)


def _cut(dialogue: Dialogue, max_turns: int | None, limit: int) -> Dialogue:
    """At most `max_turns` turns, and none past where the user messages alone are surely
    beyond the context bound (`CERTAINLY_OVER` times their estimate), so that a long
    conversation's later turns are not sent to the tokenizer only to be dropped."""
    keep = len(dialogue.turns) if max_turns is None else min(max_turns, len(dialogue.turns))
    text = len(dialogue.system or "")
    for index in range(keep):
        text += len(dialogue.turns[index])
        if text > CERTAINLY_OVER * CHARS_PER_TOKEN * limit:
            keep = index + 1
            break
    if keep == len(dialogue.turns):
        return dialogue
    return Dialogue(
        dialogue.turns[:keep],
        dialogue.system,
        dialogue.replies[:keep] if dialogue.replies is not None else None,
        dialogue.output_tokens[:keep] if dialogue.output_tokens is not None else None,
    )


class _Planner:
    """Turns dialogues into sessions: counts, output lengths, the context bound, pauses."""

    def __init__(self, counter: TokenCounter, spec: LoadSpec, min_turns: int) -> None:
        self.counter = counter
        self.dataset: DatasetSpec = spec.dataset
        self.min_turns = min_turns
        self.lengths = np.random.default_rng([spec.seed, LENGTH_STREAM])
        self.pauses = np.random.default_rng([spec.seed, THINK_STREAM])

    async def plan(self, dialogues: Sequence[Dialogue]) -> list[Conversation | None]:
        """Each dialogue's session, or None where too few of its turns fit."""
        limit = self.dataset.max_total_tokens
        dialogues = [_cut(d, self.dataset.max_turns, limit) for d in dialogues]
        asks = iter(await self.counter.count_all([t for d in dialogues for t in d.turns]))
        systems = iter(await self.counter.count_all([d.system for d in dialogues if d.system]))
        fixed = self.dataset.output_tokens
        recorded = iter(
            await self.counter.count_all(
                [r for d in dialogues if d.output_tokens is None for r in d.replies or ()]
            )
            if fixed is None
            else []
        )
        sessions: list[Conversation | None] = []
        for dialogue in dialogues:
            count = len(dialogue.turns)
            tokens = [next(asks) for _ in range(count)]
            if dialogue.output_tokens is not None:
                outputs = list(dialogue.output_tokens)
            elif fixed is not None:
                outputs = draw_lengths(fixed, count, self.lengths)
            elif dialogue.replies is not None:
                outputs = [max(1, next(recorded)) for _ in range(count)]
            else:
                outputs = [DEFAULT_OUTPUT_TOKENS] * count
            system_tokens = next(systems) if dialogue.system else 0
            kept = within_context(tokens, outputs, system_tokens, self.dataset.max_total_tokens)
            if kept < self.min_turns:
                sessions.append(None)
                continue
            pauses = draw_seconds(self.dataset.think_time_s, kept, self.pauses)
            turns = tuple(
                Turn(dialogue.turns[i], tokens[i], outputs[i], pauses[i] if i else 0.0)
                for i in range(kept)
            )
            sessions.append(Conversation(turns, dialogue.system, system_tokens, self.counter.exact))
        return sessions


async def conversation_pool(
    tokenizer: ServerTokenizer, spec: LoadSpec, count: int
) -> list[Conversation]:
    """`count` sessions (fewer when the data holds fewer that fit), in the seeded order."""
    dataset = spec.dataset
    if dataset.source == "file":
        if not dataset.path:
            raise ValueError("a conversation dataset of source 'file' needs a path")
        dialogues: Sequence[Dialogue] = load_conversations(Path(dataset.path))
        order = [
            int(i) for i in np.random.default_rng([spec.seed, 0xF11E]).permutation(len(dialogues))
        ]
        min_turns = 1
    else:
        path = dataset_file(dataset.path)
        dialogues, whole = read_sharegpt_dialogues(path)
        if not whole and dataset.path and spec.process == 0:
            print(
                f"client '{spec.client}': {path} ends inside a conversation; the "
                f"{len(dialogues)} complete ones before it are used",
                file=sys.stderr,
                flush=True,
            )
        order = list(range(len(dialogues)))
        random.Random(spec.seed).shuffle(order)
        min_turns = MIN_SHAREGPT_TURNS
    planner = _Planner(await TokenCounter.start(tokenizer, spec), spec, min_turns)
    sessions: list[Conversation] = []
    for first in range(0, len(order), BATCH):
        batch = [dialogues[i] for i in order[first : first + BATCH]]
        sessions += [s for s in await planner.plan(batch) if s is not None]
        if len(sessions) >= count:
            return sessions[:count]
    if not sessions:
        where = dataset.path or "the ShareGPT file"
        raise ConversationError(
            f"no conversation of {where} has {min_turns} turn{'s' if min_turns > 1 else ''} "
            f"within max_total_tokens {dataset.max_total_tokens}"
        )
    return sessions
