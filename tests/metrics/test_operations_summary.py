"""Statistics of operation-based kinds (vector search, S3, SQL, Triton) from their records."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest

from pytest_aifactory.loadgen.records import RECORD_FIELDS, extra_of, records_frame
from pytest_aifactory.metrics.catalog import SloObjective
from pytest_aifactory.metrics.operations import MIB, summarize_operations
from pytest_aifactory.metrics.slo import evaluate
from pytest_aifactory.metrics.summaries import summarize


def op(
    op: str,
    send: float,
    latency_ms: float,
    phase: str = "measure",
    error: str = "",
    process: int = 0,
    **fields: Any,
) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(RECORD_FIELDS)
    row.update(
        client="c",
        level_label="concurrency=1",
        node="n1",
        process=process,
        request_id=0,
        phase=phase,
        op=op,
        send_ts=send,
        end_ts=send + latency_ms / 1000,
        latency_ms=latency_ms,
        queue_ms=0.0,
        error=error,
        **fields,
    )
    return row


def frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return records_frame(rows)


def test_s3_mix_gives_ops_bytes_and_per_op_figures() -> None:
    rows = [
        op("GET", 100.0, 10.0, bytes=MIB, ttfb_ms=2.0),
        op("GET", 100.5, 20.0, bytes=MIB, ttfb_ms=4.0),
        op("PUT", 101.0, 30.0, bytes=2 * MIB),
        op("GET", 101.5, 40.0, error="ChecksumMismatch: GET k1: sha256 differs", bytes=MIB),
        # ends last: the level lasts from 100.0 to 102.0 s
        op("DELETE", 101.99, 10.0),
    ]
    summary = summarize_operations(frame(rows), "s3")
    level = summary["per_level"]
    assert summary["counts"] == {"sent": 5, "completed": 4, "failed": 1, "good": 4}
    assert level["duration_s"] == pytest.approx(2.0)
    assert level["ops_s"] == pytest.approx(4 / 2.0)
    # the failed GET's bytes do not count as moved
    assert level["throughput_mib_s"] == pytest.approx(4 / 2.0)
    assert level["error_rate"] == pytest.approx(0.2)
    assert summary["errors"] == {"ChecksumMismatch": 1}
    assert summary["per_request"]["ttfb_ms"]["max"] == pytest.approx(4.0)
    gets = summary["by_op"]["GET"]
    assert (gets["count"], gets["failed"]) == (3, 1)
    assert gets["latency_ms"]["max"] == pytest.approx(20.0)
    assert summary["by_op"]["PUT"]["throughput_mib_s"] == pytest.approx(1.0)


def test_vector_search_recall_inserts_and_index_build() -> None:
    rows = [
        op("insert", 10.0, 500.0, phase="setup", items=1000, process=0),
        op("insert", 10.5, 500.0, phase="setup", items=1000, process=0),
        op("insert", 10.0, 1000.0, phase="setup", items=1000, process=1),
        op("index_build", 11.0, 2500.0, phase="setup", process=0),
        op("index_build", 11.0, 1500.0, phase="setup", process=1),
        op("query", 20.0, 5.0, recall=1.0),
        op("query", 20.5, 5.0, recall=0.8),
        op("query", 21.0, 5.0, recall=0.6, error="TimeoutError: "),
    ]
    summary = summarize_operations(frame(rows), "vectordb")
    level = summary["per_level"]
    # setup rows are not queries
    assert summary["counts"]["sent"] == 3
    assert level["recall_at_k"] == pytest.approx(0.9)
    assert level["qps"] == level["request_throughput"]
    # process 0: 2000 vectors in 1 s; process 1: 1000 in 1 s
    assert level["insert_throughput"] == pytest.approx(3000.0)
    assert level["index_build_s"] == pytest.approx(2.5)


def test_throughput_names_per_kind_and_slo_on_them() -> None:
    rows = [op("tpcb", 1.0 + i * 0.1, 2.0) for i in range(11)]
    summary = summarize("sql", frame(rows))
    assert summary["per_level"]["tps"] == pytest.approx(11 / 1.002)
    assert "qps" not in summary["per_level"]
    outcomes = evaluate(
        summary,
        [
            SloObjective("c", "tps", None, "min", 5.0),
            SloObjective("c", "latency_ms", "p99", "max", 1.0),
        ],
    )
    assert [o.passed for o in outcomes] == [True, False]
    assert outcomes[1].value == pytest.approx(2.0)
    triton = summarize("triton", frame([op("infer", 1.0, 3.0), op("infer", 2.0, 3.0)]))
    assert triton["per_level"]["request_throughput"] == pytest.approx(2 / 1.003)


def test_nothing_completed_has_zero_throughput_and_an_error_rate_of_one() -> None:
    rows = [op("GET", 1.0, 5.0, error="ClientConnectorError: refused") for _ in range(3)]
    summary = summarize_operations(frame(rows), "s3")
    assert summary["per_level"]["ops_s"] == 0.0
    assert summary["per_level"]["error_rate"] == 1.0
    assert summary["per_request"]["latency_ms"]["p50"] is None


def test_extra_is_kept_as_json_and_read_back() -> None:
    rows = [op("read", 1.0, 1.0, extra={"iops": 12.5, "clat_ms": {"p99": 0.3}}), op("x", 2, 1)]
    records = frame(rows)
    assert extra_of(records["extra"][0]) == {"clat_ms": {"p99": 0.3}, "iops": 12.5}
    assert extra_of(records["extra"][1]) == {}
