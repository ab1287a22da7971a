"""Statistics, throughputs, errors and goodput of a load level, on hand-computable records."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pytest_aifactory.metrics.catalog import STATISTICS, SloObjective
from pytest_aifactory.metrics.stats import describe, good_requests, json_safe, summarize_llm


def record(
    request_id: int,
    send_ts: float,
    ttft_ms: float = math.nan,
    itl: list[float] | None = None,
    input_tokens: float = 10,
    error: str = "",
    queue_ms: float = 0.0,
    phase: str = "measure",
    estimated: bool = False,
    connect_ms: float = 0.0,
    resends: int = 0,
) -> dict[str, Any]:
    """One request as the load generator writes it; latencies follow docs/metrics.md."""
    itl = list(itl or [])
    failed = bool(error)
    output_tokens = math.nan if failed else len(itl) + 1
    e2el = math.nan if failed else ttft_ms + sum(itl)
    tpot = (e2el - ttft_ms) / (output_tokens - 1) if not failed and output_tokens > 1 else math.nan
    return {
        "client": "chat",
        "level_label": "concurrency=2",
        "node": "n0",
        "process": 0,
        "request_id": request_id,
        "phase": phase,
        "scheduled_ts": send_ts - queue_ms / 1000,
        "send_ts": send_ts,
        "first_token_ts": math.nan if failed else send_ts + ttft_ms / 1000,
        "end_ts": math.nan if failed else send_ts + e2el / 1000,
        "queue_ms": queue_ms,
        "connect_ms": connect_ms,
        "resends": resends,
        "ttft_ms": math.nan if failed else ttft_ms,
        "e2el_ms": e2el,
        "tpot_ms": tpot,
        "itl_ms": [] if failed else itl,
        "output_tokens": output_tokens,
        "input_tokens": math.nan if failed else input_tokens,
        "tokens_estimated": estimated,
        "content_events": 0 if failed else len(itl) + 1,
        "http_status": 503 if failed else 200,
        "error": error,
    }


@pytest.fixture
def records() -> pd.DataFrame:
    """Three successes and one failure, sent every 0.5 s from t=100, plus one warmup request.

    ttft 100/200/300 ms; gaps [10, 20], [30], []: e2el 130/230/300 ms, 3/2/1 output tokens,
    tpot 15/30/none; the last success ends at 101.3, so the duration is 1.3 s.
    """
    return pd.DataFrame(
        [
            record(
                0,
                99.0,
                9999.0,
                [9999.0],
                input_tokens=999,
                phase="warmup",
                queue_ms=999,
                connect_ms=999,
                resends=9,
            ),
            record(1, 100.0, 100.0, [10.0, 20.0], input_tokens=10, queue_ms=0.0, connect_ms=0.4),
            record(2, 100.5, 200.0, [30.0], input_tokens=20, queue_ms=1.0, resends=1),
            record(3, 101.0, 300.0, [], input_tokens=30, queue_ms=2.0),
            record(
                4, 101.5, error="HTTPError: 503 Service Unavailable", queue_ms=3.0, connect_ms=0.8
            ),
        ]
    )


def test_describe_matches_hand_computed_percentiles() -> None:
    stats = describe([5.0, 1.0, 4.0, 2.0, 3.0])
    assert list(stats) == list(STATISTICS)
    assert stats["mean"] == 3.0
    assert stats["std"] == pytest.approx(math.sqrt(2.0))  # population std, as vLLM
    assert (stats["min"], stats["max"], stats["p50"]) == (1.0, 5.0, 3.0)
    # linear interpolation between order statistics: rank = q * (n - 1)
    assert stats["p90"] == pytest.approx(4.6)
    assert stats["p95"] == pytest.approx(4.8)
    assert stats["p99"] == pytest.approx(4.96)
    assert stats["p999"] == pytest.approx(4.996)


def test_describe_agrees_with_pandas_quantiles() -> None:
    values = np.random.default_rng(7).lognormal(3.0, 0.8, size=257)
    stats = describe(values)
    series = pd.Series(values)
    for name, q in {"p50": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99, "p999": 0.999}.items():
        assert stats[name] == pytest.approx(series.quantile(q))
    assert stats["std"] == pytest.approx(series.std(ddof=0))


def test_describe_of_nothing_is_nan_and_skips_missing_values() -> None:
    empty = describe([])
    assert set(empty) == set(STATISTICS)
    assert all(math.isnan(v) for v in empty.values())
    assert describe([math.nan, 4.0, math.nan, 2.0])["mean"] == 3.0


def test_counts_and_per_request_statistics(records: pd.DataFrame) -> None:
    summary = summarize_llm(records)
    assert summary["counts"] == {"sent": 4, "completed": 3, "failed": 1, "good": 3, "resends": 1}
    per_request = summary["per_request"]
    assert per_request["ttft_ms"]["mean"] == pytest.approx(200.0)
    assert per_request["ttft_ms"]["p99"] == pytest.approx(298.0)
    assert per_request["ttft_ms"]["std"] == pytest.approx(math.sqrt(20000 / 3))
    assert per_request["e2el_ms"]["max"] == pytest.approx(300.0)
    # tpot only for requests with more than one output token: (130-100)/2 and (230-200)/1
    assert per_request["tpot_ms"]["mean"] == pytest.approx(22.5)
    assert per_request["tpot_ms"]["min"] == pytest.approx(15.0)
    # queue time counts the failed request too, and never the warmup one
    assert per_request["queue_ms"]["mean"] == pytest.approx(1.5)
    # so does the time to get a connection (0 for a reused pooled one)
    assert per_request["connect_ms"]["mean"] == pytest.approx(0.3)
    assert per_request["connect_ms"]["max"] == pytest.approx(0.8)
    assert per_request["output_tokens"]["mean"] == pytest.approx(2.0)
    assert per_request["input_tokens"]["max"] == 30.0


def test_itl_is_pooled_over_requests(records: pd.DataFrame) -> None:
    itl = summarize_llm(records)["per_request"]["itl_ms"]
    pooled = np.array([10.0, 20.0, 30.0])
    assert itl["mean"] == pytest.approx(pooled.mean())
    assert itl["p50"] == pytest.approx(20.0)
    assert (itl["min"], itl["max"]) == (10.0, 30.0)


def test_itl_cells_may_be_arrays_as_read_back_from_parquet(records: pd.DataFrame) -> None:
    records = records.assign(itl_ms=[np.asarray(cell, dtype=float) for cell in records["itl_ms"]])
    assert summarize_llm(records)["per_request"]["itl_ms"]["mean"] == pytest.approx(20.0)


def test_duration_and_throughputs(records: pd.DataFrame) -> None:
    level = summarize_llm(records, requested_rate=2.0)["per_level"]
    assert level["duration_s"] == pytest.approx(1.3)  # first send 100.0 -> last end 101.3
    assert level["request_throughput"] == pytest.approx(3 / 1.3)
    assert level["output_throughput"] == pytest.approx(6 / 1.3)
    assert level["total_token_throughput"] == pytest.approx((6 + 60) / 1.3)
    assert level["error_rate"] == pytest.approx(0.25)
    assert level["achieved_rate"] == pytest.approx(3 / 1.5)
    assert level["requested_rate"] == 2.0
    assert summarize_llm(records)["per_level"]["requested_rate"] is None


def test_errors_are_counted_by_class() -> None:
    frame = pd.DataFrame(
        [
            record(0, 1.0, 50.0, [5.0]),
            record(1, 1.1, error="HTTPError: 503 Service Unavailable"),
            record(2, 1.2, error="HTTPError: 500 Internal Server Error"),
            record(3, 1.3, error="TimeoutError: no answer in 300 s"),
            record(4, 1.4, error="ConnectionReset"),
        ]
    )
    summary = summarize_llm(frame)
    assert summary["errors"] == {"HTTPError": 2, "TimeoutError": 1, "ConnectionReset": 1}
    assert summary["per_level"]["error_rate"] == pytest.approx(0.8)


def test_goodput_without_per_request_objectives_is_request_throughput(
    records: pd.DataFrame,
) -> None:
    level_only = [SloObjective("chat", "output_throughput", None, "min", 1000.0)]
    for objectives in ([], level_only):
        level = summarize_llm(records, objectives=objectives)["per_level"]
        assert level["goodput"] == pytest.approx(level["request_throughput"])


@pytest.mark.parametrize(
    ("objectives", "good"),
    [
        ([SloObjective("chat", "ttft_ms", "p99", "max", 250.0)], 2),
        ([SloObjective("chat", "ttft_ms", "p50", "max", 200.0)], 2),  # bound is inclusive
        # the request with one output token has no tpot and is not held to it
        ([SloObjective("chat", "tpot_ms", "p99", "max", 20.0)], 2),
        # itl uses each request's largest gap: 20 passes, 30 breaks, no gaps passes
        ([SloObjective("chat", "itl_ms", "p99", "max", 25.0)], 2),
        ([SloObjective("chat", "output_tokens", "p50", "min", 2.0)], 2),
        (
            [
                SloObjective("chat", "ttft_ms", "p99", "max", 250.0),
                SloObjective("chat", "itl_ms", "p99", "max", 25.0),
            ],
            1,
        ),
        ([SloObjective("chat", "e2el_ms", "p99", "max", 1.0)], 0),
    ],
)
def test_goodput_counts_requests_meeting_every_per_request_bound(
    records: pd.DataFrame, objectives: list[SloObjective], good: int
) -> None:
    summary = summarize_llm(records, objectives=objectives)
    assert summary["counts"]["good"] == good
    assert summary["per_level"]["goodput"] == pytest.approx(good / 1.3)
    assert summary["per_level"]["request_throughput"] == pytest.approx(3 / 1.3)


def test_failed_requests_are_never_good(records: pd.DataFrame) -> None:
    measured = records[records["phase"] == "measure"]
    good = good_requests(measured, [SloObjective("chat", "ttft_ms", "p99", "max", 1e9)])
    assert good.tolist() == [True, True, True, False]


def test_all_failed_level_is_strict_json_with_no_latency_values() -> None:
    frame = pd.DataFrame(
        [record(i, 10.0 + i, error="ClientConnectorError: refused") for i in (0, 1)]
    )
    summary = summarize_llm(frame, objectives=[SloObjective("chat", "ttft_ms", "p99", "max", 1)])
    json.dumps(summary, allow_nan=False)
    assert summary["counts"] == {"sent": 2, "completed": 0, "failed": 2, "good": 0, "resends": 0}
    assert set(summary["per_request"]["ttft_ms"].values()) == {None}
    assert summary["per_request"]["queue_ms"]["mean"] == 0.0
    level = summary["per_level"]
    assert level["duration_s"] is None
    assert level["request_throughput"] == level["output_throughput"] == level["goodput"] == 0.0
    assert level["error_rate"] == 1.0
    assert level["achieved_rate"] == pytest.approx(1.0)


@pytest.mark.parametrize("frame", [pd.DataFrame(), pd.DataFrame(columns=list(record(0, 0.0)))])
def test_no_requests_gives_no_values(frame: pd.DataFrame) -> None:
    summary = summarize_llm(frame)
    json.dumps(summary, allow_nan=False)
    assert summary["counts"] == {"sent": 0, "completed": 0, "failed": 0, "good": 0, "resends": 0}
    assert summary["per_level"]["error_rate"] is None
    assert summary["per_level"]["request_throughput"] is None
    assert summary["per_request"]["ttft_ms"]["p50"] is None
    assert summary["errors"] == {}
    assert summary["tokens_estimated"] is False


def test_one_request_has_no_achieved_rate() -> None:
    summary = summarize_llm(pd.DataFrame([record(0, 5.0, 40.0, [10.0])]))
    assert summary["per_level"]["achieved_rate"] is None
    assert summary["per_level"]["duration_s"] == pytest.approx(0.05)


def test_tokens_estimated_when_any_request_is(records: pd.DataFrame) -> None:
    assert summarize_llm(records)["tokens_estimated"] is False
    records.loc[2, "tokens_estimated"] = True
    assert summarize_llm(records)["tokens_estimated"] is True


def test_json_safe_makes_strict_json() -> None:
    value = {
        "a": math.nan,
        "b": [math.inf, -math.inf, 1.5, (np.float64(2.5), np.int64(3))],
        "c": {"d": np.float32("nan"), 4: np.bool_(True)},
        "e": np.array([1.0, np.nan]),
        "f": "text",
        "g": None,
    }
    safe = json_safe(value)
    assert safe == {
        "a": None,
        "b": [None, None, 1.5, [2.5, 3]],
        "c": {"d": None, "4": True},
        "e": [1.0, None],
        "f": "text",
        "g": None,
    }
    assert type(safe["b"][3][1]) is int
    json.dumps(safe, allow_nan=False)


def test_records_merged_without_a_new_index(records: pd.DataFrame) -> None:
    """Frames concatenated from several processes repeat index labels; nothing may misalign."""
    measured = records[records["phase"] == "measure"]
    merged = pd.concat([measured.iloc[:2], measured.iloc[2:]])
    merged.index = [0, 1, 0, 1]
    merged.loc[merged["request_id"] == 3, "itl_ms"] = None
    objectives = [SloObjective("chat", "ttft_ms", "p99", "max", 250.0)]
    summary = summarize_llm(merged, objectives=objectives)
    assert summary["counts"] == {"sent": 4, "completed": 3, "failed": 1, "good": 2, "resends": 1}
    assert summary["per_level"]["goodput"] == pytest.approx(2 / 1.3)
    assert summary["per_request"]["itl_ms"]["mean"] == pytest.approx(20.0)
