"""The Python API: everything `aifactory` does with runs and recipes, as functions.

The command line (`aifactory status`, `logs`, `stop`, `start`, `compare`, ...) and the web
interface (`aifactory ui`) both call these functions, so what one can do the other can, and a
script can do it too. Answers are frozen dataclasses with `to_json()`; a user's mistake raises
`ApiError` (or one of its kinds) with a message ready to show. See docs/api.md.
"""

from __future__ import annotations

from pytest_aifactory.api_reports import compare, dashboard, validate_recipe
from pytest_aifactory.api_runs import live_counters, log_files, read_log, run_status, runs
from pytest_aifactory.api_series import server_series
from pytest_aifactory.api_sessions import start_session, stop_jobs, stop_session
from pytest_aifactory.api_shapes import (
    ApiError,
    ComparisonResult,
    InvalidRecipeError,
    JobStatus,
    LiveCounters,
    LogChunk,
    LogFile,
    NotOwnedError,
    RecipeCheck,
    RecipeNotFoundError,
    RunNotFoundError,
    RunStatus,
    RunSummary,
    SeriesPoints,
    ServerSeries,
    StartedSession,
    StopResult,
)
from pytest_aifactory.loadgen.live import ClientCounters

__all__ = [
    "ApiError",
    "ClientCounters",
    "ComparisonResult",
    "InvalidRecipeError",
    "JobStatus",
    "LiveCounters",
    "LogChunk",
    "LogFile",
    "NotOwnedError",
    "RecipeCheck",
    "RecipeNotFoundError",
    "RunNotFoundError",
    "RunStatus",
    "RunSummary",
    "SeriesPoints",
    "ServerSeries",
    "StartedSession",
    "StopResult",
    "compare",
    "dashboard",
    "live_counters",
    "log_files",
    "read_log",
    "run_status",
    "runs",
    "server_series",
    "start_session",
    "stop_jobs",
    "stop_session",
    "validate_recipe",
]
