"""Client kind `openai`: streaming requests to an OpenAI-compatible server (vLLM, llama.cpp, ...).

Timing follows docs/metrics.md: the clock starts immediately before the request's bytes are
written to the connection (aiohttp's request tracing tells when), TTFT ends at the first
server-sent event that carries generated text (a role-only chat delta does not), a reasoning
model's thinking included; TTFO at the first that carries answer text; ITL are the gaps between
events of either kind; an event's time is when the connection received it (`arrivals`). aiohttp
writes a request with a body from a task of its own (before Python 3.12), so a request handed to
it during a burst of other work leaves only when the loop gets to that task: a clock started at
the hand-over would count that wait as the server's; it is the client's, and lands in `queue_ms`
with any other wait between the scheduled instant and the write. Whatever a server answers
(errors, garbage, a stream cut short, no usage), the request ends as a record, never as an
exception.

Connections are pooled (`load.connections: pooled`), as the applications a server answers keep
them: a connect inside every TTFT would be the client's cost, not the server's. Some servers
(llama-server) close a connection after each stream while announcing keep-alive, so a pooled
connection can turn out closed when the next request is written on it; the server never saw that
request, so it is sent again at once on a fresh connection, its clock restarted, and counted in
the record's `resends`. Nothing is sent again once a response has begun. The time spent getting
a connection is the record's `connect_ms` (0 when a pooled one was reused), never part of TTFT
nor of `queue_ms`; `per_request` opens a new connection for every request, as some benchmarks
do, for those who want to see what connecting costs.
"""

from __future__ import annotations

import errno
import itertools
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from time import perf_counter_ns
from types import SimpleNamespace
from typing import Any

import aiohttp

from pytest_aifactory.loadgen.arrivals import Arrivals, timed_connector, watch_arrivals
from pytest_aifactory.loadgen.balance import ReplicaBalancer, replica_bases
from pytest_aifactory.loadgen.datasets import (
    DEFAULT_OUTPUT_TOKENS,
    Prompt,
    api_root,
    build_prompts,
)
from pytest_aifactory.loadgen.records import Clock
from pytest_aifactory.loadgen.request_options import ModelMix, RequestOptions
from pytest_aifactory.loadgen.runner import LoadDriver, SendFn
from pytest_aifactory.loadgen.spec import LoadSpec

try:
    import orjson

    _loads: Callable[[bytes], Any] = orjson.loads
except ImportError:  # pragma: no cover - the standard parser works, only slower
    _loads = json.loads

BODY_EXCERPT = 200
READ_BUFFER = 2**18
MAX_EVENT_BYTES = 2**24
"""An event still unfinished after this many bytes is a broken stream, not a long answer."""

_DONE = b"[DONE]"

APIS = ("completions", "chat", "embeddings")
CONNECTIONS = ("pooled", "per_request")
MAX_RESENDS = 3
"""Times a request is sent again after finding its pooled connection closed by the server: one
is the common case; more means the pool held several connections the server had closed."""
_STALE_ERRNOS = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED})
_STALE_ERRORS = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


def prompt_output_tokens(spec: LoadSpec, prompt: Prompt) -> int:
    """The tokens one prompt asks for: its own (drawn, or its dataset's), else the fixed
    count of the recipe."""
    if prompt.output_tokens is not None:
        return prompt.output_tokens
    fixed = spec.dataset.output_tokens
    return fixed if isinstance(fixed, int) else DEFAULT_OUTPUT_TOKENS


def request_body(
    spec: LoadSpec, prompt: Prompt, model: str | None = None, options: RequestOptions | None = None
) -> bytes:
    """The JSON body of one request naming `model` (default: the spec's), encoded once per
    prompt and model rather than once per request: the client's own keys, the recipe's
    sampling options, then its `extra_body` (which may not set any of them)."""
    dataset = spec.dataset
    options = options or RequestOptions.of(spec)
    payload: dict[str, Any] = {
        "model": model if model is not None else spec.model,
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": prompt_output_tokens(spec, prompt),
        **options.sampling,
    }
    if spec.api == "chat":
        messages = prompt.messages or ({"role": "user", "content": prompt.text},)
        payload["messages"] = list(messages)
    else:
        payload["prompt"] = prompt.text
    if dataset.ignore_eos:
        payload["ignore_eos"] = True
    payload.update(options.extra_body)
    return json.dumps(payload).encode()


def endpoint_url(spec: LoadSpec, base_url: str | None = None) -> str:
    """The spec's API path on `base_url` (default: the spec's first server)."""
    path = "/v1/chat/completions" if spec.api == "chat" else "/v1/completions"
    return api_root(spec.base_url if base_url is None else base_url) + path


def _excerpt(data: bytes | str) -> str:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    return text[:BODY_EXCERPT]


@dataclass
class StreamState:
    """What one response stream has shown so far. `events_ns` holds every event that carried
    generated text, reasoning included; `answer_ns` the first of them that carried answer text
    (0 until one did), `reasoning_events` how many carried reasoning only."""

    chat: bool
    status: int | None = None
    events_ns: list[int] = field(default_factory=list)
    answer_ns: int = 0
    reasoning_events: int = 0
    usage: dict[str, Any] | None = None
    cache_n: int | None = None
    """llama.cpp's `timings.cache_n`: prompt tokens it served from its cache."""
    done: bool = False
    error: str = ""

    def on_event(self, payload: bytes, arrived_ns: int) -> None:
        """Handle the data of one SSE event; sets `error` to stop reading."""
        if payload.startswith(_DONE):
            self.done = True
            return
        if self.done:
            return
        try:
            chunk = _loads(payload)
        except ValueError:
            self.error = f"StreamError: invalid JSON in event: {_excerpt(payload)}"
            return
        if not isinstance(chunk, dict):
            self.error = f"StreamError: unexpected event: {_excerpt(payload)}"
            return
        choices = chunk.get("choices")
        if choices and isinstance(choices, list) and isinstance(choices[0], dict):
            first = choices[0]
            part = first.get("delta") if self.chat else first
            if isinstance(part, dict):
                self._on_text(part, arrived_ns)
        elif chunk.get("error") is not None:
            self.error = f"StreamError: error event: {_excerpt(json.dumps(chunk['error']))}"
            return
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
        timings = chunk.get("timings")
        if isinstance(timings, dict):
            self.cache_n = _int_or_none(timings.get("cache_n"))

    def _on_text(self, part: dict[str, Any], arrived_ns: int) -> None:
        """A chat delta or a completions choice: answer text (`content`, `text`), or a
        reasoning model's thinking, which comes first and which servers put in
        `reasoning_content` (DeepSeek-R1 style, llama.cpp) or `reasoning` (gpt-oss, newer
        vLLM). Both are generated tokens; only the answer ends the time to first output."""
        if part.get("content" if self.chat else "text"):
            self.events_ns.append(arrived_ns)
            if not self.answer_ns:
                self.answer_ns = arrived_ns
        elif _is_text(part.get("reasoning_content")) or _is_text(part.get("reasoning")):
            self.events_ns.append(arrived_ns)
            self.reasoning_events += 1


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and value != ""


class ConnectionTrace:
    """What aiohttp's tracing saw of one attempt: the time spent getting a connection (waiting
    for a pool slot, resolving and connecting), whether a pooled one was reused, and the
    instant the request's bytes were about to be written (0 until then)."""

    __slots__ = ("connect_ns", "reused", "started_ns", "written_ns")

    def __init__(self) -> None:
        self.connect_ns = 0
        self.started_ns = 0
        self.reused = False
        self.written_ns = 0


async def _wait_started(_: Any, context: SimpleNamespace, __: Any) -> None:
    trace = context.trace_request_ctx
    if isinstance(trace, ConnectionTrace):
        trace.started_ns = perf_counter_ns()


async def _wait_ended(_: Any, context: SimpleNamespace, __: Any) -> None:
    trace = context.trace_request_ctx
    if isinstance(trace, ConnectionTrace):
        trace.connect_ns += perf_counter_ns() - trace.started_ns


async def _reused(_: Any, context: SimpleNamespace, __: Any) -> None:
    trace = context.trace_request_ctx
    if isinstance(trace, ConnectionTrace):
        trace.reused = True


async def _chunk_sent(_: Any, context: SimpleNamespace, __: Any) -> None:
    """aiohttp calls this just before it writes a body chunk, headers coalesced with the first."""
    trace = context.trace_request_ctx
    if isinstance(trace, ConnectionTrace) and not trace.written_ns:
        trace.written_ns = perf_counter_ns()


def connection_tracing() -> aiohttp.TraceConfig:
    """A trace config that fills the `ConnectionTrace` passed as a request's
    `trace_request_ctx`; requests without one are not traced."""
    config = aiohttp.TraceConfig()
    config.on_connection_queued_start.append(_wait_started)
    config.on_connection_queued_end.append(_wait_ended)
    config.on_connection_create_start.append(_wait_started)
    config.on_connection_create_end.append(_wait_ended)
    config.on_connection_reuseconn.append(_reused)
    config.on_request_chunk_sent.append(_chunk_sent)
    return config


def closed_before_answer(err: BaseException) -> bool:
    """Whether a request failed because its connection was closed before any byte of an answer:
    a clean close with nothing of a response parsed, or a reset or broken pipe met while
    writing or waiting."""
    if isinstance(err, aiohttp.ServerDisconnectedError):
        # aiohttp passes the partly parsed response as the message when there was one
        return isinstance(err.message, str)
    if isinstance(err, aiohttp.ClientOSError):
        return err.errno in _STALE_ERRNOS or isinstance(err.__cause__, _STALE_ERRORS)
    return False


def failure_text(err: Exception, state: StreamState, timeout_s: float) -> str:
    """The record's error for what stopped an exchange; anything else is a bug and propagates
    (the load driver still records it)."""
    if isinstance(err, TimeoutError):
        what = "no response" if not state.events_ns else "stream not finished"
        return f"Timeout: {what} within {timeout_s:g} s"
    if isinstance(err, aiohttp.ClientPayloadError):
        return f"StreamError: stream broken: {err}"
    if isinstance(err, aiohttp.ClientError | OSError):
        return f"ConnectionError: {type(err).__name__}: {err}"
    if isinstance(err, ValueError):  # a line longer than the read buffer
        return f"StreamError: {err}"
    raise err


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def reasoning_tokens(usage: dict[str, Any] | None, reasoning_events: int) -> int:
    """The server's own count (`usage.completion_tokens_details.reasoning_tokens`) where it
    gives a positive one, else the events that carried reasoning (one token each, as servers
    stream them). A server that reports 0 beside reasoning it streamed does not count it."""
    details = usage.get("completion_tokens_details") if usage else None
    told = _int_or_none(details.get("reasoning_tokens")) if isinstance(details, dict) else None
    return told if told else reasoning_events


def cached_tokens(usage: dict[str, Any] | None, cache_n: int | None) -> int | None:
    """The prompt tokens the server served from its prefix cache, as it said:
    `usage.prompt_tokens_details.cached_tokens` (vLLM started with
    `--enable-prompt-tokens-details`, recent llama.cpp), else llama.cpp's `timings.cache_n`;
    None where it said neither."""
    details = usage.get("prompt_tokens_details") if usage else None
    told = _int_or_none(details.get("cached_tokens")) if isinstance(details, dict) else None
    return told if told is not None else cache_n


async def read_stream(response: aiohttp.ClientResponse, state: StreamState) -> None:
    """Server-sent events from whatever the socket has, not line by line: one await per read,
    however many events it holds. `data:` lines are joined when an event has several; a blank
    line ends an event. An event's time is when its first byte arrived, as the connection
    recorded it (see `arrivals`); where it keeps no times, when the read that brought that byte
    returned (events that arrive together are timed together)."""
    protocol = watch_arrivals(response)
    arrivals = protocol.arrivals if protocol is not None else None
    try:
        await _read_events(response.content, state, arrivals)
    finally:
        if protocol is not None:
            protocol.unwatch()


async def _read_events(
    content: aiohttp.StreamReader, state: StreamState, arrivals: Arrivals | None
) -> None:
    pending = b""
    pending_ns = 0
    pending_offset = 0
    consumed = 0  # payload bytes read before the current chunk
    while True:
        chunk = await content.readany()
        if not chunk:
            break
        read_ns = perf_counter_ns()
        if pending:
            data = pending + chunk
            data_offset = pending_offset
            first_ns = pending_ns
        else:
            data = chunk
            data_offset = consumed
            first_ns = read_ns
        consumed += len(chunk)
        # offsets hold only while the bytes are as received
        arrived = arrivals.at if arrivals is not None and b"\r" not in data else None
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n")
        blocks = data.split(b"\n\n")
        pending = blocks.pop()
        position = data_offset
        for block in blocks:
            if block:
                if arrived is not None:
                    first_ns = arrived(position) or first_ns
                _on_block(block, first_ns, state)
                if state.error:
                    return
            position += len(block) + 2
            first_ns = read_ns
        if pending:
            pending_offset = position
            pending_ns = (arrived(position) if arrived is not None else None) or first_ns
            if len(pending) > MAX_EVENT_BYTES:
                state.error = f"StreamError: event longer than {MAX_EVENT_BYTES} bytes"
                return
    if pending.strip(b"\r\n"):
        _on_block(pending.strip(b"\r\n"), pending_ns, state)


def _on_block(block: bytes, arrived_ns: int, state: StreamState) -> None:
    """One event's lines; the common case (a single `data:` line) takes the short path."""
    if block.startswith(b"data:") and b"\n" not in block:
        state.on_event(block[6:] if block[5:6] == b" " else block[5:], arrived_ns)
        return
    lines: list[bytes] = []
    for line in block.split(b"\n"):
        if line.startswith(b"data:"):
            lines.append(line[6:] if line[5:6] == b" " else line[5:])
        elif line.startswith(b"error:"):
            state.error = f"StreamError: error event: {_excerpt(line[6:].strip())}"
            return
        # event:, id:, retry: and comments carry nothing we time
    if lines:
        state.on_event(lines[0] if len(lines) == 1 else b"\n".join(lines), arrived_ns)


def client_session(spec: LoadSpec, force_close: bool) -> aiohttp.ClientSession:
    """A session whose connections are timed (`connect_ms`); `force_close`: one per request."""
    return aiohttp.ClientSession(
        connector=timed_connector(limit=0, force_close=force_close),
        timeout=aiohttp.ClientTimeout(total=spec.timeout_s),
        read_bufsize=READ_BUFFER,
        trace_configs=[connection_tracing()],
    )


@dataclass
class Attempt:
    """How a request's last attempt went: its connection's timings, when it began, how many
    times it was sent again, and what stopped it (None: it ended normally)."""

    trace: ConnectionTrace
    start_ns: int
    resends: int
    failure: Exception | None


class PooledPoster:
    """What every request of an `openai` client shares, streamed or not: the pooled session and
    the fresh one for resends, the servers (replicas) and how each request picks one, the
    headers, and the resend of a request that met a pooled connection the server had closed."""

    accept = "application/json"

    def __init__(
        self,
        session: aiohttp.ClientSession,
        spec: LoadSpec,
        clock: Clock,
        fresh: aiohttp.ClientSession | None,
        url_of: Callable[[LoadSpec, str], str],
    ) -> None:
        self.session = session
        self.fresh = fresh or session
        """Where a request that met a closed pooled connection is sent again: a session that
        always connects anew, since the pool may hold more connections the server closed."""
        self.spec = spec
        self.clock = clock
        self.balancer = ReplicaBalancer.of(spec)
        """Which of the service's servers each request goes to (one without replicas)."""
        self.urls = [url_of(spec, base) for base in replica_bases(spec)]
        self.url = self.urls[0]
        self.headers = {"Content-Type": "application/json", "Accept": self.accept}
        if spec.api_key:
            self.headers["Authorization"] = f"Bearer {spec.api_key}"
        self.timeout = aiohttp.ClientTimeout(total=spec.timeout_s)

    def request_headers(self, record: dict[str, Any]) -> dict[str, str]:
        return {**self.headers, "X-Request-Id": f"{self.spec.process}-{record['request_id']}"}

    async def on_replica(
        self,
        record: dict[str, Any],
        send: Callable[[str], Awaitable[dict[str, Any]]],
        replica: int | None = None,
    ) -> dict[str, Any]:
        """`send` the request to the server the balancer picks (`replica`: to that one), named
        in its record, counted in flight until it ends."""
        replica = self.balancer.acquire(replica)
        record["replica"] = replica
        record["replica_address"] = self.balancer.addresses[replica]
        try:
            return await send(self.urls[replica])
        finally:
            self.balancer.release(replica)

    async def attempt(
        self,
        exchange: Callable[[aiohttp.ClientSession, ConnectionTrace], Awaitable[None]],
        answered: Callable[[], bool],
    ) -> Attempt:
        """Run `exchange` until it ends, sending it again (clock restarted) only when it met a
        pooled connection the server had closed before answering: the server never saw it."""
        resends = 0
        while True:
            trace = ConnectionTrace()
            start_ns = perf_counter_ns()
            try:
                await exchange(self.session if resends == 0 else self.fresh, trace)
            except Exception as err:
                stale = trace.reused and not answered() and closed_before_answer(err)
                if stale and resends < MAX_RESENDS:
                    resends += 1
                    continue
                return Attempt(trace, start_ns, resends, err)
            return Attempt(trace, start_ns, resends, None)


class StreamPoster(PooledPoster):
    """Posts request bodies and turns each streamed response into a record: what every
    streamed request shares, whatever decides its body."""

    accept = "text/event-stream"

    def __init__(
        self,
        session: aiohttp.ClientSession,
        spec: LoadSpec,
        clock: Clock,
        fresh: aiohttp.ClientSession | None = None,
    ) -> None:
        super().__init__(session, spec, clock, fresh, endpoint_url)
        self.chat = spec.api == "chat"

    async def post(
        self,
        record: dict[str, Any],
        scheduled_ns: int,
        body: bytes,
        prompt: Prompt,
        new_state: Callable[[], StreamState] | None = None,
        replica: int | None = None,
    ) -> dict[str, Any]:
        """Send one request to the server the balancer picks (`replica`: to that one) and fill
        its record. `new_state` makes the state each attempt reads into, where a caller keeps
        more of the stream than its timing (a conversation keeps the reply's text)."""

        async def send(url: str) -> dict[str, Any]:
            return await self._post(record, scheduled_ns, body, prompt, new_state, url)

        return await self.on_replica(record, send, replica)

    async def _post(
        self,
        record: dict[str, Any],
        scheduled_ns: int,
        body: bytes,
        prompt: Prompt,
        new_state: Callable[[], StreamState] | None,
        url: str,
    ) -> dict[str, Any]:
        headers = self.request_headers(record)
        state = StreamState(chat=self.chat)

        async def exchange(session: aiohttp.ClientSession, trace: ConnectionTrace) -> None:
            nonlocal state
            state = new_state() if new_state is not None else StreamState(chat=self.chat)
            await self._exchange(session, url, body, headers, state, trace)

        attempt = await self.attempt(exchange, lambda: state.status is not None)
        end_ns = perf_counter_ns()
        trace = attempt.trace
        if attempt.failure is not None:
            state.error = failure_text(attempt.failure, state, self.spec.timeout_s)
        if not state.error:
            if not state.done:
                state.error = "StreamError: stream ended without [DONE]"
            elif not state.events_ns:
                state.error = "EmptyResponse: no content events"
        # a request that never reached its write (no connection) counts from its hand-over
        sent_ns = trace.written_ns or attempt.start_ns
        waited_ns = sent_ns - scheduled_ns - trace.connect_ns
        record["queue_ms"] = max(0, waited_ns) / 1e6
        record["connect_ms"] = trace.connect_ns / 1e6
        record["resends"] = attempt.resends
        return self._fill(record, prompt, state, sent_ns, end_ns)

    async def _exchange(
        self,
        session: aiohttp.ClientSession,
        url: str,
        body: bytes,
        headers: dict[str, str],
        state: StreamState,
        trace: ConnectionTrace,
    ) -> None:
        async with session.post(
            url,
            data=body,
            headers=headers,
            timeout=self.timeout,
            trace_request_ctx=trace,
        ) as response:
            status = state.status = response.status
            content_type = response.headers.get("Content-Type", "")
            if status >= 400:
                text = await response.read()
                state.error = f"HTTPError: {status} {response.reason}: {_excerpt(text)}"
            elif not content_type.startswith("text/event-stream"):
                text = await response.read()
                state.error = (
                    f"StreamError: expected text/event-stream, got '{content_type}': "
                    f"{_excerpt(text)}"
                )
            else:
                await read_stream(response, state)

    def _fill(
        self,
        record: dict[str, Any],
        prompt: Prompt,
        state: StreamState,
        start_ns: int,
        end_ns: int,
    ) -> dict[str, Any]:
        events = state.events_ns
        wall = self.clock.wall
        record["send_ts"] = wall(start_ns)
        record["end_ts"] = wall(end_ns)
        record["http_status"] = state.status
        record["error"] = state.error
        record["content_events"] = len(events)
        usage = state.usage
        output_tokens = _int_or_none(usage.get("completion_tokens")) if usage else None
        input_tokens = _int_or_none(usage.get("prompt_tokens")) if usage else None
        record["reasoning_tokens"] = reasoning_tokens(usage, state.reasoning_events)
        record["cached_tokens"] = cached_tokens(usage, state.cache_n)
        record["prompt_tokens_exact"] = prompt.exact
        record["tokens_estimated"] = output_tokens is None or input_tokens is None
        if output_tokens is None:
            output_tokens = len(events) or None
        if input_tokens is None:
            input_tokens = prompt.input_tokens
        record["output_tokens"] = output_tokens
        record["input_tokens"] = input_tokens
        if events:
            ttft_ms = (events[0] - start_ns) / 1e6
            e2el_ms = (events[-1] - start_ns) / 1e6
            record["first_token_ts"] = wall(events[0])
            record["ttft_ms"] = ttft_ms
            record["e2el_ms"] = e2el_ms
            record["itl_ms"] = [(b - a) / 1e6 for a, b in itertools.pairwise(events)]
            if state.answer_ns:
                record["ttfo_ms"] = (state.answer_ns - start_ns) / 1e6
            if output_tokens is not None and output_tokens > 1:
                record["tpot_ms"] = (e2el_ms - ttft_ms) / (output_tokens - 1)
        return record


class OpenAIStreamer(StreamPoster):
    """Sends the pool's prompts in turn, each request's body encoded before the load."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        spec: LoadSpec,
        prompts: list[Prompt],
        clock: Clock,
        fresh: aiohttp.ClientSession | None = None,
    ) -> None:
        if not prompts:
            raise ValueError("no prompts to send")
        super().__init__(session, spec, clock, fresh)
        self.prompts = prompts
        self.mix = ModelMix(spec)
        options = RequestOptions.of(spec)
        self.bodies = [
            [request_body(spec, p, name, options) for p in prompts] for name in self.mix.names
        ]

    async def send(self, record: dict[str, Any], scheduled_ns: int) -> dict[str, Any]:
        index = record["request_id"] % len(self.prompts)
        model = self.mix.index(record["request_id"])
        record["model"] = self.mix.names[model]
        return await self.post(record, scheduled_ns, self.bodies[model][index], self.prompts[index])


async def run_openai(spec: LoadSpec) -> dict[str, Any]:
    """One process of an `openai` client: build the prompts, then drive the load."""
    if spec.api not in APIS:
        raise ValueError(f"unknown api '{spec.api}' (expected one of {', '.join(APIS)})")
    if spec.connections not in CONNECTIONS:
        raise ValueError(
            f"unknown connections '{spec.connections}' (expected one of {', '.join(CONNECTIONS)})"
        )
    if spec.api == "embeddings":
        # deferred: the embeddings loop builds on this module's connection handling
        from pytest_aifactory.loadgen.embeddings import run_embeddings

        return await run_embeddings(spec)
    driver = LoadDriver(spec)
    async with (
        client_session(spec, force_close=spec.connections == "per_request") as session,
        client_session(spec, force_close=True) as fresh,
    ):
        if spec.dataset.kind == "conversation":
            # deferred: only a conversation's client keeps its sessions' histories
            from pytest_aifactory.loadgen.conversation import run_conversations

            return await run_conversations(spec, driver, session, fresh)

        async def prepare() -> SendFn:
            prompts = await build_prompts(session, spec)
            if spec.mode == "replay" and spec.dataset.kind == "trace":  # prompts carry instants
                driver.replay([p.at_s for p in prompts if p.at_s is not None])
            return OpenAIStreamer(session, spec, prompts, driver.clock, fresh=fresh).send

        return await driver.run(prepare)
