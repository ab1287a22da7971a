"""Multi-turn sessions as the load driver sends them (`LoadDriver`'s session loop).

A kind whose dataset is sessions (an `openai` client's `conversation`) prepares `Sessions`
instead of a `SendFn`; the driver then counts its level in sessions (in flight, or started per
second) and sends each session's turns one after the other, each once the previous one was
answered and its think time has passed. What a turn sends (the history so far) is the
session's business; when it is sent is the driver's.
"""

from __future__ import annotations

import abc
from typing import Any


class Session(abc.ABC):
    """One run of a session: `turns` requests, each sent after the previous one's answer."""

    turns: int

    @abc.abstractmethod
    def think_s(self, turn: int) -> float:
        """Seconds between the answer to turn `turn - 1` and the sending of `turn`."""

    @abc.abstractmethod
    async def send(self, record: dict[str, Any], scheduled_ns: int) -> dict[str, Any]:
        """Send turn `record["turn"]`, as a `SendFn` sends a request; a record with an error
        ends the session (its history would lack the answer)."""


class Sessions(abc.ABC):
    """The sessions of one load process."""

    @abc.abstractmethod
    def open(self, index: int) -> Session:
        """The process's `index`-th session, ready to send its first turn."""
