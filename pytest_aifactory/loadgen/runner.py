"""One load process: the job the driver submits, and the timing loop every client kind shares.

`run_load` is what runs in a submitit job (a local process or a Slurm task). `LoadDriver` owns
what is the same for every kind: warmup, the start barrier, the concurrency and rate loops,
records, progress, the driver's heartbeat and a graceful stop on SIGINT/SIGTERM. A kind only
says how to send one request, or, for multi-turn sessions, how to send a session's next turn
(`sessions.py`): the session loop then decides when.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import os
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import numpy as np

from pytest_aifactory import direct_http
from pytest_aifactory.cluster.node import LOOPBACK, in_slurm_job, node_address, node_name
from pytest_aifactory.cluster.restart import refuse_restart
from pytest_aifactory.cluster.rundir import driver_gone
from pytest_aifactory.loadgen.barrier import agreed_start
from pytest_aifactory.loadgen.kinds import get_client_kind
from pytest_aifactory.loadgen.live import LivePusher
from pytest_aifactory.loadgen.progress import WRITE_EVERY_S, Progress
from pytest_aifactory.loadgen.records import Clock, RecordWriter, new_record
from pytest_aifactory.loadgen.schedule import arrival_offsets
from pytest_aifactory.loadgen.selfcheck import ClientMeter, client_stats_path
from pytest_aifactory.loadgen.sessions import Session, Sessions
from pytest_aifactory.loadgen.signals import install_stop_signals, restore_signals
from pytest_aifactory.loadgen.spec import LoadSpec
from pytest_aifactory.monitor.node_exporter import node_exporter

__all__ = ["LoadDriver", "SendFn", "run_load"]

SendFn = Callable[[dict[str, Any], int], Awaitable[dict[str, Any]]]
"""Send one request. Gets the request's record, pre-filled with its identity and
`scheduled_ts`, and the scheduled perf_counter_ns; fills in the measurements and returns it.
It reports failures in the record's `error` and never raises for what a server does."""

MODES = ("concurrency", "rate", "replay")
_POLL_S = 0.25
"""Longest sleep between checks of the stop flag while waiting for a send time."""
_SPIN_NS = 1_500_000
"""The last stretch before a send time is waited by yielding to the loop rather than by a
timer: event-loop timers fire up to a millisecond late, which would show as queue_ms."""


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where installed, the standard loop otherwise (the client works with either)."""
    try:
        # deferred: only the load loop needs uvloop, and the standard loop stands in without it
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def validate(spec: LoadSpec) -> None:
    """Reject a spec that cannot run before any connection is made."""
    if spec.mode not in MODES:
        raise ValueError(f"unknown load mode '{spec.mode}' (expected one of {', '.join(MODES)})")
    if spec.level <= 0:
        raise ValueError(f"load level must be positive, got {spec.level}")
    if spec.mode == "concurrency" and int(spec.level) < 1:
        raise ValueError(f"concurrency must be at least 1, got {spec.level}")
    if spec.requests is None and spec.duration_s is None and spec.mode != "replay":
        raise ValueError("a load needs `requests` or `duration_s`")
    if spec.max_concurrency is not None and spec.max_concurrency < 1:
        raise ValueError(f"max_concurrency must be at least 1, got {spec.max_concurrency}")


def run_load_task(specs: list[LoadSpec | None]) -> dict[str, Any]:
    """Entry point of a fanned-out client job: every task of the job (one per node and process)
    runs the spec of its global rank (`cases.place`), and records which node it ran on."""
    refuse_restart("client job", "a second run would send its load again into the same records")
    # deferred: submitit is slow to import and only the tasks of a fanned-out job need it
    import submitit

    rank = submitit.JobEnvironment().global_rank
    spec = specs[rank] if rank < len(specs) else None
    if spec is None:
        return {"idle": True}  # more tasks than processes with a share of the load
    node = os.environ.get("SLURMD_NODENAME") or os.uname().nodename
    with _node_exporter(spec):
        return run_load(dataclasses.replace(spec, node=node))


def _node_exporter(spec: LoadSpec) -> contextlib.AbstractContextManager[None]:
    """The node's exporter while this client runs, unless a task on the node already runs one
    (a service on the same node, or another process of this client)."""
    host = node_address() if in_slurm_job() else LOOPBACK
    return node_exporter(spec.node_exporter, node_name(), host)


def run_load(spec: LoadSpec) -> dict[str, Any]:
    """Run one process's share of a load level and say what it did.

    Returns {"sent", "completed", "failed", "warmup", "started_at", "ended_at",
    "records_path", "interrupted"}; the measurements themselves are in the records file.
    """
    validate(spec)
    # every library a client kind may use (httpx, gRPC) goes to the run's servers directly
    direct_http.bypass_proxy_for([spec.base_url, *spec.replica_urls, spec.push_url])
    load = get_client_kind(spec.kind).load_function()
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(load(spec))


class LoadDriver:
    """Decides when each request is sent and keeps what comes back."""

    def __init__(self, spec: LoadSpec, clock: Clock | None = None) -> None:
        self.spec = spec
        self.clock = clock or Clock()
        self.node = spec.node or os.uname().nodename
        self.progress = Progress.for_load(spec)
        self.live = LivePusher.for_load(spec, self.node)
        self.meter = ClientMeter(
            spec.process,
            queue_capped=bool(spec.max_concurrency),
            closed_loop=spec.mode == "concurrency",
        )
        self.writer: RecordWriter | None = None
        self.interrupted = False
        self.sent = 0
        self.completed = 0
        self.failed = 0
        self.warmup_sent = 0
        self.started_at: float | None = None
        self._t0_ns: int | None = None
        self._next_id = 0
        self._next_session = 0
        self._trace_s: list[float] | None = None
        self._stop_sending = asyncio.Event()
        self._aborted = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._main: asyncio.Task[Any] | None = None
        self._saved_signals: dict[int, Any] = {}

    # -- public --------------------------------------------------------------------------------

    async def run(self, prepare: Callable[[], Awaitable[SendFn | Sessions]]) -> dict[str, Any]:
        """Prepare (untimed: prompts, connections), warm up, wait for the start, run, flush.
        What `prepare` gives sends one request, or is `Sessions` (the session loop sends them).

        Whatever stops the load (its end, the driver going away, a signal), records already
        taken are written and the outcome is returned.
        """
        self._main = asyncio.current_task()
        self.writer = RecordWriter(self.spec.records_path)
        self.progress.write()
        self.live.start()
        self._install_signals()
        if self._driver_gone():
            self.interrupted = True
            self.stop_sending()
        ticker = asyncio.create_task(self._tick())
        try:
            send = await self._tracked(prepare())
            if send is not None and self.spec.mode == "replay":
                # the requests a replay sends; without a trace it stops before any request
                self.progress.total = len(self._replay_offsets())
            if send is not None and not self._stop_sending.is_set():
                if isinstance(send, Sessions):
                    await self._session_warmup(send)
                else:
                    await self._warmup(send)
                await self._wait_for_start()
                self._t0_ns = self.clock.now_ns()
                self.started_at = self.clock.wall(self._t0_ns)
                self.meter.start()
                if isinstance(send, Sessions):
                    await self._session_loop(send)
                elif self.spec.mode == "concurrency":
                    await self._closed_loop(send)
                else:
                    await self._open_loop(send)
                self.meter.stop()
        except asyncio.CancelledError:
            self.interrupted = True
        finally:
            try:
                self._abort()
                ticker.cancel()
                await asyncio.gather(*self._tasks, ticker, return_exceptions=True)
            except asyncio.CancelledError:  # a second signal: stop waiting, still write
                self.interrupted = True
            finally:
                self._restore_signals()
                self._finish()
        return self.outcome()

    def outcome(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "completed": self.completed,
            "failed": self.failed,
            "warmup": self.warmup_sent,
            "started_at": self.started_at,
            "ended_at": time.time(),
            "records_path": str(self.spec.records_path),
            "interrupted": self.interrupted,
        }

    def stop_sending(self) -> None:
        """Send nothing new; requests in flight still finish and are recorded."""
        self._stop_sending.set()

    def replay(self, times_s: list[float]) -> None:
        """The instants of a replayed trace's requests (seconds after its first request, in
        the order sent), given while preparing: mode `replay` sends request i at
        `times_s[i] / level` after the start, the level being the speed."""
        self._trace_s = list(times_s)

    # -- phases --------------------------------------------------------------------------------

    async def _warmup(self, send: SendFn) -> None:
        count = self.spec.warmup_requests
        if count <= 0:
            return
        width = min(count, max(1, math.ceil(self.spec.level)))
        if self.spec.max_concurrency:
            width = min(width, self.spec.max_concurrency)
        end_id = self._next_id + count

        async def worker() -> None:
            free_ns = self.clock.now_ns()
            while not self._stop_sending.is_set() and self._next_id < end_id:
                request_id = self._next_id
                self._next_id += 1
                await self._one(send, request_id, "warmup", free_ns)
                free_ns = self.clock.now_ns()

        await self._gather([worker() for _ in range(width)])

    async def _wait_for_start(self) -> None:
        start_at = self.spec.start_at
        if self.spec.barrier_dir and self.spec.processes > 1:
            agreed = await agreed_start(
                Path(self.spec.barrier_dir), self.spec.process, self.spec.processes
            )
            start_at = max(start_at or 0.0, agreed)
        if start_at is not None:
            await self._sleep_until(self.clock.ns_at(start_at))

    async def _closed_loop(self, send: SendFn) -> None:
        """`level` workers, each sending its next request as soon as its last one finished."""
        assert self._t0_ns is not None
        limit = self.spec.requests
        deadline = (
            self._t0_ns + int(self.spec.duration_s * 1e9)
            if self.spec.duration_s is not None
            else None
        )
        first_id = self._next_id

        async def worker() -> None:
            free_ns = self._t0_ns
            assert free_ns is not None
            while not self._stop_sending.is_set():
                if limit is not None and self._next_id - first_id >= limit:
                    return
                if deadline is not None and self.clock.now_ns() >= deadline:
                    return
                request_id = self._next_id
                self._next_id += 1
                await self._one(send, request_id, "measure", free_ns)
                free_ns = self.clock.now_ns()

        await self._gather([worker() for _ in range(int(self.spec.level))])

    async def _open_loop(self, send: SendFn) -> None:
        """Requests launched at precomputed offsets from the start, whatever is in flight."""
        assert self._t0_ns is not None
        spec = self.spec
        offsets = (
            self._replay_offsets()
            if spec.mode == "replay"
            else arrival_offsets(
                spec.requests, spec.level, spec.arrival, spec.burstiness, spec.seed, spec.duration_s
            )
        )
        targets = self._t0_ns + (offsets * 1e9).astype("int64")
        limiter = asyncio.Semaphore(spec.max_concurrency) if spec.max_concurrency else None

        async def limited(request_id: int, scheduled_ns: int) -> None:
            assert limiter is not None
            async with limiter:
                if self._stop_sending.is_set():
                    return
                await self._one(send, request_id, "measure", scheduled_ns)

        for target in targets.tolist():
            if not await self._sleep_until(target):
                break
            request_id = self._next_id
            self._next_id += 1
            if limiter is None:
                coroutine = self._one(send, request_id, "measure", target)
            else:
                coroutine = limited(request_id, target)
            self._spawn(coroutine)
        pending = [t for t in self._tasks if not t.done()]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    def _replay_offsets(self) -> np.ndarray:
        """The trace's instants at the level's speed, those before `duration_s` only."""
        if self._trace_s is None:
            raise ValueError(
                f"client '{self.spec.client}': load mode 'replay' sends a trace: give it a "
                "dataset of kind 'trace'"
            )
        offsets = np.asarray(self._trace_s, dtype=float) / self.spec.level
        if self.spec.duration_s is not None:
            offsets = offsets[offsets < self.spec.duration_s]
        return offsets

    # -- sessions ------------------------------------------------------------------------------

    async def _session_warmup(self, sessions: Sessions) -> None:
        """The first turns of the first `warmup_requests` sessions, which the measured load
        does not open again."""
        count = self.spec.warmup_requests
        if count <= 0:
            return
        width = min(count, max(1, math.ceil(self.spec.level)))
        if self.spec.max_concurrency:
            width = min(width, self.spec.max_concurrency)

        async def worker() -> None:
            free_ns = self.clock.now_ns()
            while not self._stop_sending.is_set() and self._next_session < count:
                index = self._next_session
                self._next_session += 1
                await self._turn(sessions.open(index), index, 0, "warmup", free_ns)
                free_ns = self.clock.now_ns()

        await self._gather([worker() for _ in range(width)])

    async def _session_loop(self, sessions: Sessions) -> None:
        """Sessions instead of requests: `level` of them in flight (each worker opens the next
        session when its last one ended) or `level` opened per second; each sends its turns one
        after the other, a turn once the previous answer is in and the think time after it has
        passed, which is then its scheduled instant (the pause is not `queue_ms`). `requests`
        counts turns; a session cut by it, by `duration_s` or by a failed turn sends no more."""
        assert self._t0_ns is not None
        spec = self.spec
        first_id = self._next_id
        deadline = self._t0_ns + int(spec.duration_s * 1e9) if spec.duration_s else None
        limiter = asyncio.Semaphore(spec.max_concurrency) if spec.max_concurrency else None

        def more() -> bool:
            if self._stop_sending.is_set():
                return False
            if spec.requests is not None and self._next_id - first_id >= spec.requests:
                return False
            return deadline is None or self.clock.now_ns() < deadline

        async def turn_of(session: Session, index: int, turn: int, ready_ns: int) -> bool:
            """Send one turn if the load still sends; whether it was answered."""
            if limiter is None:
                if not more():
                    return False
                record = await self._turn(session, index, turn, "measure", ready_ns)
            else:
                async with limiter:
                    if not more():
                        return False
                    record = await self._turn(session, index, turn, "measure", ready_ns)
            return not record.get("error")

        async def run_session(start_ns: int) -> None:
            index = self._next_session
            self._next_session += 1
            session = sessions.open(index)
            ready_ns = start_ns
            for turn in range(session.turns):
                if turn:
                    ready_ns = self.clock.now_ns() + int(session.think_s(turn) * 1e9)
                    if deadline is not None and ready_ns >= deadline:
                        return
                    if not await self._sleep_until(ready_ns):
                        return
                if not await turn_of(session, index, turn, ready_ns):
                    return

        if spec.mode == "concurrency":

            async def worker() -> None:
                free_ns = self._t0_ns
                assert free_ns is not None
                while more():
                    await run_session(free_ns)
                    free_ns = self.clock.now_ns()

            await self._gather([worker() for _ in range(int(spec.level))])
            return
        offsets = arrival_offsets(
            spec.requests, spec.level, spec.arrival, spec.burstiness, spec.seed, spec.duration_s
        )
        for target in (self._t0_ns + (offsets * 1e9).astype("int64")).tolist():
            if not await self._sleep_until(target) or not more():
                break
            self._spawn(run_session(target))
        pending = [t for t in self._tasks if not t.done()]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    async def _turn(
        self, session: Session, index: int, turn: int, phase: str, scheduled_ns: int
    ) -> dict[str, Any]:
        """One turn of session `index` as one request, its record naming the session; the
        record as written (an error in it ends the session)."""
        request_id = self._next_id
        self._next_id += 1
        written: list[dict[str, Any]] = []

        async def send(record: dict[str, Any], scheduled: int) -> dict[str, Any]:
            record.update(session_id=index, turn=turn, session_turns=session.turns)
            written.append(record)  # what `_one` writes, should the session raise
            written[0] = await session.send(record, scheduled)
            return written[0]

        await self._one(send, request_id, phase, scheduled_ns)
        return written[0] if written else {"error": "not sent"}

    # -- one request ---------------------------------------------------------------------------

    def new_record(self, request_id: int, phase: str, scheduled_ns: int) -> dict[str, Any]:
        scheduled_ts = self.clock.wall(scheduled_ns)
        return new_record(self.spec, self.node, request_id, phase, scheduled_ts)

    async def _one(self, send: SendFn, request_id: int, phase: str, scheduled_ns: int) -> None:
        record = self.new_record(request_id, phase, scheduled_ns)
        measured = phase == "measure"
        if measured:
            self.sent += 1
            self.progress.on_sent()
            self.live.on_sent()
        else:
            self.warmup_sent += 1
        try:
            record = await send(record, scheduled_ns)
        except Exception as err:  # a bug in a kind must not lose the rest of the load
            record["error"] = f"ClientError: {type(err).__name__}: {err}"[:300]
            record["end_ts"] = self.clock.wall(self.clock.now_ns())
        # Responses often end together (a server's batch finishing): let the reads and writes
        # already due go first, before this one's bookkeeping and its worker's next request.
        await asyncio.sleep(0)
        assert self.writer is not None
        self.writer.add(record)
        if measured:
            if record.get("error"):
                self.failed += 1
            else:
                self.completed += 1
            self.meter.on_request(record.get("content_events") or 0)
            self.progress.on_done(record)
            self.live.on_done(record)

    # -- plumbing ------------------------------------------------------------------------------

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _tracked(self, awaitable: Awaitable[Any]) -> Any:
        """Await something that a signal must be able to cancel; None if it was."""

        async def wrap() -> Any:
            return await awaitable

        task = self._spawn(wrap())
        try:
            return await task
        except asyncio.CancelledError:
            if self._aborted:
                return None
            raise

    async def _gather(self, coroutines: list[Coroutine[Any, Any, Any]]) -> None:
        tasks = [self._spawn(c) for c in coroutines]
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _sleep_until(self, target_ns: int) -> bool:
        """Sleep until a perf_counter_ns instant; False if sending was stopped meanwhile."""
        while True:
            if self._stop_sending.is_set():
                return False
            remaining = target_ns - self.clock.now_ns()
            if remaining <= 0:
                return True
            if remaining <= _SPIN_NS:
                await asyncio.sleep(0)
            else:
                await asyncio.sleep(min((remaining - _SPIN_NS) / 1e9, _POLL_S))

    async def _tick(self) -> None:
        """Flush records, publish progress and watch the driver's heartbeat."""
        while True:
            await asyncio.sleep(WRITE_EVERY_S)
            self._publish(done=False)
            if not self._stop_sending.is_set() and self._driver_gone():
                self.interrupted = True
                self.stop_sending()

    def _publish(self, done: bool) -> None:
        if self.writer is not None:
            self.writer.flush()
        if self._t0_ns is not None:
            self.progress.elapsed_s = (self.clock.now_ns() - self._t0_ns) / 1e9
        with contextlib.suppress(OSError):
            self.progress.write(done=done)

    def _driver_gone(self) -> bool:
        return driver_gone(self.spec.heartbeat_path, started_at=self.clock.anchor_wall)

    def _finish(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self._t0_ns is not None:
            self.meter.stop()
            with contextlib.suppress(OSError):
                self.meter.write(client_stats_path(self.spec.records_path))
        self._publish(done=True)
        self.live.close()

    def _abort(self) -> None:
        """Cancel everything in flight (what was recorded stays recorded)."""
        self._stop_sending.set()
        self._aborted = True
        for task in list(self._tasks):
            task.cancel()

    def _on_signal(self) -> None:
        if self._aborted and self._main is not None:
            self._main.cancel()
            return
        self.interrupted = True
        self._abort()

    def _install_signals(self) -> None:
        """SIGINT/SIGTERM end the load cleanly (a second one stops waiting for cleanup)."""
        self._saved_signals = install_stop_signals(self._on_signal)

    def _restore_signals(self) -> None:
        restore_signals(self._saved_signals)
