"""A start barrier through the shared run directory, so fanned-out processes load together.

Each process, once its prompts are built and its warmup is done, writes `ready.<n>` with its
wall-clock time; when all are there every process computes the same start time from them (the
latest ready time plus a margin) and sleeps until then. No process has to be the leader.
"""

from __future__ import annotations

import asyncio
import time
import warnings
from pathlib import Path

from pytest_aifactory.atomic import write_text_atomic

START_MARGIN_S = 0.5
"""Time for every process to see the last ready file (shared file systems cache metadata)."""

READY_TIMEOUT_S = 300.0
POLL_S = 0.05


def _ready_times(folder: Path) -> list[float]:
    times = []
    for path in folder.glob("ready.*"):
        try:
            times.append(float(path.read_text()))
        except (OSError, ValueError):
            continue  # being written: seen on the next poll
    return times


def mark_ready(folder: Path, process: int) -> None:
    write_text_atomic(folder / f"ready.{process}", repr(time.time()))


async def agreed_start(
    folder: Path, process: int, processes: int, timeout_s: float = READY_TIMEOUT_S
) -> float:
    """Wall-clock time at which all `processes` start; waits for the others to be ready."""
    mark_ready(folder, process)
    deadline = time.monotonic() + timeout_s
    while True:
        times = _ready_times(folder)
        if len(times) >= processes:
            return max(times) + START_MARGIN_S
        if time.monotonic() > deadline:
            warnings.warn(
                f"start barrier: only {len(times)} of {processes} load processes were ready "
                f"after {timeout_s:g} s; starting without the others",
                stacklevel=2,
            )
            return time.time()
        await asyncio.sleep(POLL_S)
