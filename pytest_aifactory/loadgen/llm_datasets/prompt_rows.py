"""Prompt files read and checked: a user's own prompts, one per JSONL line, CSV row or Parquet
row, for the `file` dataset.

A row gives `prompt` (text) or `messages` (a chat: a list of {role, content}, sent as it is;
in CSV a JSON text), and may give `output_tokens` (the tokens to ask for) and `timestamp`
(seconds; read and kept for replaying arrivals, otherwise unused). Other columns are ignored.
The recipe's checks and the client job read a file with the same code, so a mistake is named
with its file, line or row and key before any job starts. Only the standard library (and
pyarrow, for Parquet) is needed: the driver imports this.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_aifactory.loadgen.llm_datasets.row_files import Row, jsonl_rows, parquet_rows

FORMATS = {".jsonl": "jsonl", ".csv": "csv", ".parquet": "parquet"}
TEXT_KEYS = ("prompt", "messages")
MAX_PROBLEMS = 10
"""Problems reported of one file: the first ones show what is wrong."""


@dataclass(frozen=True)
class PromptRow:
    prompt: str | None
    messages: tuple[dict[str, Any], ...] | None
    output_tokens: int | None
    timestamp: float | None

    @property
    def text(self) -> str:
        """What is counted: the prompt, or the messages' contents one after the other."""
        if self.messages is None:
            return self.prompt or ""
        return "\n".join(str(m.get("content", "")) for m in self.messages)


class PromptFileError(ValueError):
    """A prompt file that cannot be used; `problems` names each mistake's line or row and key."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        super().__init__(f"{path}: " + "; ".join(problems))


def file_format(path: Path) -> str | None:
    return FORMATS.get(path.suffix.lower())


def _missing(value: Any) -> bool:
    return value is None or value == "" or (isinstance(value, float) and math.isnan(value))


def _count(value: Any, text_cell: bool) -> int:
    """A positive whole number, from a number or (CSV) its text."""
    if text_cell and isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ValueError(f"expected a whole number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a whole number, got {value!r}")
    if not float(value).is_integer() or value < 1:
        raise ValueError(f"expected a whole number of at least 1, got {value!r}")
    return int(value)


def _seconds(value: Any, text_cell: bool) -> float:
    if text_cell and isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ValueError(f"expected seconds (a number), got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected seconds (a number), got {value!r}")
    if not math.isfinite(float(value)):
        raise ValueError(f"expected a finite number, got {value!r}")
    return float(value)


def _messages(value: Any, text_cell: bool) -> tuple[dict[str, Any], ...]:
    if text_cell and isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError("expected a JSON list of {role, content}") from None
    if not isinstance(value, list) or not value:
        raise ValueError("expected a non-empty list of {role, content}")
    for index, message in enumerate(value):
        if not (
            isinstance(message, Mapping)
            and isinstance(message.get("role"), str)
            and isinstance(message.get("content"), str)
        ):
            raise ValueError(f"message {index}: expected {{role: text, content: text}}")
    return tuple(dict(m) for m in value)


def parse_row(row: Mapping[str, Any], text_cells: bool = False) -> tuple[PromptRow | None, str]:
    """A row as a prompt, or None and what is wrong with it (its key named)."""
    prompt, messages = row.get("prompt"), row.get("messages")
    has_prompt, has_messages = not _missing(prompt), not _missing(messages)
    if has_prompt == has_messages:
        what = "both" if has_prompt else "neither"
        return None, f"give prompt (text) or messages (a chat), not {what}"
    if has_prompt and not isinstance(prompt, str):
        return None, f"key 'prompt': expected text, got {type(prompt).__name__}"
    parsed: dict[str, Any] = {"prompt": prompt if has_prompt else None, "messages": None}
    for key, parse in (("messages", _messages), ("output_tokens", _count), ("timestamp", _seconds)):
        value = row.get(key)
        if key == "messages" and not has_messages:
            continue
        if _missing(value):
            parsed[key] = None
            continue
        try:
            parsed[key] = parse(value, text_cells)
        except ValueError as err:
            return None, f"key '{key}': {err}"
    return PromptRow(**parsed), ""


def _jsonl_rows(path: Path) -> Iterator[Row]:
    return jsonl_rows(path, " with prompt or messages")


def _parquet_rows(path: Path) -> Iterator[Row]:
    return parquet_rows(path, TEXT_KEYS)


def _csv_rows(path: Path) -> Iterator[tuple[str, Mapping[str, Any] | None, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not set(TEXT_KEYS) & set(reader.fieldnames):
            yield "header", None, "needs a prompt or messages column"
            return
        for row in reader:
            yield f"line {reader.line_num}", row, ""


def read_rows(path: Path, required: tuple[str, ...] = ()) -> tuple[list[PromptRow], list[str]]:
    """The file's prompts and its problems (at most MAX_PROBLEMS, each with its line or row);
    a row without one of the `required` keys (`timestamp` for a trace) is a problem too."""
    kind = file_format(path)
    if kind is None:
        hint = " (vectors are for vectordb clients)" if path.suffix.lower() == ".npy" else ""
        return [], [f"expected a .jsonl, .csv or .parquet file of prompts{hint}"]
    reader = {"jsonl": _jsonl_rows, "csv": _csv_rows, "parquet": _parquet_rows}[kind]
    rows: list[PromptRow] = []
    problems: list[str] = []
    try:
        for where, raw, problem in reader(path):
            if raw is not None:
                row, problem = parse_row(raw, text_cells=kind == "csv")
                absent = [key for key in required if row is not None and getattr(row, key) is None]
                if absent:
                    row, problem = None, f"key '{absent[0]}': required on every row"
                if row is not None:
                    rows.append(row)
            if problem:
                problems.append(f"{where}: {problem}")
                if len(problems) >= MAX_PROBLEMS:
                    break
    except FileNotFoundError:
        return [], ["no such file"]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        return [], [f"cannot read: {err}"]
    if not rows and not problems:
        problems.append("holds no prompts")
    return rows, problems


def check_prompt_file(path: Path, api: str) -> list[str]:
    """What is wrong with a prompt file for a client of this api (nothing: an empty list)."""
    rows, problems = read_rows(path)
    if api != "chat" and not problems:
        chats = [i for i, row in enumerate(rows, 1) if row.messages is not None]
        if chats:
            problems.append(
                f"prompt {chats[0]} and {len(chats) - 1} more give messages: a chat needs api: chat"
                if len(chats) > 1
                else f"prompt {chats[0]} gives messages: a chat needs api: chat"
            )
    return problems


def load_prompt_rows(path: Path) -> list[PromptRow]:
    rows, problems = read_rows(path)
    if problems:
        raise PromptFileError(path, problems)
    return rows
