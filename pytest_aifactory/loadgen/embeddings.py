"""`openai` clients with `api: embeddings`: batches of inputs to `/v1/embeddings`.

One request carries `openai.batch_size` inputs of the dataset's `input_tokens` tokens each (the
same prompts as a generation load, exact where the server tokenizes) and is timed from the
write of its bytes to the whole answer read and decoded: there is no stream, so no TTFT. An
answer is checked for one embedding per input, each a non-empty list of numbers of one length;
anything else is an error in the record. Connections are handled as for generation (pooled, a
request that finds its pooled connection closed goes again at once, `connect_ms` and `queue_ms`
kept out of the latency): the same tracing is used.
"""

from __future__ import annotations

import dataclasses
import json
from time import perf_counter_ns
from typing import Any

import aiohttp

from pytest_aifactory.loadgen.datasets import Prompt, api_root, build_prompts
from pytest_aifactory.loadgen.kinds.openai import EMBEDDINGS_OP
from pytest_aifactory.loadgen.openai import (
    ConnectionTrace,
    PooledPoster,
    _excerpt,
    client_session,
)
from pytest_aifactory.loadgen.records import Clock
from pytest_aifactory.loadgen.request_options import ModelMix, RequestOptions
from pytest_aifactory.loadgen.runner import LoadDriver, SendFn
from pytest_aifactory.loadgen.spec import LoadSpec

OP = EMBEDDINGS_OP


def embeddings_url(spec: LoadSpec, base_url: str | None = None) -> str:
    """The embeddings path on `base_url` (default: the spec's first server)."""
    return api_root(spec.base_url if base_url is None else base_url) + "/v1/embeddings"


def embeddings_body(texts: list[str], model: str, options: RequestOptions) -> bytes:
    """One request's JSON: the client's keys, then the recipe's `extra_body`."""
    payload: dict[str, Any] = {"model": model, "input": texts, "encoding_format": "float"}
    payload.update(options.extra_body)
    return json.dumps(payload).encode()


def check_answer(answer: Any, expected: int) -> tuple[str, int | None, int | None]:
    """(error, vector length, prompt tokens) of a decoded answer; error empty when it holds one
    embedding per input, all of one non-zero length."""
    data = answer.get("data") if isinstance(answer, dict) else None
    if not isinstance(data, list):
        return (
            f"EmbeddingError: no data list in the answer: {_excerpt(json.dumps(answer))}",
            None,
            None,
        )
    if len(data) != expected:
        return f"EmbeddingError: {len(data)} embeddings for {expected} inputs", None, None
    lengths = set()
    for item in data:
        vector = item.get("embedding") if isinstance(item, dict) else None
        if not isinstance(vector, list) or not vector:
            return "EmbeddingError: an item without an embedding", None, None
        lengths.add(len(vector))
    if len(lengths) != 1:
        return f"EmbeddingError: embeddings of different lengths {sorted(lengths)}", None, None
    usage = answer.get("usage")
    tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    if not isinstance(tokens, int) or isinstance(tokens, bool):
        tokens = None
    return "", lengths.pop(), tokens


@dataclasses.dataclass
class _Exchange:
    status: int | None = None
    body: bytes = b""
    error: str = ""


class EmbeddingsSender(PooledPoster):
    """Sends batches over one shared session and turns each answer into a record."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        spec: LoadSpec,
        prompts: list[Prompt],
        clock: Clock,
        fresh: aiohttp.ClientSession | None = None,
    ) -> None:
        if not prompts:
            raise ValueError("no inputs to send")
        super().__init__(session, spec, clock, fresh, embeddings_url)
        self.prompts = prompts
        options = RequestOptions.of(spec)
        self.batch = options.batch_size
        self.mix = ModelMix(spec)
        self.options = options

    def inputs(self, request_id: int) -> list[Prompt]:
        """The request's `batch_size` prompts: the next ones of the pool, in turn."""
        first = request_id * self.batch
        return [self.prompts[(first + i) % len(self.prompts)] for i in range(self.batch)]

    async def send(self, record: dict[str, Any], scheduled_ns: int) -> dict[str, Any]:
        """Send one batch to the server the balancer picks and fill its record."""

        async def send(url: str) -> dict[str, Any]:
            return await self._send(record, scheduled_ns, url)

        return await self.on_replica(record, send)

    async def _send(self, record: dict[str, Any], scheduled_ns: int, url: str) -> dict[str, Any]:
        request_id = record["request_id"]
        inputs = self.inputs(request_id)
        model = self.mix.names[self.mix.index(request_id)]
        body = embeddings_body([p.text for p in inputs], model, self.options)
        headers = self.request_headers(record)
        exchange = _Exchange()

        async def attempt(session: aiohttp.ClientSession, trace: ConnectionTrace) -> None:
            nonlocal exchange
            exchange = _Exchange()
            await self._exchange(session, url, body, headers, exchange, trace)

        tried = await self.attempt(attempt, lambda: exchange.status is not None)
        end_ns = perf_counter_ns()
        failure = tried.failure
        if isinstance(failure, TimeoutError):
            exchange.error = f"Timeout: no answer within {self.spec.timeout_s:g} s"
        elif isinstance(failure, aiohttp.ClientError | OSError):
            exchange.error = f"ConnectionError: {type(failure).__name__}: {failure}"
        elif failure is not None:
            raise failure  # a bug, not the server: the load driver records it
        trace = tried.trace
        sent_ns = trace.written_ns or tried.start_ns
        record.update(
            op=OP,
            model=model,
            items=len(inputs),
            http_status=exchange.status,
            queue_ms=max(0, sent_ns - scheduled_ns - trace.connect_ns) / 1e6,
            connect_ms=trace.connect_ns / 1e6,
            resends=tried.resends,
            send_ts=self.clock.wall(sent_ns),
            end_ts=self.clock.wall(end_ns),
        )
        estimate = sum(p.input_tokens or 0 for p in inputs) or None
        record["input_tokens"] = estimate
        record["tokens_estimated"] = True
        record["prompt_tokens_exact"] = all(p.exact for p in inputs)
        if exchange.error:
            record["error"] = exchange.error
            return record
        try:
            answer = json.loads(exchange.body)
        except ValueError:
            record["error"] = f"EmbeddingError: invalid JSON: {_excerpt(exchange.body)}"
            return record
        error, dim, tokens = check_answer(answer, len(inputs))
        if error:
            record["error"] = error
            return record
        record["latency_ms"] = (end_ns - sent_ns) / 1e6
        if tokens is not None:
            record["input_tokens"] = tokens
            record["tokens_estimated"] = False
        record["extra"] = {"dim": dim}
        return record

    async def _exchange(
        self,
        session: aiohttp.ClientSession,
        url: str,
        body: bytes,
        headers: dict[str, str],
        exchange: _Exchange,
        trace: ConnectionTrace,
    ) -> None:
        async with session.post(
            url, data=body, headers=headers, timeout=self.timeout, trace_request_ctx=trace
        ) as response:
            exchange.status = response.status
            exchange.body = await response.read()
            if response.status >= 400:
                exchange.error = (
                    f"HTTPError: {response.status} {response.reason}: {_excerpt(exchange.body)}"
                )


def input_pool_spec(spec: LoadSpec) -> LoadSpec:
    """The spec prompts are built for: enough distinct inputs for every batch of the level
    (the pool stays capped as for generation; beyond it inputs repeat in turn)."""
    batch = RequestOptions.of(spec).batch_size
    if spec.requests is None or batch == 1:
        return spec
    return dataclasses.replace(
        spec, requests=(spec.requests + spec.warmup_requests) * batch, warmup_requests=0
    )


async def run_embeddings(spec: LoadSpec) -> dict[str, Any]:
    """One process of an embeddings client: build the inputs, then drive the load."""
    driver = LoadDriver(spec)
    async with (
        client_session(spec, force_close=spec.connections == "per_request") as session,
        client_session(spec, force_close=True) as fresh,
    ):

        async def prepare() -> SendFn:
            prompts = await build_prompts(session, input_pool_spec(spec))
            return EmbeddingsSender(session, spec, prompts, driver.clock, fresh=fresh).send

        return await driver.run(prepare)
