"""Multi-turn sessions of an `openai` chat client (`conversation` dataset).

Each turn sends the whole chat so far: the session's system message, every earlier user
message with the server's own answer to it, then the new user message, as vLLM's multi-turn
benchmark does (the recorded answers only set how many tokens a turn asks for). So the answer
text is kept, which no other dataset needs: only these requests read it from the stream
(`ReplyState`). A session whose turn failed sends nothing more; its history would lack that
answer. The load driver's session loop decides when each turn goes (`runner.LoadDriver`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import aiohttp

from pytest_aifactory.loadgen.datasets import Prompt, ServerTokenizer, TokenizerRefused
from pytest_aifactory.loadgen.llm_datasets.conversation import Conversation, conversation_pool
from pytest_aifactory.loadgen.openai import StreamPoster, StreamState, request_body
from pytest_aifactory.loadgen.request_options import ModelMix, RequestOptions
from pytest_aifactory.loadgen.runner import LoadDriver
from pytest_aifactory.loadgen.sessions import Session, Sessions
from pytest_aifactory.loadgen.spec import LoadSpec

POOL_SIZE = 256
"""Distinct sessions per process; a load that opens more goes round them again."""


@dataclass
class ReplyState(StreamState):
    """A stream's state that also keeps the answer's text (not the reasoning: a chat's
    history carries what the assistant said)."""

    parts: list[str] = field(default_factory=list)

    def _on_text(self, part: dict[str, Any], arrived_ns: int) -> None:
        super()._on_text(part, arrived_ns)
        text = part.get("content")
        if isinstance(text, str) and text:
            self.parts.append(text)

    @property
    def text(self) -> str:
        return "".join(self.parts)


class ConversationRun(Session):
    """One session's history and its turns, sent over the client's shared connections."""

    def __init__(self, owner: ConversationSessions, plan: Conversation, model: str) -> None:
        self.owner = owner
        self.plan = plan
        self.model = model
        self.turns = len(plan.turns)
        self.history: tuple[dict[str, str], ...] = (
            ({"role": "system", "content": plan.system},) if plan.system else ()
        )
        self.context_tokens = plan.system_tokens
        """The history's tokens, estimated: the messages' counts and the answers' usage."""
        self.replica: int | None = None
        """The server of its first turn, where every later turn goes (its history is cached
        there); None until the first turn is sent."""

    def think_s(self, turn: int) -> float:
        return self.plan.turns[turn].think_s

    async def send(self, record: dict[str, Any], scheduled_ns: int) -> dict[str, Any]:
        turn = self.plan.turns[record["turn"]]
        messages = (*self.history, {"role": "user", "content": turn.text})
        prompt = Prompt(
            turn.text,
            self.context_tokens + turn.tokens,
            False,  # the chat template and the server's answers are counted by its usage only
            turn.output_tokens,
            messages,
        )
        owner = self.owner
        body = request_body(owner.spec, prompt, self.model, owner.options)
        states: list[ReplyState] = []

        def new_state() -> StreamState:
            states.append(ReplyState(chat=True))
            return states[-1]

        record["model"] = self.model
        record = await owner.poster.post(
            record, scheduled_ns, body, prompt, new_state, replica=self.replica
        )
        self.replica = record["replica"]
        if not record.get("error") and states:
            self.history = (*messages, {"role": "assistant", "content": states[-1].text})
            self.context_tokens += turn.tokens + int(record.get("output_tokens") or 0)
        return record


class ConversationSessions(Sessions):
    """A process's pool of planned sessions, opened in turn; each session names one model
    (of a mix: drawn per session, since a chat continues with the model that answered it)."""

    def __init__(self, poster: StreamPoster, spec: LoadSpec, pool: list[Conversation]) -> None:
        if not pool:
            raise ValueError("no conversations to send")
        self.poster = poster
        self.spec = spec
        self.pool = pool
        self.mix = ModelMix(spec)
        self.options = RequestOptions.of(spec)

    def open(self, index: int) -> ConversationRun:
        model = self.mix.names[self.mix.index(index)]
        return ConversationRun(self, self.pool[index % len(self.pool)], model)


def pool_size(spec: LoadSpec) -> int:
    """Sessions to plan: no more than the load can open (each sends at least one turn)."""
    if spec.requests is None:
        return POOL_SIZE
    return max(1, min(spec.requests + spec.warmup_requests, POOL_SIZE))


async def build_sessions(session: aiohttp.ClientSession, spec: LoadSpec) -> list[Conversation]:
    """The process's sessions, planned before the load starts (not timed)."""
    tokenizer = ServerTokenizer(session, spec.base_url, spec.model, spec.api_key)
    try:
        return await conversation_pool(tokenizer, spec, pool_size(spec))
    except* TokenizerRefused as refused:
        raise refused.exceptions[0] from None


async def run_conversations(
    spec: LoadSpec,
    driver: LoadDriver,
    session: aiohttp.ClientSession,
    fresh: aiohttp.ClientSession,
) -> dict[str, Any]:
    """One process of an `openai` chat client sending multi-turn sessions."""
    if spec.api != "chat":
        raise ValueError(f"a conversation dataset is sent with api: chat, not '{spec.api}'")

    async def prepare() -> Sessions:
        pool = await build_sessions(session, spec)
        return ConversationSessions(StreamPoster(session, spec, driver.clock, fresh), spec, pool)

    return await driver.run(prepare)
