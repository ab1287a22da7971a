"""SLO verdicts, margins and the breach lines a failing test prints."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
import pytest

from pytest_aifactory.metrics.catalog import SloObjective
from pytest_aifactory.metrics.slo import SloOutcome, breach_line, evaluate, failure_message
from pytest_aifactory.metrics.stats import summarize_llm

TTFT_P99 = SloObjective("chat", "ttft_ms", "p99", "max", 2000.0)
TPOT_P50 = SloObjective("chat", "tpot_ms", "p50", "max", 100.0)
OUTPUT_MIN = SloObjective("chat", "output_throughput", None, "min", 20.0)
ERRORS_MAX = SloObjective("chat", "error_rate", None, "max", 0.0)


def summary(**per_level: Any) -> dict[str, Any]:
    return {
        "counts": {"sent": 64, "completed": 63, "failed": 1},
        "per_request": {
            "ttft_ms": {"p50": 800.0, "p99": 2315.2, "mean": 900.0},
            "tpot_ms": {"p50": 40.0, "p99": None},
        },
        "per_level": {"output_throughput": 15.3, "error_rate": 1 / 64, **per_level},
    }


def test_max_and_min_bounds_with_margins() -> None:
    ttft, tpot, output, errors = evaluate(summary(), [TTFT_P99, TPOT_P50, OUTPUT_MIN, ERRORS_MAX])
    assert (ttft.value, ttft.passed) == (2315.2, False)
    assert ttft.margin == pytest.approx((2000 - 2315.2) / 2000)
    assert (tpot.value, tpot.passed) == (40.0, True)
    assert tpot.margin == pytest.approx(0.6)
    assert (output.value, output.passed) == (15.3, False)
    assert output.margin == pytest.approx((15.3 - 20) / 20)
    assert errors.passed is False
    assert errors.margin is None  # no relative headroom against a zero bound


def test_bounds_are_inclusive() -> None:
    at_max = SloObjective("chat", "ttft_ms", "p50", "max", 800.0)
    at_min = SloObjective("chat", "output_throughput", None, "min", 15.3)
    outcomes = evaluate(summary(), [at_max, at_min])
    assert [o.passed for o in outcomes] == [True, True]
    assert [o.margin for o in outcomes] == [0.0, 0.0]


def test_a_missing_value_fails() -> None:
    tpot_p99 = SloObjective("chat", "tpot_ms", "p99", "max", 100.0)
    goodput = SloObjective("chat", "goodput", None, "min", 1.0)
    unknown_stat = SloObjective("chat", "e2el_ms", "p99", "max", 1.0)
    outcomes = evaluate(summary(goodput=float("nan")), [tpot_p99, goodput, unknown_stat])
    assert [o.passed for o in outcomes] == [False, False, False]
    assert all(o.value is None and o.margin is None for o in outcomes)
    assert "none gave a tpot_ms value" in outcomes[0].detail


def test_breach_line_for_a_latency() -> None:
    (outcome,) = evaluate(summary(), [TTFT_P99])
    assert breach_line("chat", "concurrency=8", outcome) == (
        "chat[concurrency=8] ttft_ms.p99 = 2315.2 ms > max 2000"
    )


def test_breach_line_for_a_throughput_and_a_ratio() -> None:
    output, errors = evaluate(summary(), [OUTPUT_MIN, ERRORS_MAX])
    assert breach_line("chat", "rate=2", output) == (
        "chat[rate=2] output_throughput = 15.3 tok/s < min 20"
    )
    assert breach_line("chat", "rate=2", errors) == "chat[rate=2] error_rate = 0.0156 ratio > max 0"


def test_breach_line_keeps_a_fractional_bound() -> None:
    tiny = SloObjective("strict", "ttft_ms", "p99", "max", 0.001)
    outcome = SloOutcome(tiny, 42.04, False, None)
    assert breach_line("strict", "concurrency=1", outcome) == (
        "strict[concurrency=1] ttft_ms.p99 = 42.0 ms > max 0.001"
    )


def test_breach_line_when_every_request_failed() -> None:
    records = pd.DataFrame(
        {
            "phase": ["measure"] * 64,
            "send_ts": [float(i) for i in range(64)],
            "queue_ms": [0.0] * 64,
            "error": ["HTTPError: 503 Service Unavailable"] * 64,
        }
    )
    (outcome,) = evaluate(summarize_llm(records), [TTFT_P99])
    assert outcome.passed is False
    assert breach_line("chat", "concurrency=8", outcome) == (
        "chat[concurrency=8] ttft_ms.p99 = no value (0 of 64 requests succeeded) > max 2000"
    )


def test_failure_message_has_one_line_per_breach() -> None:
    outcomes = evaluate(summary(), [TTFT_P99, TPOT_P50, OUTPUT_MIN])
    assert failure_message("chat", "concurrency=8", outcomes).splitlines() == [
        "chat[concurrency=8] ttft_ms.p99 = 2315.2 ms > max 2000",
        "chat[concurrency=8] output_throughput = 15.3 tok/s < min 20",
    ]
    assert failure_message("chat", "concurrency=8", evaluate(summary(), [TPOT_P50])) == ""
    assert failure_message("chat", "concurrency=8", []) == ""


def test_outcome_to_dict_is_json() -> None:
    ttft, missing = evaluate(summary(), [TTFT_P99, SloObjective("chat", "qps", None, "min", 1.0)])
    data = ttft.to_dict()
    assert data["key"] == "ttft_ms.p99"
    assert (data["value"], data["limit"], data["bound"], data["unit"]) == (
        2315.2,
        2000.0,
        "max",
        "ms",
    )
    assert data["passed"] is False
    assert data["margin"] == pytest.approx(-0.1576)
    json.dumps([data, missing.to_dict()], allow_nan=False)
    assert missing.to_dict()["value"] is None
