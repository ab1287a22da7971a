"""Per-request records: written as JSON Lines while the load runs, merged into a DataFrame after.

Each client process appends to its own file in small batches, so a crash or a cancelled job
leaves everything measured up to the last half second; a line torn by a crash is dropped when
the files are read back, with a warning, never an error.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

if TYPE_CHECKING:
    import pandas as pd

try:
    import orjson
except ImportError:  # pragma: no cover - the standard encoder works, only slower
    orjson = None  # type: ignore[assignment]

FLUSH_EVERY_S = 0.5
FLUSH_EVERY_RECORDS = 64

ColumnType = Literal["str", "int", "nullable_int", "float", "bool", "list", "json"]

RECORD_COLUMNS: dict[str, ColumnType] = {
    "client": "str",
    "level_label": "str",
    "node": "str",
    "process": "int",
    "repeat": "int",
    "request_id": "int",
    "phase": "str",
    "scheduled_ts": "float",
    "send_ts": "float",
    "first_token_ts": "float",
    "end_ts": "float",
    "queue_ms": "float",
    "connect_ms": "float",
    "resends": "nullable_int",
    "ttft_ms": "float",
    "ttfo_ms": "float",
    "e2el_ms": "float",
    "tpot_ms": "float",
    "itl_ms": "list",
    "output_tokens": "nullable_int",
    "input_tokens": "nullable_int",
    "reasoning_tokens": "nullable_int",
    "cached_tokens": "nullable_int",
    "tokens_estimated": "bool",
    "prompt_tokens_exact": "bool",
    "content_events": "int",
    "http_status": "nullable_int",
    "error": "str",
    "model": "str",
    "replica": "nullable_int",
    "replica_address": "str",
    "session_id": "nullable_int",
    "turn": "nullable_int",
    "session_turns": "nullable_int",
    "op": "str",
    "latency_ms": "float",
    "ttfb_ms": "float",
    "bytes": "nullable_int",
    "items": "nullable_int",
    "recall": "float",
    "extra": "json",
}
"""Every column of a record with its type, in file and DataFrame order (docs/metrics.md).

`connect_ms` is the time an HTTP request spent getting a connection (0 for a reused pooled
one), `resends` how often it was sent again after finding its pooled connection closed.
`ttfo_ms` is the time to the first answer token (after any reasoning), `reasoning_tokens` how
many of `output_tokens` were reasoning, `cached_tokens` how many of `input_tokens` the
server said it served from its prefix cache (None: it did not say), `prompt_tokens_exact`
whether the prompt's length was counted by the server's tokenizer (False: estimated). The
LLM fields come first; `op` to `extra` serve the other kinds: the operation's name, its
latency, an object GET's time to first byte, payload bytes, items handled (vectors, rows,
I/Os), a query's recall@k, and a kind's own detail as a JSON object. `model` is the model an
`openai` request named (one of a mix); `replica` which of the service's servers it went to (an
index into its list of URLs), `replica_address` that server's host:port. A turn of a
multi-turn session (a `conversation` dataset) names its `session_id` (the process's count of
sessions: unique with `process` and `repeat`), its `turn` (0 for the first) and the
`session_turns` the session was to send. `repeat` says which measurement of the level the
record belongs to (`load.repeats`; 0 for the first)."""

RECORD_FIELDS: tuple[str, ...] = tuple(RECORD_COLUMNS)


def _columns(of_type: ColumnType) -> tuple[str, ...]:
    return tuple(name for name, kind in RECORD_COLUMNS.items() if kind == of_type)


STRING_COLUMNS = _columns("str")
INT_COLUMNS = _columns("int")
NULLABLE_INT_COLUMNS = _columns("nullable_int")
FLOAT_COLUMNS = _columns("float")
BOOL_COLUMNS = _columns("bool")
LIST_COLUMNS = _columns("list")
JSON_COLUMNS = _columns("json")
"""Held as JSON text in DataFrames and Parquet (a kind's detail has no fixed shape); read a
cell back with `extra_of`."""


def new_record(
    spec: Any, node: str, request_id: int, phase: str, scheduled_ts: float | None = None
) -> dict[str, Any]:
    """A record of one operation of a load process (`spec` is its `LoadSpec`): every field
    present, its identity filled in, its measurements empty."""
    record: dict[str, Any] = dict.fromkeys(RECORD_FIELDS)
    record.update(
        client=spec.client,
        level_label=spec.level_label,
        node=node,
        process=spec.process,
        repeat=spec.repeat,
        request_id=request_id,
        phase=phase,
        scheduled_ts=scheduled_ts,
        itl_ms=[],
        tokens_estimated=False,
        content_events=0,
        error="",
    )
    return record


class Clock:
    """Wall-clock timestamps with monotonic precision.

    One (time.time(), perf_counter_ns) pair is taken when the process starts; every timestamp is
    the anchor plus a perf_counter offset, so differences between timestamps of one process are
    exact and the absolute values still line up (to NTP accuracy) across processes and nodes.
    """

    def __init__(self) -> None:
        self.anchor_ns = time.perf_counter_ns()
        self.anchor_wall = time.time()

    @staticmethod
    def now_ns() -> int:
        return time.perf_counter_ns()

    def wall(self, ns: int | None) -> float | None:
        if ns is None:
            return None
        return self.anchor_wall + (ns - self.anchor_ns) / 1e9

    def ns_at(self, wall: float) -> int:
        """The perf_counter_ns value at which `time.time()` will read `wall`."""
        return self.anchor_ns + int((wall - self.anchor_wall) * 1e9)


def record_line(record: dict[str, Any]) -> str:
    """One record as a JSON line. It is encoded on the load's event loop, between the reads it
    times, so the fast encoder is used where installed (a NaN becomes null either way)."""
    if orjson is not None:
        try:
            return orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY).decode() + "\n"
        except TypeError:
            pass  # a type orjson does not know: the standard encoder says which
    return json.dumps(_without_nan(record), separators=(",", ":")) + "\n"


def _without_nan(record: dict[str, Any]) -> dict[str, Any]:
    return {
        k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()
    }


class RecordWriter:
    """Appends records to a private JSON Lines file in batches (time- and size-bound)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        every_s: float = FLUSH_EVERY_S,
        every_records: int = FLUSH_EVERY_RECORDS,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._file = os.fdopen(fd, "a", encoding="utf-8")
        self._pending: list[str] = []
        self._every_ns = int(every_s * 1e9)
        self._every_records = every_records
        self._last_flush_ns = time.perf_counter_ns()
        self.written = 0

    def add(self, record: dict[str, Any]) -> None:
        self._pending.append(record_line(record))
        if (
            len(self._pending) >= self._every_records
            or time.perf_counter_ns() - self._last_flush_ns >= self._every_ns
        ):
            self.flush()

    def flush(self) -> None:
        """Write what is pending in one call, so a crash tears at most the last line."""
        self._last_flush_ns = time.perf_counter_ns()
        if not self._pending or self._file.closed:
            return
        self._file.write("".join(self._pending))
        self._file.flush()
        self.written += len(self._pending)
        self._pending.clear()

    def close(self) -> None:
        if self._file.closed:
            return
        self.flush()
        os.fsync(self._file.fileno())
        self._file.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _parse_file(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    rows: list[dict[str, Any]] = []
    lines = text.split("\n")
    last = max((i for i, line in enumerate(lines, start=1) if line.strip()), default=0)
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict):
            where = "last line" if number == last else f"line {number}"
            warnings.warn(
                f"{path}: dropped unreadable {where} (torn by an interrupted write?)",
                stacklevel=3,
            )
            continue
        rows.append(row)
    return rows


def records_frame(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Records as a DataFrame with the documented dtypes (NaN/NA for nulls, lists for itl_ms)."""
    # deferred: pandas is slow to import and the clients writing records never need it
    import pandas as pd

    frame = pd.DataFrame.from_records(rows) if rows else pd.DataFrame()
    for column in RECORD_FIELDS:
        if column not in frame:
            frame[column] = pd.Series([None] * len(frame), dtype=object)
    extras = [c for c in frame.columns if c not in RECORD_FIELDS]
    frame = frame[[*RECORD_FIELDS, *extras]].copy()
    for column in STRING_COLUMNS:
        frame[column] = frame[column].fillna("").astype(str)
    for column in INT_COLUMNS:
        frame[column] = pd.to_numeric(frame[column]).fillna(0).astype("int64")
    for column in NULLABLE_INT_COLUMNS:
        frame[column] = pd.to_numeric(frame[column]).astype("Int64")
    for column in FLOAT_COLUMNS:
        frame[column] = pd.to_numeric(frame[column]).astype("float64")
    for column in BOOL_COLUMNS:
        frame[column] = frame[column].fillna(False).astype(bool)
    for column in LIST_COLUMNS:
        frame[column] = pd.Series(
            [_float_list(x) or [] for x in frame[column]],
            index=frame.index,
            dtype=object,
        )
    for column in JSON_COLUMNS:
        frame[column] = frame[column].map(_json_text).astype(str)
    return frame.reset_index(drop=True)


def _json_text(value: Any) -> str:
    if value is None or isinstance(value, str):
        return value or ""
    if isinstance(value, float) and value != value:  # NaN from a column without values
        return ""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)


def extra_of(value: Any) -> dict[str, Any]:
    """A record's `extra` cell as a dict ({} when it has none)."""
    if isinstance(value, dict):
        return value
    if not isinstance(value, str) or not value:
        return {}
    try:
        parsed = json.loads(value)
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def read_records(paths: Iterable[str | os.PathLike[str]]) -> pd.DataFrame:
    """Merge the record files of several processes; missing files add no rows."""
    rows: list[dict[str, Any]] = []
    for path in paths:
        rows.extend(_parse_file(Path(path)))
    return records_frame(rows)


def _float_list(value: Any) -> list[float] | None:
    if value is None or isinstance(value, float | str):
        return None
    return [float(v) for v in value]


def write_parquet(df: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Records (and any extra columns) as Parquet, itl_ms as list<double>."""
    # deferred: pyarrow is slow to import and the clients writing records never need it
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(
        df.drop(columns=list(LIST_COLUMNS), errors="ignore"), preserve_index=False
    )
    for column in LIST_COLUMNS:
        if column in df:
            values = [_float_list(x) for x in df[column]]
            position = list(df.columns).index(column)
            table = table.add_column(
                min(position, table.num_columns),
                column,
                pa.array(values, type=pa.list_(pa.float64())),
            )
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, target)
    return target


def read_parquet(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Records saved by `write_parquet`, with the same dtypes as `read_records` gives."""
    # deferred: pandas is slow to import and the clients writing records never need it
    import pandas as pd

    frame = pd.read_parquet(path)
    return records_frame(cast(list[dict[str, Any]], frame.to_dict("records")))
