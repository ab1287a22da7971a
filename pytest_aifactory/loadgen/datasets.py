"""Prompts for LLM loads.

`random` prompts have exactly the requested number of input tokens where the server can
tokenize (llama.cpp and vLLM both expose /tokenize and /detokenize): random token ids are
detokenized to text and the text is re-tokenized and trimmed or extended until its count is
exact, the way vLLM's own random dataset does it. Without a tokenizer endpoint the prompts are
random words and the token count comes from the server's usage report. Each prompt's input and
output counts are fixed or drawn from a distribution (`llm_datasets/lengths.py`).

The other kinds (`sharegpt`, `file`) are built by their own modules in `llm_datasets/`, named
in `dataset_kinds.py`; `build_prompts` runs whichever the dataset names, with what they all
share from here: the `Prompt`, the server's tokenizer and the pool's size.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
import numpy as np

from pytest_aifactory.loadgen.dataset_kinds import pool_builder
from pytest_aifactory.loadgen.llm_datasets.lengths import draw_lengths
from pytest_aifactory.loadgen.spec import LoadSpec

POOL_SIZE = 256
"""Distinct prompts per process; requests cycle through them."""

MAX_ROUNDS = 12
"""Re-tokenize rounds before settling for the closest count (tokens can merge at the seams)."""

PARALLEL = 8
TOKENIZER_TIMEOUT_S = 30.0

_WORD_TEXT = """
    time year people way day man thing woman life child world school state family student
    group country problem hand part place case week company system program question work
    government number night point home water room mother area money story fact month lot
    right study book eye job word business issue side kind head house service friend father
    power hour game line end member law car city community name president team minute idea
    kid body information back parent face others level office door health person art war
    history party result change morning reason research girl guy moment air teacher force
    education foot boy age policy music market sense nation plan college interest death
    experience effect use class control care field development role effort rate heart drug
    show leader light voice wife police mind price report decision son view relationship
    town road arm difference value building action model season society tax director
    position player record paper space ground form event official matter center couple site
    project activity star table need court oil situation cost industry figure street image
    phone data picture practice piece land product doctor wall patient worker news test
    movie north love support technology step baby computer type attention film tree source
    organization hair window evidence population river bridge
"""
WORDS: tuple[str, ...] = tuple(_WORD_TEXT.split())


@dataclass(frozen=True)
class Prompt:
    """One prompt. `exact`: `input_tokens` was counted by the server's own tokenizer;
    otherwise it is an estimate (words) and the server's usage report is the truth.
    `output_tokens`: the tokens to ask for (None: the dataset's fixed `output_tokens`);
    `messages`: a chat given whole (a `file` dataset's), sent instead of `text`; `at_s`: when
    a replayed trace sends it, in seconds after the trace's first request (before the replay's
    speed factor; None for warmup)."""

    text: str
    input_tokens: int | None
    exact: bool
    output_tokens: int | None = None
    messages: tuple[dict[str, Any], ...] | None = None
    at_s: float | None = None


def api_root(base_url: str) -> str:
    """The server root, whether the recipe gave `http://h:p` or `http://h:p/v1`."""
    root = base_url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


class TokenizerUnavailable(Exception):
    """The server has no usable /tokenize + /detokenize pair."""


class TokenizerRefused(Exception):
    """The server refused the run's key (or its absence) at /tokenize or /detokenize: prompts
    of a guessed length would hide a wrong key, so the load does not start."""


class ServerTokenizer:
    """The server's own tokenizer over HTTP, in llama.cpp's or vLLM's request shape."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        model: str,
        api_key: str | None = None,
    ) -> None:
        self.session = session
        self.root = api_root(base_url)
        self.model = model
        self.shape: str | None = None
        self.timeout = aiohttp.ClientTimeout(total=TOKENIZER_TIMEOUT_S)
        # the same header the requests send: a keyed server refuses the probe without it. One
        # connection per request: llama.cpp's server closes a kept-alive connection after a few
        # requests, and a pooled one it closed fails the next write.
        self.headers = {"Connection": "close"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"

    async def _post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        try:
            return await self._post_once(path, body)
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
            pass  # a connection pooled before the probe may have been closed by the server
        try:
            return await self._post_once(path, body)
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as err:
            raise TokenizerUnavailable(f"{path}: {type(err).__name__}: {err}") from err

    async def _post_once(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        try:
            async with self.session.post(
                self.root + path, json=body, headers=self.headers, timeout=self.timeout
            ) as resp:
                if resp.status in (401, 403):
                    raise TokenizerRefused(
                        f"the server refused the prompt-length probe: POST {path} answered "
                        f"{resp.status} {resp.reason} (the client's API key is missing or wrong)"
                    )
                if resp.status >= 400:
                    return resp.status, None
                return resp.status, await resp.json(content_type=None)
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
            raise
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as err:
            raise TokenizerUnavailable(f"{path}: {type(err).__name__}: {err}") from err

    @staticmethod
    def _token_list(data: Any) -> list[int] | None:
        tokens = data.get("tokens") if isinstance(data, dict) else None
        if isinstance(tokens, list) and all(isinstance(t, int) for t in tokens):
            return tokens
        return None

    async def probe(self) -> None:
        """Find which request shape the server speaks, or raise TokenizerUnavailable."""
        for shape in ("llama", "vllm"):
            self.shape = shape
            try:
                tokens = await self.tokenize("hello world")
                await self.detokenize(tokens)
            except TokenizerUnavailable:
                continue
            return
        self.shape = None
        raise TokenizerUnavailable("no /tokenize and /detokenize endpoints")

    async def tokenize(self, text: str) -> list[int]:
        if self.shape == "llama":
            body: dict[str, Any] = {"content": text, "add_special": False}
        else:
            body = {"model": self.model, "prompt": text, "add_special_tokens": False}
        status, data = await self._post("/tokenize", body)
        tokens = self._token_list(data)
        if tokens is None:
            raise TokenizerUnavailable(f"/tokenize answered {status} without a token list")
        return tokens

    async def detokenize(self, tokens: list[int]) -> str:
        if self.shape == "llama":
            body: dict[str, Any] = {"tokens": tokens}
            key = "content"
        else:
            body = {"model": self.model, "tokens": tokens}
            key = "prompt"
        status, data = await self._post("/detokenize", body)
        text = data.get(key) if isinstance(data, dict) else None
        if not isinstance(text, str):
            raise TokenizerUnavailable(f"/detokenize answered {status} without text")
        return text


def random_words(rng: np.random.Generator, count: int) -> str:
    return " ".join(rng.choice(WORDS, max(count, 0)).tolist())


async def exact_prompt(
    tokenizer: ServerTokenizer, rng: np.random.Generator, target: int, vocabulary: np.ndarray
) -> Prompt:
    """Random token ids, detokenized, then re-tokenized and fixed up until the count is exact."""
    if target <= 0:
        return Prompt("", 0, True)
    ids = rng.choice(vocabulary, target).tolist()
    text, count = "", 0
    for _ in range(MAX_ROUNDS):
        text = await tokenizer.detokenize(ids)
        tokens = await tokenizer.tokenize(text)
        count = len(tokens)
        if count == target:
            return Prompt(text, target, True)
        if count > target:
            ids = tokens[:target]
        else:
            ids = tokens + rng.choice(vocabulary, target - count).tolist()
    return Prompt(text, count, False)


def pool_size(spec: LoadSpec) -> int:
    if spec.requests is None:
        return POOL_SIZE
    return max(1, min(spec.requests + spec.warmup_requests, POOL_SIZE))


DEFAULT_OUTPUT_TOKENS = 64
"""What a `random` prompt asks for when the recipe gives no `output_tokens`."""
LENGTHS_STREAM = 0x1E9
"""Seeds the lengths' generators apart from the prompts' own (`[seed, index]`)."""


def random_lengths(spec: LoadSpec, count: int) -> tuple[list[int], list[int]]:
    """Each prompt's input and output token counts, drawn from generators of their own so the
    lengths do not depend on how the prompts are made (exact or words)."""
    dataset = spec.dataset
    output = DEFAULT_OUTPUT_TOKENS if dataset.output_tokens is None else dataset.output_tokens
    inputs = draw_lengths(
        dataset.input_tokens, count, np.random.default_rng([spec.seed, LENGTHS_STREAM, 1])
    )
    outputs = draw_lengths(output, count, np.random.default_rng([spec.seed, LENGTHS_STREAM, 2]))
    return inputs, outputs


def word_prompts(spec: LoadSpec, count: int) -> list[Prompt]:
    """Random words, about one per token: the fallback where the server cannot tokenize."""
    inputs, outputs = random_lengths(spec, count)
    return [
        Prompt(
            random_words(np.random.default_rng([spec.seed, i]), inputs[i]),
            inputs[i],
            False,
            outputs[i],
        )
        for i in range(count)
    ]


async def exact_pool(tokenizer: ServerTokenizer, spec: LoadSpec, count: int) -> list[Prompt]:
    """`count` exact prompts, each from its own seeded generator so the pool does not depend
    on the order in which the server answers."""
    inputs, outputs = random_lengths(spec, count)
    await tokenizer.probe()
    seed_rng = np.random.default_rng([spec.seed, count])
    sample = await tokenizer.tokenize(random_words(seed_rng, max(256, 2 * max(inputs))))
    vocabulary = np.unique(np.asarray(sample, dtype=np.int64))
    if vocabulary.size == 0:
        raise TokenizerUnavailable("the tokenizer returned no tokens")
    limit = asyncio.Semaphore(PARALLEL)

    async def one(index: int) -> Prompt:
        async with limit:
            rng = np.random.default_rng([spec.seed, index])
            prompt = await exact_prompt(tokenizer, rng, inputs[index], vocabulary)
            return replace(prompt, output_tokens=outputs[index])

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(one(i)) for i in range(count)]
    return [task.result() for task in tasks]


async def build_prompts(session: aiohttp.ClientSession, spec: LoadSpec) -> list[Prompt]:
    """The process's prompt pool, built before the load starts (not timed)."""
    count = pool_size(spec)
    tokenizer = ServerTokenizer(session, spec.base_url, spec.model, spec.api_key)
    if spec.dataset.kind != "random":
        try:
            return await pool_builder(spec.dataset.kind)(tokenizer, spec, count)
        except* TokenizerRefused as refused:
            raise refused.exceptions[0] from None
    prompts: list[Prompt] = []
    try:
        prompts = await exact_pool(tokenizer, spec, count)
    except* TokenizerRefused as refused:
        raise refused.exceptions[0] from None
    except* TokenizerUnavailable as missing:
        prompts = word_prompts(spec, count)
        if spec.process == 0:  # once per load, not once per process
            print(estimated_note(spec, missing.exceptions[0]), file=sys.stderr, flush=True)
    return prompts


def estimated_note(spec: LoadSpec, reason: BaseException) -> str:
    """What a load without the server's tokenizer says in its output: its prompts' lengths are
    guesses (records say `prompt_tokens_exact: false`)."""
    return (
        f"client '{spec.client}': prompts are random words of estimated length, not exact "
        f"token counts: the server's tokenizer is not usable ({reason}); input_tokens come "
        "from the server's usage where it reports one"
    )
