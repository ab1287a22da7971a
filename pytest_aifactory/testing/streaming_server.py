"""An OpenAI-compatible streaming server with known timing and chosen faults, for client tests.

It runs in a thread with its own event loop, bound to 127.0.0.1 on a free port, so a test can
drive the real client (in `asyncio.run` or `run_load`) against it. Its tokenizer splits text into
pieces of at most four characters (with a leading space), so detokenizing and re-tokenizing
random ids can merge pieces, as real BPE tokenizers do. It can answer as a reasoning model does
(its first tokens as `reasoning_content` or `reasoning`) and, given a key, refuse every call
that does not send it, as a keyed llama-server or vLLM does. Asked to, it says how many of a
prompt's tokens a prefix cache held, as vLLM and llama.cpp do in their usage or timings.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

FAULTS = (
    "http500",
    "invalid_json",
    "truncated",
    "cut",
    "content_type",
    "hang",
    "empty",
    "error_event",
    "garbage",
)

_PIECE = re.compile(r" ?\S{1,4}|\s")


@dataclass
class Behaviour:
    """How the server answers; tests change it between runs."""

    ttft_s: float = 0.02
    gap_s: float = 0.005
    tokens: int | None = None
    """Tokens generated per request; None: the request's max_tokens."""
    tokens_per_event: int = 1
    usage: bool = True
    fault: str | None = None
    role_delta: bool = True
    """Chat: send a role-only delta at once, before the first content."""
    tokenizer: str | None = "llama"
    """Shape of /tokenize and /detokenize: llama, vllm, or None for no such endpoints."""
    hang_s: float = 3.0
    close_after_stream: bool = False
    """Close the connection after each stream while advertising keep-alive (llama.cpp does)."""
    close_on_reuse: bool = False
    """Close a kept-alive connection, unanswered, when a second request arrives on it: the
    moment a client finds a pooled connection closed, made certain rather than left to a race
    between the server's close and the client's next write."""
    embedding_dim: int = 8
    """Length of each vector /v1/embeddings answers."""
    reasoning_tokens: int = 0
    """The first this many generated tokens are reasoning, sent in `reasoning_field`."""
    reasoning_field: str = "reasoning_content"
    reasoning_usage: bool = False
    """Report reasoning tokens in `usage.completion_tokens_details`."""
    api_key: str | None = None
    """Answer 401 to any call without `Authorization: Bearer <api_key>`."""
    prefix_cache: str | None = None
    """Say how many prompt tokens a cache of every prompt seen so far held (the longest
    shared opening): `usage` in `usage.prompt_tokens_details.cached_tokens` (vLLM, recent
    llama.cpp), `timings` in the last chunk's `timings.cache_n` (llama.cpp); None: say nothing."""


@dataclass
class Seen:
    """What the server received, for assertions."""

    bodies: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    refused: int = 0
    """Calls answered 401 for want of the key."""
    closed_on_reuse: int = 0
    """Requests met with a closed connection (`close_on_reuse`), never answered."""


class Vocabulary:
    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.pieces: list[str] = []

    def encode(self, text: str) -> list[int]:
        out = []
        for piece in _PIECE.findall(text):
            if piece not in self.ids:
                self.ids[piece] = len(self.pieces)
                self.pieces.append(piece)
            out.append(self.ids[piece])
        return out

    def decode(self, ids: list[int]) -> str:
        return "".join(self.pieces[i] for i in ids if 0 <= i < len(self.pieces))


class StreamingServer:
    """`with StreamingServer(ttft_s=0.1) as server: ... server.url ...`; on a free loopback
    port unless `host` and `port` say where (as a service of a run is told)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **behaviour: Any) -> None:
        self.host = host
        self.port = port
        self.behaviour = Behaviour(**behaviour)
        self.seen = Seen()
        self.vocabulary = Vocabulary()
        self.prompts_seen: list[list[int]] = []
        """Every generation prompt's tokens, in arrival order (`prefix_cache`)."""
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._answered: weakref.WeakSet[asyncio.BaseTransport] = weakref.WeakSet()
        """Connections that carried a request (`close_on_reuse`)."""

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> StreamingServer:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="streaming-server", daemon=True
        )
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    async def _start(self) -> None:
        @web.middleware
        async def keyed(request: web.Request, handler: Any) -> web.StreamResponse:
            key = self.behaviour.api_key
            if key and request.headers.get("Authorization") != f"Bearer {key}":
                self.seen.refused += 1
                error = {"message": "Invalid API Key", "type": "authentication_error"}
                return web.json_response({"error": error}, status=401)
            response: web.StreamResponse = await handler(request)
            return response

        app = web.Application(middlewares=[keyed])
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_post("/tokenize", self._tokenize)
        app.router.add_post("/detokenize", self._detokenize)
        self._runner = web.AppRunner(
            app, handle_signals=False, handler_cancellation=True, shutdown_timeout=0.2
        )
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if self.port:  # a chosen port may still hold its last user's closed connections
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        site = web.SockSite(self._runner, sock)
        await site.start()
        host, port = sock.getsockname()[:2]
        self.url = f"http://{host}:{port}"

    def stop(self) -> None:
        if self._loop is None:
            return
        if self._runner is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._loop.close()
        self._loop = None

    def __enter__(self) -> StreamingServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _closed_on_reuse(self, request: web.Request) -> bool:
        """With `close_on_reuse`, close a connection that carries its second request, unanswered,
        as a server closing kept-alive connections without saying so."""
        transport = request.transport
        if not self.behaviour.close_on_reuse or transport is None:
            return False
        if transport in self._answered:
            self.seen.closed_on_reuse += 1
            transport.close()
            return True
        self._answered.add(transport)
        return False

    # -- tokenizer -----------------------------------------------------------------------------

    async def _tokenize(self, request: web.Request) -> web.Response:
        if self._closed_on_reuse(request):
            return web.Response()
        body = await request.json()
        shape = self.behaviour.tokenizer
        if shape == "llama" and "content" in body:
            return web.json_response({"tokens": self.vocabulary.encode(body["content"])})
        if shape == "vllm" and "prompt" in body:
            tokens = self.vocabulary.encode(body["prompt"])
            return web.json_response({"tokens": tokens, "count": len(tokens)})
        if shape is None:
            raise web.HTTPNotFound()
        return web.json_response({"error": "bad request"}, status=400)

    async def _detokenize(self, request: web.Request) -> web.Response:
        if self._closed_on_reuse(request):
            return web.Response()
        body = await request.json()
        shape = self.behaviour.tokenizer
        if shape is None:
            raise web.HTTPNotFound()
        text = self.vocabulary.decode(body.get("tokens", []))
        key = "content" if shape == "llama" else "prompt"
        return web.json_response({key: text})

    # -- embeddings ----------------------------------------------------------------------------

    async def _embeddings(self, request: web.Request) -> web.Response:
        """One vector of `embedding_dim` numbers per input, after `ttft_s`; usage counts the
        inputs' tokens. Faults: `http500`, `invalid_json`, `empty` (one vector short)."""
        body = await request.json()
        self.seen.bodies.append(body)
        self.seen.headers.append(dict(request.headers))
        await asyncio.sleep(self.behaviour.ttft_s)
        fault = self.behaviour.fault
        if fault == "http500":
            return web.json_response({"error": "boom"}, status=500)
        if fault == "invalid_json":
            return web.Response(text="{not json", content_type="application/json")
        inputs = body.get("input")
        texts = [inputs] if isinstance(inputs, str) else list(inputs or [])
        dim = self.behaviour.embedding_dim
        data = [
            {"object": "embedding", "index": i, "embedding": [0.5] * dim}
            for i in range(len(texts) - (1 if fault == "empty" else 0))
        ]
        tokens = sum(len(self.vocabulary.encode(str(text))) for text in texts)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return web.json_response(
            {"object": "list", "model": body.get("model"), "data": data, "usage": usage}
        )

    # -- generation ----------------------------------------------------------------------------

    def _cached(self, prompt_ids: list[int]) -> int:
        """The tokens of the longest opening this prompt shares with one seen before: what a
        prefix cache that never evicts would hold; the prompt is then seen."""
        best = 0
        for seen in self.prompts_seen:
            shared = 0
            for a, b in zip(seen, prompt_ids, strict=False):
                if a != b:
                    break
                shared += 1
            best = max(best, shared)
        self.prompts_seen.append(prompt_ids)
        return best

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    def _chunk(
        self, chat: bool, text: str | None, role: bool = False, reasoning: str | None = None
    ) -> dict[str, Any]:
        """A chat or completions chunk; with `reasoning`, `text` goes in that field instead."""
        if chat:
            delta: dict[str, Any] = {"role": "assistant"} if role else {"content": text}
            if reasoning:
                delta = {reasoning: text}
            choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": None}
        else:
            choice = {"index": 0, "text": text, "finish_reason": None}
            if reasoning:
                choice.update({"text": "", reasoning: text})
        return {"id": "x", "object": "chunk", "choices": [choice]}

    async def _generate(self, request: web.Request, chat: bool) -> web.StreamResponse:
        seen = self.seen
        if self._closed_on_reuse(request):
            return web.Response()  # written to nobody: the connection is gone
        seen.in_flight += 1
        seen.max_in_flight = max(seen.max_in_flight, seen.in_flight)
        try:
            body = await request.json()
            seen.bodies.append(body)
            seen.headers.append(dict(request.headers))
            return await self._answer(request, body, chat)
        finally:
            seen.in_flight -= 1

    async def _answer(
        self, request: web.Request, body: dict[str, Any], chat: bool
    ) -> web.StreamResponse:
        b = self.behaviour
        fault = b.fault
        if fault == "hang":
            await asyncio.sleep(b.hang_s)
        if fault == "http500":
            return web.Response(status=500, text="engine exploded " * 40)
        if fault == "content_type":
            return web.json_response({"choices": [{"text": "not streamed"}]})
        tokens = b.tokens if b.tokens is not None else int(body.get("max_tokens", 16))
        # a chat's prompt is all of it, as a server's template joins it (multi-turn histories)
        prompt = "\n".join(m["content"] for m in body["messages"]) if chat else body["prompt"]
        prompt_ids = self.vocabulary.encode(prompt)
        cached = self._cached(prompt_ids)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)

        async def event(data: dict[str, Any] | str) -> None:
            text = data if isinstance(data, str) else json.dumps(data)
            await response.write(f"data: {text}\n\n".encode())

        if chat and b.role_delta:
            await event(self._chunk(chat, None, role=True))
        await asyncio.sleep(b.ttft_s)
        if fault == "garbage":
            await response.write(b"\x00\xffnot an event stream\n\n" * 3)
            await response.write_eof()
            return response
        if fault == "error_event":
            await event({"error": {"message": "model overloaded", "code": 503}})
            await event("[DONE]")
            await response.write_eof()
            return response
        sent = 0
        thinking = min(max(0, b.reasoning_tokens), tokens)
        index = 0
        while fault != "empty" and sent < tokens:
            if index:
                await asyncio.sleep(b.gap_s)
            reasoning = b.reasoning_field if sent < thinking else None
            count = min(b.tokens_per_event, (thinking if reasoning else tokens) - sent)
            text = "".join(f" t{sent + k}" for k in range(count))
            await event(self._chunk(chat, text, reasoning=reasoning))
            sent += count
            if fault == "invalid_json" and index == 0:
                await response.write(b'data: {"choices": [ oops\n\n')
            if fault == "cut" and index == 1:
                assert request.transport is not None
                request.transport.close()
                return response
            index += 1
        if fault == "truncated":
            await response.write_eof()
            return response
        if b.usage:
            prompt_tokens = len(prompt_ids)
            usage: dict[str, Any] = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": sent,
                "total_tokens": prompt_tokens + sent,
            }
            if b.reasoning_usage:
                usage["completion_tokens_details"] = {"reasoning_tokens": thinking}
            last: dict[str, Any] = {"id": "x", "choices": [], "usage": usage}
            if b.prefix_cache == "usage":
                usage["prompt_tokens_details"] = {"cached_tokens": cached}
            elif b.prefix_cache == "timings":
                last["timings"] = {"cache_n": cached, "prompt_n": prompt_tokens - cached}
            await event(last)
        await event("[DONE]")
        await response.write_eof()
        if b.close_after_stream and request.transport is not None:
            request.transport.close()
        return response
