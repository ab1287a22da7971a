"""How busy a load process itself was, so a run can say when it measured its client, not the
server.

Each process measures, over its measured phase, the CPU time it used (user + system, all
threads), the wall time, the content events it handled, and how late its event loop woke up
against a steady tick (a loop that wakes late delays every timestamp it takes). It writes these
next to its records file (`p0000.jsonl` -> `p0000.client.json`) when the load ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from pytest_aifactory.atomic import write_json_atomic
from pytest_aifactory.metrics.histogram import LogHistogram

TICK_S = 0.005
"""Interval of the event-loop lag probe: short enough to catch stalls, cheap enough to ignore."""
LAG_BATCH = 2000
"""Lag samples kept as they come before joining the histogram (10 s of ticks)."""


def client_stats_path(records_path: str | os.PathLike[str]) -> Path:
    """Where a process's self-measurement lies, beside its records file."""
    path = Path(records_path)
    return path.with_name(f"{path.stem}.client.json")


def read_client_stats(paths: list[Path] | tuple[Path, ...]) -> list[dict[str, Any]]:
    """The self-measurements of several processes; missing or unreadable files are skipped."""
    out: list[dict[str, Any]] = []
    for path in paths:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            out.append(data)
    return out


def event_loop_kind() -> str:
    loop = asyncio.get_running_loop()
    return f"{type(loop).__module__}.{type(loop).__name__}"


class ClientMeter:
    """CPU, wall time, events and event-loop lag of one process over its measured phase."""

    def __init__(
        self, process: int = 0, queue_capped: bool = False, closed_loop: bool = False
    ) -> None:
        self.process = process
        self.queue_capped = queue_capped
        self.closed_loop = closed_loop
        """Concurrency mode: a late send thins the load rather than moving an arrival."""
        self.events = 0
        self.requests = 0
        self._cpu0 = 0.0
        self._wall0 = 0
        self._cpu_s: float | None = None
        self._wall_s: float | None = None
        self._lags_ns: list[int] = []
        """Recent samples, folded into `_lags` (constant memory over any duration)."""
        self._lags = LogHistogram()
        self._probe: asyncio.Task[None] | None = None
        self._loop_kind = ""

    def start(self) -> None:
        self._cpu0 = time.process_time()
        self._wall0 = time.perf_counter_ns()
        self._loop_kind = event_loop_kind()
        self._probe = asyncio.create_task(self._probe_loop())

    def stop(self) -> None:
        """End of the measured phase (idempotent)."""
        if self._probe is None or self._cpu_s is not None:
            return
        self._probe.cancel()
        self._cpu_s = time.process_time() - self._cpu0
        self._wall_s = (time.perf_counter_ns() - self._wall0) / 1e9

    def on_request(self, content_events: int) -> None:
        self.requests += 1
        self.events += content_events

    async def _probe_loop(self) -> None:
        tick_ns = int(TICK_S * 1e9)
        lags = self._lags_ns
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                before = time.perf_counter_ns()
                await asyncio.sleep(TICK_S)
                lags.append(time.perf_counter_ns() - before - tick_ns)
                if len(lags) >= LAG_BATCH:
                    self._fold_lags()

    def _fold_lags(self) -> None:
        self._lags.add(np.asarray(self._lags_ns, dtype=float) / 1e6)
        self._lags_ns.clear()

    def snapshot(self) -> dict[str, Any]:
        cpu_s = self._cpu_s
        wall_s = self._wall_s
        self._fold_lags()
        lag: dict[str, float | None] = dict.fromkeys(("p50", "p99", "max"))
        if self._lags.total:
            p50, p99 = self._lags.quantiles([0.5, 0.99])
            lag = {"p50": float(p50), "p99": float(p99), "max": float(self._lags.maximum)}
        return {
            "process": self.process,
            "pid": os.getpid(),
            "cpu_s": cpu_s,
            "wall_s": wall_s,
            "cpu_percent": 100 * cpu_s / wall_s if cpu_s is not None and wall_s else None,
            "requests": self.requests,
            "events": self.events,
            "events_per_s": self.events / wall_s if wall_s else None,
            "loop_lag_ms": lag,
            "queue_capped": self.queue_capped,
            "closed_loop": self.closed_loop,
            "event_loop": self._loop_kind,
        }

    def write(self, path: str | os.PathLike[str]) -> None:
        write_json_atomic(Path(path), self.snapshot())
