"""What `pytest_aifactory.api` returns and raises.

Every answer is a frozen dataclass that `to_json()` turns into plain JSON (dates as ISO text), so
the command line prints it with `--json` and the web interface sends it as it is; every user
mistake is an `ApiError` whose message is ready to show, so neither caller needs to know how the
answer was found.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

from pytest_aifactory.loadgen.live import ClientCounters
from pytest_aifactory.report.compare import Comparison, Judgement, Regression


class ApiError(Exception):
    """A user's mistake (an unknown run, a path that is not the run's log): the message says
    what was wrong and what was expected; `notes` what was seen on the way (a baseline refused
    because it does not verify), worth showing before the message."""

    def __init__(self, message: str, notes: list[str] | None = None) -> None:
        super().__init__(message)
        self.notes = list(notes or [])


class RunNotFoundError(ApiError):
    """No run by that id, prefix or folder, or several match."""


class NotOwnedError(ApiError):
    """The run folder belongs to another account: its job ids and log paths are that account's
    choice, so nothing it names is stopped or read."""


class InvalidRecipeError(ApiError):
    """The recipe cannot be run; `problems` lists every one found, not only the first."""

    def __init__(self, message: str, problems: list[str], path: Path) -> None:
        super().__init__(message)
        self.problems = problems
        self.path = path


class RecipeNotFoundError(InvalidRecipeError):
    """No file at the recipe's path."""


def _plain(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def _fields_of(value: Any) -> Any:
    """A dataclass inside an answer (a job of a run, a row of counters) as a dict."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, list):
        return [_fields_of(item) for item in value]
    return value


class _Shape:
    """`to_json` for every answer: `dataclasses.asdict` with dates and paths as text."""

    def to_json(self) -> dict[str, Any]:
        shaped: Any = self
        return {
            field.name: _plain(_fields_of(getattr(shaped, field.name)))
            for field in dataclasses.fields(shaped)
        }


@dataclasses.dataclass(frozen=True)
class JobStatus(_Shape):
    """One job of a run as it is now (`checked` False: as last recorded, not seen from here)."""

    name: str
    role: str
    job_id: str
    executor: str
    state: str
    checked: bool
    kept: bool
    nodes: list[str]
    endpoint: str | None
    health: str | None
    """"healthy" or "unhealthy" for a live service with an endpoint; None otherwise."""
    submitted_at: dt.datetime
    age_s: float
    stdout: str
    stderr: str


@dataclasses.dataclass(frozen=True)
class RunSummary(_Shape):
    run_id: str
    run_dir: str
    recipe: str
    status: str
    """As it stands now: "running (driver gone)", "complete, services kept", ..."""
    recorded_status: str
    """As the run last wrote it ("running", "complete", "stopped", "submitted"...)."""
    started_at: dt.datetime
    ended_at: dt.datetime | None
    executor: str
    driver_alive: bool | None
    """None: cannot be told from here (another host, no driver recorded)."""
    kept_services: bool
    live_jobs: list[JobStatus]
    """Only looked up for runs with a job not known to have ended; empty for the others."""


@dataclasses.dataclass(frozen=True)
class RunStatus(_Shape):
    summary: RunSummary
    recipe_path: str | None
    jobs: list[JobStatus]


@dataclasses.dataclass(frozen=True)
class LiveCounters(_Shape):
    at: float
    """Unix time the counters were read."""
    source: str
    """"pushgateway URL" or "progress files"."""
    note: str | None
    """Why not from the pushgateway; None when they are."""
    rows: list[ClientCounters]


@dataclasses.dataclass(frozen=True)
class SeriesPoints(_Shape):
    name: str
    service: str
    unit: str
    type: str
    """"counter" (the points are per-second rates) or "gauge"."""
    points: list[tuple[float, float]]


@dataclasses.dataclass(frozen=True)
class ServerSeries(_Shape):
    at: float
    source: str
    note: str | None
    series: list[SeriesPoints]


@dataclasses.dataclass(frozen=True)
class LogFile(_Shape):
    label: str
    """`service-llm stderr`, `client-chat[1] stdout`: the job, its task and the stream."""
    path: str


@dataclasses.dataclass(frozen=True)
class LogChunk(_Shape):
    path: str
    offset: int
    next_offset: int
    """Where the next read starts: after the last whole line returned."""
    text: str
    """Redacted; whole lines only."""
    size: int
    """The file's size when read: `next_offset < size` means more is there already."""


@dataclasses.dataclass(frozen=True)
class RecipeCheck(_Shape):
    path: str
    name: str
    services: int
    clients: int
    test_cases: int


@dataclasses.dataclass(frozen=True)
class StartedSession(_Shape):
    run_id: str
    run_dir: str
    pid: int
    stdout: str
    stderr: str


@dataclasses.dataclass(frozen=True)
class StopResult(_Shape):
    job: str
    detail: str
    ok: bool
    run_id: str = ""


@dataclasses.dataclass(frozen=True)
class ComparisonResult(_Shape):
    """Runs side by side, the first the baseline (`report/compare.py`)."""

    comparison: Comparison
    text: str
    """The table `aifactory compare` prints."""
    tolerances: dict[str, float] | None
    regressions: list[Regression]
    unchecked: list[str]
    """Metrics given a tolerance that no test of these runs has."""
    notes: list[str]
    """Earlier runs refused as baseline, and why."""
    judgements: list[Judgement] = dataclasses.field(default_factory=list)
    """Every metric given a tolerance, test by test: its change, its interval where the runs'
    requests give one, and why it counts as a regression or not."""

    def to_json(self) -> dict[str, Any]:
        comparison = self.comparison
        return {
            "runs": [
                {
                    "run_id": run.run_id,
                    "run_dir": str(run.root),
                    "recipe": run.recipe,
                    "started_at": run.started_at,
                    "status": run.status,
                    "verdict": run.verdict,
                }
                for run in comparison.runs
            ],
            "metrics": list(comparison.metrics),
            "rows": [
                {
                    "test": row.test,
                    "client": row.client,
                    "level_label": row.level_label,
                    "level": row.level,
                    "metric": row.metric,
                    "unit": row.unit,
                    "cells": [dataclasses.asdict(cell) for cell in row.cells],
                }
                for row in comparison.rows
            ],
            "missing": list(comparison.missing),
            "text": self.text,
            "tolerances": self.tolerances,
            "regressions": [
                {**dataclasses.asdict(found), "describe": found.describe()}
                for found in self.regressions
            ],
            "unchecked": list(self.unchecked),
            "notes": list(self.notes),
            "judgements": [
                {
                    "test": j.regression.test,
                    "metric": j.regression.metric,
                    "outcome": j.outcome,
                    "counts": j.counts,
                    "interval": (
                        dataclasses.asdict(j.regression.interval)
                        if j.regression.interval is not None
                        else None
                    ),
                    "describe": j.describe(),
                }
                for j in self.judgements
            ],
        }
