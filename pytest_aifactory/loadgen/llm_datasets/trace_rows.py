"""Request traces read and checked: when each request arrived and what it asked, in the layouts
of public traces, for the `trace` dataset.

- `mooncake`: JSON Lines `{"timestamp": ms, "input_length": n, "output_length": m,
  "hash_ids": [...]}` (Mooncake's published traces). Each hash id names one block of the
  prompt's tokens; requests that share a block id share that block's text.
- `burstgpt`: CSV with `Timestamp` (seconds), `Request tokens`, `Response tokens` (BurstGPT's
  columns; `Model`, `Total tokens`, `Log Type` and others are ignored). A row with 0 response
  tokens is a request that failed in the trace, and one with 0 request tokens has no prompt to
  send: both are left out.
- `file`: a prompt file as the `file` dataset reads it (`prompt_rows.py`), with `timestamp`
  (seconds) on every row.
- `auto`: told by the extension and the columns (a `.csv` with BurstGPT's columns, a `.jsonl`
  whose first entry has `input_length` or `hash_ids`; anything else is a prompt file).

Entries are returned in time order (a stable sort: entries of one instant keep the file's order).
The recipe's checks and the client job read a trace with the same code, so a mistake is named
with its file, line and key before any job starts. Only the standard library is needed (and
pyarrow for a Parquet prompt file): the driver imports this.
"""

from __future__ import annotations

import csv
import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_aifactory.loadgen.llm_datasets.prompt_rows import MAX_PROBLEMS, read_rows
from pytest_aifactory.loadgen.llm_datasets.row_files import jsonl_rows

FORMATS = ("auto", "mooncake", "burstgpt", "file")
MOONCAKE_KEYS = ("timestamp", "input_length", "output_length")
BURSTGPT_COLUMNS = ("Timestamp", "Request tokens", "Response tokens")


@dataclass(frozen=True)
class TraceEntry:
    """One request of a trace. `at_s`: when it arrived, in seconds on the trace's own clock.
    Synthetic layouts give `input_tokens` (and Mooncake `hash_ids`); a prompt file gives the
    text (`prompt` or `messages`). `output_tokens` None: the trace does not say."""

    at_s: float
    input_tokens: int | None = None
    output_tokens: int | None = None
    hash_ids: tuple[int, ...] = ()
    prompt: str | None = None
    messages: tuple[dict[str, Any], ...] | None = None


class TraceFileError(ValueError):
    """A trace that cannot be replayed; `problems` names each mistake's line and key."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        super().__init__(f"{path}: " + "; ".join(problems))


def _whole(value: Any, least: int) -> int:
    """A whole number of at least `least`, from a number or its text (CSV)."""
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ValueError(f"expected a whole number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a whole number, got {value!r}")
    if not math.isfinite(value) or not float(value).is_integer() or value < least:
        raise ValueError(f"expected a whole number of at least {least}, got {value!r}")
    return int(value)


def _instant(value: Any) -> float:
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ValueError(f"expected a time (a number), got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a time (a number), got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"expected a finite time of at least 0, got {value!r}")
    return float(value)


def _hash_ids(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise ValueError(f"expected a list of block ids, got {type(value).__name__}")
    for index, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, int) or item < 0:
            raise ValueError(f"item {index}: expected a whole number of at least 0, got {item!r}")
    return tuple(value)


def mooncake_entry(row: Mapping[str, Any]) -> TraceEntry:
    """One Mooncake line; ValueError names the key at fault."""
    for key in MOONCAKE_KEYS:
        if key not in row:
            raise ValueError(f"key '{key}': required")
    parsed: dict[str, Any] = {}
    checks = (
        ("timestamp", lambda v: _instant(v) / 1000.0),
        ("input_length", lambda v: _whole(v, 1)),
        ("output_length", lambda v: _whole(v, 1)),
        ("hash_ids", _hash_ids),
    )
    for key, check in checks:
        if key == "hash_ids" and key not in row:
            continue
        try:
            parsed[key] = check(row[key])
        except ValueError as err:
            raise ValueError(f"key '{key}': {err}") from None
    return TraceEntry(
        at_s=parsed["timestamp"],
        input_tokens=parsed["input_length"],
        output_tokens=parsed["output_length"],
        hash_ids=parsed.get("hash_ids", ()),
    )


def burstgpt_entry(row: Mapping[str, Any]) -> TraceEntry | None:
    """One BurstGPT row, or None for a request that failed in the trace (0 response tokens)
    or had no prompt (0 request tokens); ValueError names the column at fault."""
    values: dict[str, Any] = {}
    for column, check in (
        ("Timestamp", _instant),
        ("Request tokens", lambda v: _whole(v, 0)),
        ("Response tokens", lambda v: _whole(v, 0)),
    ):
        try:
            values[column] = check(row.get(column))
        except ValueError as err:
            raise ValueError(f"column '{column}': {err}") from None
    if values["Request tokens"] == 0 or values["Response tokens"] == 0:
        return None
    return TraceEntry(
        at_s=values["Timestamp"],
        input_tokens=values["Request tokens"],
        output_tokens=values["Response tokens"],
    )


def _read_mooncake(path: Path) -> tuple[list[TraceEntry], list[str]]:
    entries: list[TraceEntry] = []
    problems: list[str] = []
    for where, row, problem in jsonl_rows(path, ""):
        if row is not None:
            try:
                entries.append(mooncake_entry(row))
            except ValueError as err:
                problem = str(err)
        if problem:
            problems.append(f"{where}: {problem}")
            if len(problems) >= MAX_PROBLEMS:
                break
    return entries, problems


def _read_burstgpt(path: Path) -> tuple[list[TraceEntry], list[str]]:
    entries: list[TraceEntry] = []
    problems: list[str] = []
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in BURSTGPT_COLUMNS if c not in columns]
        if missing:
            return [], [f"header: needs the columns {', '.join(repr(c) for c in missing)}"]
        reader.fieldnames = columns
        for row in reader:
            try:
                entry = burstgpt_entry(row)
            except ValueError as err:
                problems.append(f"line {reader.line_num}: {err}")
                if len(problems) >= MAX_PROBLEMS:
                    break
                continue
            if entry is not None:
                entries.append(entry)
    return entries, problems


def _read_file(path: Path) -> tuple[list[TraceEntry], list[str]]:
    rows, problems = read_rows(path, required=("timestamp",))
    entries = [
        TraceEntry(
            at_s=row.timestamp or 0.0,
            output_tokens=row.output_tokens,
            prompt=row.prompt,
            messages=row.messages,
        )
        for row in rows
    ]
    return entries, problems


def detect_format(path: Path) -> str:
    """The layout `auto` reads a trace as: BurstGPT's columns in a `.csv`, Mooncake's keys on
    the first entry of a `.jsonl`; otherwise a prompt file (whose reader names what is
    wrong)."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            with path.open(encoding="utf-8", newline="") as handle:
                header = next(csv.reader(handle), [])
            if {c.strip() for c in header} >= set(BURSTGPT_COLUMNS):
                return "burstgpt"
        elif suffix == ".jsonl":
            for _, row, _ in jsonl_rows(path, ""):
                if row is not None and ("input_length" in row or "hash_ids" in row):
                    return "mooncake"
                break
    except (OSError, UnicodeDecodeError, csv.Error):
        pass  # the chosen reader says what is wrong
    return "file"


def read_trace(path: Path, layout: str = "auto") -> tuple[list[TraceEntry], list[str]]:
    """The trace's entries in time order and its problems (at most MAX_PROBLEMS, each with its
    line and key)."""
    if layout not in FORMATS:
        return [], [f"unknown trace format '{layout}' (expected one of {', '.join(FORMATS)})"]
    if layout == "auto":
        layout = detect_format(path)
    if layout == "mooncake" and path.suffix.lower() != ".jsonl":
        return [], ["a Mooncake trace is a .jsonl file (one JSON object a line)"]
    if layout == "burstgpt" and path.suffix.lower() != ".csv":
        return [], ["a BurstGPT trace is a .csv file"]
    reader = {"mooncake": _read_mooncake, "burstgpt": _read_burstgpt, "file": _read_file}[layout]
    try:
        entries, problems = reader(path)
    except FileNotFoundError:
        return [], ["no such file"]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        return [], [f"cannot read: {err}"]
    if not entries and not problems:
        problems.append(f"holds no requests to replay ({layout} trace)")
    return sorted(entries, key=lambda entry: entry.at_s), problems


def check_trace_file(path: Path, layout: str, api: str) -> list[str]:
    """What is wrong with a trace for a client of this api (nothing: an empty list)."""
    if api == "embeddings":
        return ["a trace replays generation requests: api completions or chat"]
    entries, problems = read_trace(path, layout)
    if api != "chat" and not problems:
        chats = [i for i, entry in enumerate(entries, 1) if entry.messages is not None]
        if chats:
            problems.append(f"{len(chats)} entries give messages: a chat needs api: chat")
    return problems


@functools.lru_cache(maxsize=4)
def _cached(path: Path, layout: str, stamp: tuple[int, int]) -> tuple[TraceEntry, ...]:
    entries, problems = read_trace(path, layout)
    if problems:
        raise TraceFileError(path, problems)
    return tuple(entries)


def load_trace(path: Path, layout: str = "auto") -> tuple[TraceEntry, ...]:
    """The entries in time order (read once per process and file version: every level of a
    client job replays the same trace), or TraceFileError."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise TraceFileError(path, ["no such file"]) from None
    return _cached(path, layout, (stat.st_mtime_ns, stat.st_size))


def replay_span_s(path: Path, layout: str, requests: int | None) -> float:
    """Seconds from the first to the last of the first `requests` entries (all: None) on the
    trace's own clock: how long a replay at speed 1 sends."""
    entries = load_trace(path, layout)[:requests]
    return entries[-1].at_s - entries[0].at_s if entries else 0.0
