"""Records written while the load runs, read back after; progress files."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pytest_aifactory.loadgen.progress import Progress, read_progress
from pytest_aifactory.loadgen.records import (
    RECORD_FIELDS,
    Clock,
    RecordWriter,
    read_records,
    write_parquet,
)


def record(request_id: int, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict.fromkeys(RECORD_FIELDS)
    base.update(
        client="chat",
        level_label="concurrency=1",
        node="n1",
        process=0,
        request_id=request_id,
        phase="measure",
        send_ts=1000.0 + request_id,
        ttft_ms=12.5,
        itl_ms=[1.0, 2.5],
        output_tokens=3,
        input_tokens=16,
        tokens_estimated=False,
        content_events=3,
        http_status=200,
        error="",
    )
    base.update(fields)
    return base


def lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_writer_is_private_and_flushes_by_count(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "p0.jsonl"
    writer = RecordWriter(path, every_s=3600, every_records=64)
    assert path.stat().st_mode & 0o777 == 0o600
    for i in range(63):
        writer.add(record(i))
    assert lines(path) == 0, "still batching"
    writer.add(record(63))
    assert lines(path) == 64
    writer.add(record(64))
    writer.close()
    assert lines(path) == 65


def test_writer_flushes_by_time(tmp_path: Path) -> None:
    path = tmp_path / "p0.jsonl"
    writer = RecordWriter(path, every_s=0.05, every_records=1000)
    writer.add(record(0))
    time.sleep(0.06)
    writer.add(record(1))
    assert lines(path) == 2
    writer.close()


def test_read_back_with_dtypes(tmp_path: Path) -> None:
    path = tmp_path / "p0.jsonl"
    with RecordWriter(path) as writer:
        writer.add(record(0))
        writer.add(
            record(
                1,
                ttft_ms=None,
                itl_ms=[],
                output_tokens=None,
                http_status=None,
                error="Timeout: no response within 30 s",
            )
        )
    frame = read_records([path])
    assert list(frame.columns) == list(RECORD_FIELDS)
    assert frame["ttft_ms"].dtype == "float64"
    assert frame["ttft_ms"].isna().tolist() == [False, True]
    assert frame["output_tokens"].dtype == "Int64"
    assert frame["output_tokens"].isna().tolist() == [False, True]
    assert frame["request_id"].dtype == "int64"
    assert frame["tokens_estimated"].dtype == bool
    assert frame["itl_ms"].tolist() == [[1.0, 2.5], []]
    assert frame["error"].tolist() == ["", "Timeout: no response within 30 s"]


def test_merge_ignores_missing_files(tmp_path: Path) -> None:
    for process in range(2):
        with RecordWriter(tmp_path / f"p{process}.jsonl") as writer:
            for i in range(3):
                writer.add(record(i, process=process))
    frame = read_records(tmp_path / f"p{i}.jsonl" for i in range(3))
    assert len(frame) == 6
    assert sorted(frame["process"].unique()) == [0, 1]
    empty = read_records([tmp_path / "none.jsonl"])
    assert len(empty) == 0
    assert list(empty.columns) == list(RECORD_FIELDS)


def test_torn_last_line_is_dropped_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "p0.jsonl"
    with RecordWriter(path) as writer:
        writer.add(record(0))
        writer.add(record(1))
    with path.open("a") as handle:
        handle.write(json.dumps(record(2))[:40])
    with pytest.warns(UserWarning, match="dropped unreadable last line"):
        frame = read_records([path])
    assert frame["request_id"].tolist() == [0, 1]


def test_parquet_keeps_itl_lists(tmp_path: Path) -> None:
    path = tmp_path / "p0.jsonl"
    with RecordWriter(path) as writer:
        writer.add(record(0))
        writer.add(record(1, itl_ms=[]))
    frame = read_records([path]).assign(test_id="t1")
    target = write_parquet(frame, tmp_path / "out" / "records.parquet")
    table = pq.read_table(target)
    assert table.schema.field("itl_ms").type == pa.list_(pa.float64())
    assert table.column_names[: len(RECORD_FIELDS)] == list(RECORD_FIELDS)
    assert "test_id" in table.column_names
    assert table.column("itl_ms").to_pylist() == [[1.0, 2.5], []]
    empty = write_parquet(read_records([]), tmp_path / "empty.parquet")
    assert pq.read_table(empty).num_rows == 0


def test_clock_differences_are_monotonic_and_absolute_values_wall() -> None:
    clock = Clock()
    start = clock.now_ns()
    time.sleep(0.01)
    end = clock.now_ns()
    assert clock.wall(end) - clock.wall(start) == pytest.approx((end - start) / 1e9, abs=1e-6)
    assert clock.wall(clock.now_ns()) == pytest.approx(time.time(), abs=0.05)
    assert clock.wall(None) is None
    target = time.time() + 5
    assert clock.wall(clock.ns_at(target)) == pytest.approx(target, abs=1e-6)


def test_progress_file_and_aggregate(tmp_path: Path) -> None:
    paths = []
    for process, ttfts in enumerate([[10.0, 20.0, 30.0], [40.0]]):
        progress = Progress(
            tmp_path / f"p{process}.json",
            client="chat",
            level_label="rate=4",
            process=process,
            total=10,
            duration_s=None,
        )
        for ttft in ttfts:
            progress.on_sent()
            progress.on_done({"error": "", "ttft_ms": ttft, "output_tokens": 5})
        progress.on_sent()
        progress.on_done({"error": "HTTPError: 503", "ttft_ms": None})
        progress.elapsed_s = 1.5 + process
        progress.write(done=process == 0)
        paths.append(progress.path)
        assert progress.path.stat().st_mode & 0o777 == 0o600
    single = json.loads(paths[0].read_text())
    assert single["ttft_p50_ms"] == 20.0
    assert single["done"] is True
    merged = read_progress([*paths, tmp_path / "missing.json"])
    assert merged["sent"] == 6
    assert merged["completed"] == 4
    assert merged["failed"] == 2
    assert merged["output_tokens"] == 20
    assert merged["elapsed_s"] == 2.5
    assert merged["total"] == 20
    assert merged["ttft_p50_ms"] == 30.0
    assert merged["done"] is False
    assert read_progress([tmp_path / "missing.json"]) == {}


def test_progress_ttft_window_is_bounded(tmp_path: Path) -> None:
    progress = Progress(
        tmp_path / "p.json", client="c", level_label="l", process=0, total=None, duration_s=5.0
    )
    for _ in range(1000):
        progress.on_done({"error": "", "ttft_ms": 1000.0})
    for _ in range(512):
        progress.on_done({"error": "", "ttft_ms": 1.0})
    assert progress.snapshot()["ttft_p50_ms"] == 1.0
