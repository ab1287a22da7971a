"""A token-timing server: the ground truth a load generator's clock is checked against.

    python -m pytest_aifactory.testing.token_server --ttft-ms 20 --gap-ms 5 --jitter-ms 1

OpenAI-compatible streaming `/v1/completions` and `/v1/chat/completions` whose events leave at
configured times (time to first event, gap between events, seeded jitter, tokens per event),
followed by a usage chunk and `[DONE]`; optionally as a reasoning model answers, its first
tokens streamed as reasoning (`reasoning_content` or `reasoning`) before the answer's; optionally
closing each connection after its stream while announcing keep-alive, as llama-server does.
For every request it keeps when the request arrived and when each content event was handed to
the kernel (just before the write), on the system-wide monotonic clock (the one
`time.perf_counter_ns` reads in every process), keyed by the request's `X-Request-Id` header;
`GET /truth` returns them, `POST /reset` forgets them, `POST /config` changes the timing,
`GET /stats` says how late the server itself was against its own schedule and how much CPU it
used, so a run can show that the server was not the bottleneck.

It speaks just enough HTTP/1.1 (keep-alive, chunked responses) on raw asyncio protocols: an HTTP
framework would cost more per event than the client it is meant to measure. Events due at the
same instant go out in one write; with zero delays a whole answer is one write.

`TokenServer` runs it as a child process (so it never shares an interpreter lock with the client
under test) and reads its truth back.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from time import perf_counter_ns
from typing import Any

try:
    import orjson

    _loads: Callable[[bytes], Any] = orjson.loads
except ImportError:  # pragma: no cover - the standard parser is a fine fallback
    _loads = json.loads

_MAX_HEAD = 64 * 1024


@dataclass
class Timing:
    """When events leave. Delays are in milliseconds from the request's arrival."""

    ttft_ms: float = 0.0
    gap_ms: float = 0.0
    jitter_ms: float = 0.0
    """Each delay is moved by a seeded uniform amount in [-jitter, +jitter] (never below 0)."""
    tokens_per_event: int = 1
    tokens: int | None = None
    """Tokens per answer; None: the request's `max_tokens`."""
    usage: bool = True
    seed: int = 0
    close_after_stream: bool = False
    """Close the connection after each stream while announcing keep-alive, as llama-server
    does: a client's next request on that pooled connection finds it closed."""
    close_on_reuse: bool = False
    """Close a kept-alive connection at its second request, unanswered, as a server whose
    keep-alive timeout ran out in between would: every reuse of a pooled connection meets a
    closed one, however soon the client reuses it."""
    reasoning_tokens: int = 0
    """The first this many tokens of each answer are reasoning (all of them if the answer is
    shorter), streamed in `reasoning_field` of the chat delta or the completions choice."""
    reasoning_field: str = "reasoning_content"
    """`reasoning_content` (DeepSeek-R1 style, llama.cpp) or `reasoning` (gpt-oss, newer vLLM)."""
    reasoning_usage: bool = False
    """Report the reasoning tokens in `usage.completion_tokens_details`, as OpenAI does."""

    def update(self, changes: dict[str, Any]) -> None:
        names = {f.name for f in fields(self)}
        unknown = set(changes) - names
        if unknown:
            raise ValueError(f"unknown timing fields: {', '.join(sorted(unknown))}")
        for name, value in changes.items():
            setattr(self, name, value)


@dataclass
class Truth:
    """What the server did for one request (perf_counter_ns instants)."""

    request_id: str
    received_ns: int
    events_ns: list[int] = field(default_factory=list)
    tokens: int = 0
    reasoning_events: int = 0
    """The first this many of `events_ns` carried reasoning; the next one is the first answer
    token's."""


class Server:
    """State shared by all connections: timing, truth and the server's own lateness."""

    def __init__(self, timing: Timing) -> None:
        self.timing = timing
        self.rng = random.Random(timing.seed)
        self.truth: list[Truth] = []
        self.late_ns: list[int] = []
        self.counter = 0
        self.cpu_at_reset = time.process_time()
        self.wall_at_reset = perf_counter_ns()

    def reset(self) -> None:
        self.truth.clear()
        self.late_ns.clear()
        self.rng = random.Random(self.timing.seed)
        self.cpu_at_reset = time.process_time()
        self.wall_at_reset = perf_counter_ns()

    def delay_ns(self, ms: float) -> int:
        jitter = self.timing.jitter_ms
        if jitter:
            ms = max(0.0, ms + self.rng.uniform(-jitter, jitter))
        return int(ms * 1e6)

    def stats(self) -> dict[str, Any]:
        late = sorted(self.late_ns)

        def pct(q: float) -> float | None:
            return late[min(len(late) - 1, int(q * len(late)))] / 1e6 if late else None

        wall_s = (perf_counter_ns() - self.wall_at_reset) / 1e9
        cpu_s = time.process_time() - self.cpu_at_reset
        return {
            "requests": len(self.truth),
            "events": sum(len(t.events_ns) for t in self.truth),
            "late_ms_p50": pct(0.5),
            "late_ms_p99": pct(0.99),
            "late_ms_max": late[-1] / 1e6 if late else None,
            "cpu_s": cpu_s,
            "wall_s": wall_s,
            "cpu_percent": 100 * cpu_s / wall_s if wall_s > 0 else None,
            "max_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        }


def _chunk_prefix(chat: bool, request_id: str, reasoning: str = "") -> tuple[bytes, bytes]:
    """The bytes of a content event before and after its text; of a reasoning event when
    `reasoning` names the field that carries it."""
    rid = json.dumps(request_id)
    kind = "chat.completion.chunk" if chat else "text_completion"
    if reasoning:
        name = json.dumps(reasoning)
        opening = f'{{"index":0,"delta":{{{name}:"' if chat else f'{{"index":0,"text":"",{name}:"'
    else:
        opening = '{"index":0,"delta":{"content":"' if chat else '{"index":0,"text":"'
    head = f'{{"id":{rid},"object":"{kind}","created":0,"model":"token-server","choices":[{opening}'
    tail = b'"},"finish_reason":null}]}\n\n' if chat else b'","finish_reason":null}]}\n\n'
    return b"data: " + head.encode(), tail


def _frame(data: bytes) -> bytes:
    """One HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(data), data)


class Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: requests one after the other, each answered as a stream."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.first_byte_ns = 0
        self.busy = False
        self.closed = False
        self.answered = 0
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()

    def data_received(self, data: bytes) -> None:
        if not self.buffer:
            self.first_byte_ns = perf_counter_ns()
        self.buffer += data
        if not self.busy:
            self._next_request()

    def _next_request(self) -> None:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > _MAX_HEAD:
                self._reply(431, b"header too large", keep=False)
            return
        head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        try:
            method, path, version = head[0].split(" ", 2)
        except ValueError:
            self._reply(400, b"bad request line", keep=False)
            return
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0") or 0)
        if len(self.buffer) < end + 4 + length:
            return
        body = bytes(self.buffer[end + 4 : end + 4 + length])
        del self.buffer[: end + 4 + length]
        received_ns = self.first_byte_ns
        self.first_byte_ns = perf_counter_ns() if self.buffer else 0
        keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        if self.answered and self.server.timing.close_on_reuse and self.transport is not None:
            self.transport.close()
            return
        self.answered += 1
        self.busy = True
        self._route(method, path.split("?", 1)[0], headers, body, received_ns, keep)

    def _route(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        body: bytes,
        received_ns: int,
        keep: bool,
    ) -> None:
        server = self.server
        if method == "POST" and path in ("/v1/completions", "/v1/chat/completions"):
            self._stream(path.endswith("chat/completions"), headers, body, received_ns, keep)
        elif method == "GET" and path == "/truth":
            truth = [asdict(t) for t in server.truth]
            anchor = {"anchor_ns": perf_counter_ns(), "anchor_wall": time.time()}
            self._json({**anchor, "requests": truth}, keep)
        elif method == "GET" and path == "/stats":
            self._json(server.stats(), keep)
        elif method == "GET" and path in ("/health", "/v1/models"):
            self._json({"status": "ok", "data": [{"id": "token-server", "object": "model"}]}, keep)
        elif method == "POST" and path == "/reset":
            server.reset()
            self._json({"ok": True}, keep)
        elif method == "POST" and path == "/config":
            try:
                server.timing.update(_loads(body) if body else {})
            except (ValueError, TypeError) as err:
                self._reply(400, str(err).encode(), keep)
                return
            server.rng = random.Random(server.timing.seed)
            self._json(asdict(server.timing), keep)
        else:
            self._reply(404, b"not found", keep)

    # -- plain answers ------------------------------------------------------------------------

    def _json(self, data: Any, keep: bool) -> None:
        self._reply(200, json.dumps(data).encode(), keep, "application/json")

    def _reply(self, status: int, body: bytes, keep: bool, kind: str = "text/plain") -> None:
        assert self.transport is not None
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 431: "Too Large"}[status]
        head = (
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: {kind}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: {'keep-alive' if keep else 'close'}"
            "\r\n\r\n"
        )
        self.transport.write(head.encode() + body)
        self._done(keep)

    def _done(self, keep: bool) -> None:
        self.busy = False
        if self.closed or self.transport is None:
            return
        if not keep:
            self.transport.close()
            return
        if self.buffer:
            self._next_request()

    # -- streams ------------------------------------------------------------------------------

    def _stream(
        self, chat: bool, headers: dict[str, str], body: bytes, received_ns: int, keep: bool
    ) -> None:
        server = self.server
        timing = server.timing
        try:
            request = _loads(body) if body else {}
        except ValueError:
            self._reply(400, b"invalid JSON body", keep)
            return
        server.counter += 1
        request_id = headers.get("x-request-id") or f"req-{server.counter}"
        tokens = timing.tokens if timing.tokens is not None else int(request.get("max_tokens", 16))
        per_event = max(1, timing.tokens_per_event)
        reasoning = min(max(0, timing.reasoning_tokens), tokens)
        thinking = _split(reasoning, per_event)
        counts = thinking + _split(tokens - reasoning, per_event)
        due: list[int] = []
        at = received_ns + server.delay_ns(timing.ttft_ms)
        for index in range(len(counts)):
            if index:
                at += server.delay_ns(timing.gap_ms)
            due.append(at)
        truth = Truth(
            request_id=request_id,
            received_ns=received_ns,
            tokens=tokens,
            reasoning_events=len(thinking),
        )
        server.truth.append(truth)
        head, tail = _chunk_prefix(chat, request_id)
        thinking_head, _ = _chunk_prefix(chat, request_id, timing.reasoning_field)
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: "
            + (b"keep-alive" if keep else b"close")
            + b"\r\n\r\n"
        )
        prompt_tokens = len(str(request.get("prompt") or request.get("messages") or "").split())
        details = (
            b',"completion_tokens_details":{"reasoning_tokens":%d}' % reasoning
            if timing.reasoning_usage
            else b""
        )
        usage = (
            b'data: {"id":"x","object":"text_completion","created":0,"model":"token-server",'
            b'"choices":[],"usage":{"prompt_tokens":%d,"completion_tokens":%d,'
            b'"total_tokens":%d%s}}\n\n' % (prompt_tokens, tokens, prompt_tokens + tokens, details)
            if timing.usage
            else b""
        )
        heads = (thinking_head, head, len(thinking))
        stream = _Stream(self, truth, due, counts, heads, tail, usage, keep)
        stream.step()


def _split(tokens: int, per_event: int) -> list[int]:
    """Tokens per event for `tokens` tokens sent `per_event` at a time."""
    return [min(per_event, tokens - i) for i in range(0, tokens, per_event)]


class _Stream:
    """The events of one answer, each written when due; late ones are written together."""

    __slots__ = (
        "conn",
        "counts",
        "due",
        "head",
        "keep",
        "next",
        "tail",
        "thinking",
        "thinking_head",
        "truth",
        "usage",
    )

    def __init__(
        self,
        conn: Connection,
        truth: Truth,
        due: list[int],
        counts: list[int],
        heads: tuple[bytes, bytes, int],
        tail: bytes,
        usage: bytes,
        keep: bool,
    ) -> None:
        """`heads`: a reasoning event's opening bytes, an answer event's, and how many events
        are reasoning (they come first)."""
        self.conn = conn
        self.truth = truth
        self.due = due
        self.counts = counts
        self.thinking_head, self.head, self.thinking = heads
        self.tail = tail
        self.usage = usage
        self.keep = keep
        self.next = 0

    def step(self) -> None:
        conn = self.conn
        conn.timer = None
        if conn.closed or conn.transport is None:
            return
        now = perf_counter_ns()
        due = self.due
        parts: list[bytes] = []
        start = self.next
        while self.next < len(due) and due[self.next] <= now:
            head = self.thinking_head if self.next < self.thinking else self.head
            parts.append(head + b" t" * self.counts[self.next] + self.tail)
            self.next += 1
        finished = self.next == len(due)
        if finished:
            parts.append(self.usage + b"data: [DONE]\n\n")
        if parts:
            payload = _frame(b"".join(parts)) + (b"0\r\n\r\n" if finished else b"")
            sent = perf_counter_ns()  # before the write: a reader may wake before it returns
            conn.transport.write(payload)
            late = conn.server.late_ns
            for index in range(start, self.next):
                self.truth.events_ns.append(sent)
                late.append(sent - due[index])
        if finished:
            conn._done(self.keep and not conn.server.timing.close_after_stream)
            return
        wait_s = (due[self.next] - perf_counter_ns()) / 1e9
        conn.timer = conn.loop.call_later(max(0.0, wait_s), self.step)


async def serve(timing: Timing, host: str, port: int, ready: Callable[[int], None]) -> None:
    server = Server(timing)
    loop = asyncio.get_running_loop()
    listener = await loop.create_server(lambda: Connection(server), host, port, backlog=4096)
    ready(listener.sockets[0].getsockname()[1])
    async with listener:
        await listener.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ttft-ms", type=float, default=0.0)
    parser.add_argument("--gap-ms", type=float, default=0.0)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--tokens-per-event", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--close-after-stream", action="store_true")
    parser.add_argument("--reasoning-tokens", type=int, default=0)
    parser.add_argument("--reasoning-field", default="reasoning_content")
    parser.add_argument("--reasoning-usage", action="store_true")
    parser.add_argument("--no-uvloop", action="store_true")
    args = parser.parse_args(argv)
    timing = Timing(
        ttft_ms=args.ttft_ms,
        gap_ms=args.gap_ms,
        jitter_ms=args.jitter_ms,
        tokens_per_event=args.tokens_per_event,
        tokens=args.tokens,
        seed=args.seed,
        close_after_stream=args.close_after_stream,
        reasoning_tokens=args.reasoning_tokens,
        reasoning_field=args.reasoning_field,
        reasoning_usage=args.reasoning_usage,
    )

    def ready(port: int) -> None:
        print(f"listening on http://{args.host}:{port}", flush=True)

    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if not args.no_uvloop:
        with contextlib.suppress(ImportError):
            # deferred: only the command line's server needs uvloop, and --no-uvloop skips it
            import uvloop

            factory = uvloop.new_event_loop
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve(timing, args.host, args.port, ready))


class TokenServer:
    """`with TokenServer(ttft_ms=20, gap_ms=5) as server: ... server.url ... server.truth()`

    The server runs in a child process bound to 127.0.0.1 on a free port.
    """

    def __init__(self, python: str = sys.executable, uvloop: bool = True, **timing: Any) -> None:
        self.timing = timing
        self.python = python
        self.uvloop = uvloop
        self.url = ""
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> TokenServer:
        args = [self.python, str(Path(__file__).resolve())]
        for name, value in self.timing.items():
            if value is True:
                args.append(f"--{name.replace('_', '-')}")
            elif value is not None and value is not False:
                args += [f"--{name.replace('_', '-')}", str(value)]
        if not self.uvloop:
            args.append("--no-uvloop")
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"token server did not start: {line!r}")
        self.url = line.split("listening on ", 1)[1].strip()
        return self

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.process = None

    def __enter__(self) -> TokenServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def _call(self, method: str, path: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
        """The server's JSON answer (every endpoint answers an object)."""
        body = json.dumps(data).encode() if data is not None else None
        request = urllib.request.Request(self.url + path, data=body, method=method)
        with urllib.request.urlopen(request, timeout=30) as response:
            answer: dict[str, Any] = json.loads(response.read())
            return answer

    def truth(self) -> dict[str, Any]:
        """{"anchor_ns", "anchor_wall", "requests": [{request_id, received_ns, events_ns}]}"""
        return self._call("GET", "/truth")

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "/stats")

    def reset(self) -> None:
        self._call("POST", "/reset", {})

    def configure(self, **timing: Any) -> dict[str, Any]:
        return self._call("POST", "/config", timing)


def truth_wall(truth: dict[str, Any]) -> Callable[[int], float]:
    """perf_counter_ns instants of the server as wall-clock seconds (the clients' `*_ts`)."""
    anchor_ns = int(truth["anchor_ns"])
    anchor_wall = float(truth["anchor_wall"])
    return lambda ns: anchor_wall + (ns - anchor_ns) / 1e9


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
