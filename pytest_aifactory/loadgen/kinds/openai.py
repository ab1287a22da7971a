"""LLM serving over the OpenAI API: completions or chat, streamed (TTFT, TPOT, ITL and token
throughputs, as vLLM's serving benchmark defines them), or embeddings (latency, inputs and
tokens per second); docs/metrics.md defines each figure."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveInt, field_validator

from pytest_aifactory.loadgen.kind import ClientKind, KindOptions, KindProblem
from pytest_aifactory.metrics.catalog import Headline, metric

EMBEDDINGS_OP = "embeddings"
"""The `op` of an embeddings request's record: how a summary tells an embeddings level."""

SAMPLING_KEYS: tuple[str, ...] = ("temperature", "top_p", "seed", "min_tokens")
"""Sampling options with keys of their own: sent in every completions or chat request."""

CLIENT_OWNED_KEYS: dict[str, str] = {
    "model": "the client's `model`",
    "stream": "the client (it always streams)",
    "stream_options": "the client (it asks for usage)",
    "max_tokens": "`dataset.output_tokens`",
    "ignore_eos": "`dataset.ignore_eos`",
    "messages": "the dataset's prompts",
    "prompt": "the dataset's prompts",
    "input": "the dataset's prompts",
    **{key: f"`openai.{key}`" for key in SAMPLING_KEYS},
}
"""Request keys `extra_body` may not set, each with what sets it instead."""


class OpenAIOptions(KindOptions):
    """What every request carries beyond its prompt. Completions and chat: the sampling
    options (`temperature` 0 unless given: greedy, so answers repeat; the others are sent only
    when given) and `extra_body`, a mapping merged into every request body for what a server
    takes beyond the OpenAI API (vLLM's `top_k`, `repetition_penalty`, a LoRA's options). It
    may not set a key the client sets itself (`model`, `stream`, `max_tokens`, the prompt, the
    sampling keys). Embeddings: `batch_size` inputs per request, and `extra_body`."""

    temperature: NonNegativeFloat = 0.0
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = None
    min_tokens: NonNegativeInt | None = None
    extra_body: dict[str, Any] = Field(default_factory=dict)
    batch_size: PositiveInt = 1
    """`api: embeddings`: inputs per request."""
    balance: Literal["round_robin", "least_outstanding"] = "round_robin"
    """How a client process spreads its requests over a service's replicas: in turn
    (`round_robin`), or to the replica with the fewest of its own requests in flight
    (`least_outstanding`, ties to the first listed); nothing to do with one replica."""

    @field_validator("extra_body")
    @classmethod
    def _not_owned(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            owner = CLIENT_OWNED_KEYS.get(key)
            if owner is not None:
                raise ValueError(f"'{key}' is set by {owner}; extra_body may not set it")
        return value

    def client_problem(self, client: Any) -> KindProblem | None:
        """Sampling options mean nothing to an embeddings request, nor inputs per request to a
        generation; a value left at its default is no problem (a saved recipe holds them all)."""
        fields = type(self).model_fields
        if client.api == "embeddings":
            for key in SAMPLING_KEYS:
                if getattr(self, key) != fields[key].default:
                    return (key,), "a sampling option: applies to api completions or chat"
        elif self.batch_size != fields["batch_size"].default:
            return ("batch_size",), f"applies to api embeddings (this client's is {client.api})"
        return None


STREAM_ONLY_METRICS: tuple[str, ...] = (
    "ttft_ms", "ttfo_ms", "tpot_ms", "itl_ms", "e2el_ms", "output_tokens", "reasoning_tokens",
    "output_throughput", "prefix_cache_hit_rate",
)  # fmt: skip
"""What only a streamed generation reports: an embeddings summary never holds them."""
EMBEDDINGS_ONLY_METRICS: tuple[str, ...] = ("latency_ms", "embedding_throughput")
"""What only an embeddings level reports: a stream is timed by TTFT and E2E latency instead."""

_LLM_HEADLINE = Headline("output_throughput", "out tok/s", "ttft_ms", "TTFT")
_EMBEDDINGS_HEADLINE = Headline("embedding_throughput", "inputs/s", "latency_ms", "latency")

CLIENT_KIND = ClientKind(
    name="openai",
    description="streams completions or chat requests, or sends embeddings requests, to an "
    "OpenAI-compatible server",
    load="pytest_aifactory.loadgen.openai:run_openai",
    summarize="pytest_aifactory.metrics.openai:summarize_openai",
    headline=_LLM_HEADLINE,
    api_headlines=(("embeddings", _EMBEDDINGS_HEADLINE),),
    api_omits=(
        ("embeddings", STREAM_ONLY_METRICS),
        ("completions", EMBEDDINGS_ONLY_METRICS),
        ("chat", EMBEDDINGS_ONLY_METRICS),
    ),
    throughput_metric="request_throughput",
    options=OpenAIOptions,
    pooled_connections=True,
    datasets="prompts",
    model_mix=True,
    replicas=True,
    closing_columns=(
        ("TTFT p50", "ttft_ms.p50"),
        ("TTFT p99", "ttft_ms.p99"),
        ("TPOT p50", "tpot_ms.p50"),
        ("out tok/s", "output_throughput"),
    ),
    metrics=(
        metric("ttft_ms", "ms", False, True, "llm", "time to first token (reasoning included)",
               "TTFT (ms)"),
        metric("ttfo_ms", "ms", False, True, "llm",
               "time to first answer event (after any reasoning)", "TTFO (ms)"),
        metric("tpot_ms", "ms", False, True, "llm", "(e2el - ttft) / (output_tokens - 1)",
               "TPOT (ms)"),
        metric("itl_ms", "ms", False, True, "llm", "gap between content events (pooled)",
               "ITL (ms, pooled)"),
        metric("e2el_ms", "ms", False, True, "llm", "start to last content event",
               "E2E latency (ms)"),
        metric("connect_ms", "ms", False, True, "llm", "getting a connection (0: reused)"),
        metric("output_tokens", "tokens", True, True, "llm", "generated tokens per request"),
        metric("input_tokens", "tokens", True, True, "llm", "prompt tokens per request"),
        metric("reasoning_tokens", "tokens", False, True, "llm",
               "of output_tokens, reasoning tokens per request"),
        metric("output_throughput", "tok/s", True, False, "llm", "generated tokens per second"),
        metric("total_token_throughput", "tok/s", True, False, "llm", "prompt + generated tok/s"),
        metric("prefix_cache_hit_rate", "ratio", True, False, "llm",
               "prompt tokens the server served from its prefix cache / prompt tokens"),
        metric("embedding_throughput", "inputs/s", True, False, "llm",
               "embeddings: inputs embedded per second"),
    ),
)  # fmt: skip
