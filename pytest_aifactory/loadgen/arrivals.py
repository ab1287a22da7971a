"""When each byte of a streamed response reached the client, stamped as the event loop hands it
to the connection, before any task runs.

A task that reads a stream learns of new bytes only when the loop gets to it: after every task
woken before it. When many streams' events arrive together (a server's batch emitting a token,
or finishing), the last reader would time its event after the others' work, next requests
included: late by the burst, not by the server. The connection's protocol is called as the
socket is read, so its clock is the arrival; a reader maps the payload offset at which each
event starts to the instant the bytes up to there arrived.

aiohttp builds each connection's protocol through the connector's factory; `timed_connector`
gives it one that records arrivals. Where that is not possible, readers fall back on their own
read times (`watch_arrivals` returns None).
"""

from __future__ import annotations

import functools
from time import perf_counter_ns
from typing import Any

import aiohttp
from aiohttp.client_proto import ResponseHandler


class Arrivals:
    """(payload bytes received so far, instant) after each read of the socket, for the one
    response a reader watches; offsets only grow, so lookups walk forward."""

    __slots__ = ("_index", "_marks")

    def __init__(self) -> None:
        self._marks: list[tuple[int, int]] = []
        self._index = 0

    def mark(self, total_bytes: int, at_ns: int) -> None:
        if not self._marks or total_bytes > self._marks[-1][0]:
            self._marks.append((total_bytes, at_ns))

    def at(self, offset: int) -> int | None:
        """The instant the payload byte at `offset` arrived (None: not recorded)."""
        marks = self._marks
        index = self._index
        while index < len(marks) and marks[index][0] <= offset:
            index += 1
        self._index = index
        return marks[index][1] if index < len(marks) else None


class TimedResponseHandler(ResponseHandler):
    """aiohttp's protocol, recording when the watched response's payload bytes arrive."""

    def __init__(self, loop: Any) -> None:
        super().__init__(loop)
        self.last_data_ns = 0
        self.watched: Any = None
        self.arrivals: Arrivals | None = None

    def data_received(self, data: bytes) -> None:
        now = perf_counter_ns()
        self.last_data_ns = now
        super().data_received(data)
        if self.arrivals is not None:
            self.arrivals.mark(self.watched.total_bytes, now)

    def watch(self, content: aiohttp.StreamReader) -> Arrivals:
        """Start recording for one response; bytes it already holds arrived with the last read."""
        self.watched = content
        self.arrivals = Arrivals()
        self.arrivals.mark(content.total_bytes, self.last_data_ns)
        return self.arrivals

    def unwatch(self) -> None:
        self.watched = None
        self.arrivals = None


def timed_connector(**options: Any) -> aiohttp.TCPConnector:
    """A TCPConnector whose connections record arrivals (a plain one if aiohttp has no
    protocol factory to replace)."""
    connector = aiohttp.TCPConnector(**options)
    factory = getattr(connector, "_factory", None)
    if isinstance(factory, functools.partial) and factory.func is ResponseHandler:
        timed = functools.partial(TimedResponseHandler, *factory.args, **factory.keywords)
        connector._factory = timed  # type: ignore[assignment]  # a ResponseHandler subclass
    return connector


def watch_arrivals(response: aiohttp.ClientResponse) -> TimedResponseHandler | None:
    """The protocol of this response's connection, now recording its payload's arrivals (its
    `arrivals`; `unwatch()` when done), or None where the connection keeps no times."""
    connection = response.connection
    protocol = connection.protocol if connection is not None else None
    if isinstance(protocol, TimedResponseHandler):
        protocol.watch(response.content)
        return protocol
    return None
