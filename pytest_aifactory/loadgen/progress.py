"""Live progress of a load process, as a small JSON file the driver polls.

The file is replaced atomically, so the driver never reads half of it; the driver aggregates the
files of all processes of a load level into one line.
"""

from __future__ import annotations

import json
import os
import statistics
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_aifactory.atomic import write_json_atomic

if TYPE_CHECKING:
    from pytest_aifactory.loadgen.spec import LoadSpec

WRITE_EVERY_S = 0.5
TTFT_WINDOW = 512


class Progress:
    """Counters of the measured phase, plus a bounded window of recent TTFTs."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        client: str,
        level_label: str,
        process: int,
        total: int | None,
        duration_s: float | None,
    ) -> None:
        self.path = Path(path)
        self.client = client
        self.level_label = level_label
        self.process = process
        self.total = total
        self.duration_s = duration_s
        self.sent = 0
        self.completed = 0
        self.failed = 0
        self.output_tokens = 0
        self.elapsed_s = 0.0
        self._ttfts: deque[float] = deque(maxlen=TTFT_WINDOW)

    @classmethod
    def for_load(cls, spec: LoadSpec, *, bounded: bool = True) -> Progress:
        """The progress file of one load process; `bounded`: its requests or duration bound the
        load (fio's runtime is its own, so it shows neither)."""
        return cls(
            spec.progress_path,
            client=spec.client,
            level_label=spec.level_label,
            process=spec.process,
            total=spec.requests if bounded else None,
            duration_s=spec.duration_s if bounded else None,
        )

    def on_sent(self) -> None:
        self.sent += 1

    def on_done(self, record: dict[str, Any]) -> None:
        if record.get("error"):
            self.failed += 1
            return
        self.completed += 1
        self.output_tokens += int(record.get("output_tokens") or 0)
        ttft = record.get("ttft_ms")
        if ttft is not None:
            self._ttfts.append(float(ttft))

    def snapshot(self, done: bool = False) -> dict[str, Any]:
        return {
            "client": self.client,
            "level_label": self.level_label,
            "process": self.process,
            "sent": self.sent,
            "completed": self.completed,
            "failed": self.failed,
            "output_tokens": self.output_tokens,
            "ttft_p50_ms": statistics.median(self._ttfts) if self._ttfts else None,
            "elapsed_s": round(self.elapsed_s, 3),
            "total": self.total,
            "duration_s": self.duration_s,
            "done": done,
        }

    def write(self, done: bool = False) -> None:
        write_json_atomic(self.path, self.snapshot(done))


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_progress(paths: Iterable[str | os.PathLike[str]]) -> dict[str, Any]:
    """One view of several processes: sums of counters, the longest elapsed time, the median
    of the processes' TTFT medians; empty when no process has written anything yet."""
    parts = [p for p in (_read(Path(path)) for path in paths) if p is not None]
    if not parts:
        return {}
    totals = [p.get("total") for p in parts]
    p50s = [float(p["ttft_p50_ms"]) for p in parts if p.get("ttft_p50_ms") is not None]
    durations = [float(p["duration_s"]) for p in parts if p.get("duration_s") is not None]
    return {
        "client": parts[0].get("client"),
        "level_label": parts[0].get("level_label"),
        "processes": len(parts),
        "sent": sum(int(p.get("sent") or 0) for p in parts),
        "completed": sum(int(p.get("completed") or 0) for p in parts),
        "failed": sum(int(p.get("failed") or 0) for p in parts),
        "output_tokens": sum(int(p.get("output_tokens") or 0) for p in parts),
        "ttft_p50_ms": statistics.median(p50s) if p50s else None,
        "elapsed_s": max(float(p.get("elapsed_s") or 0.0) for p in parts),
        "total": sum(int(t) for t in totals if t is not None)
        if all(t is not None for t in totals)
        else None,
        "duration_s": max(durations) if durations else None,
        "done": all(bool(p.get("done")) for p in parts),
    }
