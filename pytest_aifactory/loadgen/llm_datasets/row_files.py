"""Rows of a user's JSONL or Parquet file, each with where it is (`line 3`, `row 3`) and what is
wrong with it, for the readers of prompt, conversation and trace files: one reader of the
formats, so every file kind names a mistake the same way. Standard library (and pyarrow, for
Parquet) only: the driver imports it to check files before any job starts.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

Row = tuple[str, Mapping[str, Any] | None, str]
"""(where, the row or None, the problem or "")."""


def jsonl_rows(path: Path, wants: str) -> Iterator[Row]:
    """One JSON object per non-blank line; `wants` says what an object must hold (for the
    message about a line that is JSON but no object)."""
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                yield f"line {number}", None, f"not JSON: {err.msg}"
                continue
            if not isinstance(row, dict):
                yield f"line {number}", None, f"expected a JSON object{wants}"
                continue
            yield f"line {number}", row, ""


def parquet_rows(path: Path, columns: tuple[str, ...]) -> Iterator[Row]:
    """Every row of a Parquet file that has at least one of `columns`."""
    import pyarrow.parquet as pq  # deferred: only Parquet files need it

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several kinds for a file that is not Parquet
        yield "file", None, f"not a Parquet file: {err}"
        return
    if not set(columns) & set(table.column_names):
        yield "columns", None, f"needs a {' or '.join(columns)} column"
        return
    for number, row in enumerate(table.to_pylist(), 1):
        yield f"row {number}", row, ""
