"""Intervals of a level's figures: over requests with one repeat, over repeats and requests with
several; objectives judged on an interval's far end when the rule says so."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pytest_aifactory.loadgen.records import records_frame
from pytest_aifactory.metrics.catalog import SloObjective
from pytest_aifactory.metrics.intervals import (
    REPEATS_METHOD,
    REQUESTS_METHOD,
    mean_interval,
    statistic_intervals,
)
from pytest_aifactory.metrics.slo import breach_line, evaluate
from pytest_aifactory.metrics.summaries import mean_figures, summarize


def width(interval: tuple[float, float]) -> float:
    return interval[1] - interval[0]


def test_an_interval_holds_its_estimate_and_narrows_with_more_requests() -> None:
    rng = np.random.default_rng(1)
    few = rng.lognormal(5.0, 0.5, 200)
    many = rng.lognormal(5.0, 0.5, 3200)
    few_intervals = statistic_intervals([few], 0.95)
    many_intervals = statistic_intervals([many], 0.95)
    for name, estimate in (("p50", np.percentile(few, 50)), ("mean", few.mean())):
        low, high = few_intervals[name]
        assert low < estimate < high, name
    # sixteen times the requests: about a quarter of the width
    ratio = width(many_intervals["p50"]) / width(few_intervals["p50"])
    assert 0.15 < ratio < 0.45, ratio


def test_the_request_bootstrap_covers_the_true_median_about_as_often_as_it_says() -> None:
    """Exponential samples, whose median is known: a 90% interval should hold it in about
    nine datasets out of ten, and should seldom hold a median 30% off."""
    rng = np.random.default_rng(7)
    true_median = 100.0 * math.log(2.0)
    held = off = 0
    datasets = 120
    for _ in range(datasets):
        values = rng.exponential(100.0, 150)
        low, high = statistic_intervals([values], 0.90, resamples=300, rng=rng)["p50"]
        held += low <= true_median <= high
        off += low <= 1.3 * true_median <= high
    assert 0.80 <= held / datasets <= 0.98, held
    assert off / datasets < 0.35, off


def test_repeats_apart_widen_the_interval_that_requests_alone_would_give() -> None:
    rng = np.random.default_rng(3)
    repeats = [rng.normal(centre, 10.0, 300) for centre in (100.0, 130.0, 160.0)]
    pooled = np.concatenate(repeats)
    as_one = statistic_intervals([pooled], 0.95)
    as_repeats = statistic_intervals(repeats, 0.95)
    assert width(as_repeats["mean"]) > 4 * width(as_one["mean"])
    # alike repeats: about the width of their requests pooled
    alike = [rng.normal(100.0, 10.0, 300) for _ in range(3)]
    ratio = width(statistic_intervals(alike, 0.95)["p50"]) / width(
        statistic_intervals([np.concatenate(alike)], 0.95)["p50"]
    )
    assert 0.6 < ratio < 2.5, ratio


def test_a_per_level_figure_needs_two_repeats_for_an_interval() -> None:
    assert mean_interval([12.0], 0.95) is None
    assert mean_interval([12.0, math.nan], 0.95) is None
    interval = mean_interval([10.0, 11.0, 12.0, 13.0, 14.0], 0.95)
    assert interval is not None
    low, high = interval
    assert 10.0 <= low < 12.0 < high <= 14.0


def test_per_level_figures_of_repeats_are_averaged_and_durations_added() -> None:
    combined = mean_figures(
        [
            {"duration_s": 10.0, "output_throughput": 100.0, "requested_rate": None},
            {"duration_s": 12.0, "output_throughput": 80.0, "requested_rate": None},
        ]
    )
    assert combined == {"duration_s": 22.0, "output_throughput": 90.0, "requested_rate": None}


def llm_rows(repeat: int, start: float, ttfts: list[float], gap_s: float) -> list[dict[str, Any]]:
    """Answered requests one after another, each 20 tokens long."""
    rows = []
    for index, ttft in enumerate(ttfts):
        send = start + index * gap_s
        rows.append(
            {
                "client": "chat",
                "level_label": "concurrency=1",
                "process": 0,
                "repeat": repeat,
                "request_id": index,
                "phase": "measure",
                "send_ts": send,
                "first_token_ts": send + ttft / 1000,
                "end_ts": send + gap_s,
                "ttft_ms": ttft,
                "e2el_ms": gap_s * 1000,
                "tpot_ms": (gap_s * 1000 - ttft) / 19,
                "itl_ms": [(gap_s * 1000 - ttft) / 19] * 19,
                "output_tokens": 20,
                "input_tokens": 32,
                "error": "",
            }
        )
    return rows


def three_repeats() -> pd.DataFrame:
    rng = np.random.default_rng(11)
    rows = []
    # the second repeat twice as fast per request, the third slow to first token
    for repeat, (centre, gap) in enumerate(((100.0, 0.5), (100.0, 0.25), (180.0, 0.5))):
        ttfts = list(rng.normal(centre, 5.0, 40).clip(min=1.0))
        rows += llm_rows(repeat, 1000.0 * (repeat + 1), ttfts, gap)
    return records_frame(rows)


def test_a_level_of_three_repeats_pools_requests_and_averages_rates() -> None:
    records = three_repeats()
    summary = summarize("openai", records)
    assert summary["counts"]["completed"] == 120
    assert summary["repeats"]["count"] == 3
    throughputs = [r["output_throughput"] for r in summary["repeats"]["per_level"]]
    # each repeat's own span: 40 requests x 20 tokens over 40 gaps (the last ends at its gap)
    assert throughputs == pytest.approx([40.0, 80.0, 40.0])
    assert summary["per_level"]["output_throughput"] == pytest.approx(np.mean(throughputs))
    assert summary["per_level"]["duration_s"] == pytest.approx(20.0 + 10.0 + 20.0)
    pooled = records["ttft_ms"].to_numpy()
    assert summary["per_request"]["ttft_ms"]["p50"] == pytest.approx(np.percentile(pooled, 50))
    intervals = summary["intervals"]
    assert intervals["method"] == REPEATS_METHOD
    assert intervals["repeats"] == 3
    low, high = intervals["per_request"]["ttft_ms"]["mean"]
    assert low < summary["per_request"]["ttft_ms"]["mean"] < high
    assert high - low > 30.0  # the third repeat's slow first tokens are in it
    low, high = intervals["per_level"]["output_throughput"]
    assert 40.0 <= low < high <= 80.0
    # min, max and std have no interval; neither does a metric no record holds
    assert "max" not in intervals["per_request"]["ttft_ms"]
    assert "reasoning_tokens" not in intervals["per_request"]


def test_one_repeat_gets_request_intervals_and_no_per_level_ones() -> None:
    records = records_frame(llm_rows(0, 1000.0, [100.0 + i for i in range(30)], 0.5))
    summary = summarize("openai", records)
    assert "repeats" not in summary
    assert summary["intervals"]["method"] == REQUESTS_METHOD
    assert summary["intervals"]["per_level"] == {}
    assert set(summary["intervals"]["per_request"]["ttft_ms"]) == {
        "mean",
        "p50",
        "p90",
        "p95",
        "p99",
        "p999",
    }


def test_an_objective_judged_on_its_interval_needs_the_whole_interval_within_bound() -> None:
    summary = summarize("openai", three_repeats())
    mean = summary["per_request"]["ttft_ms"]["mean"]
    low, high = summary["intervals"]["per_request"]["ttft_ms"]["mean"]
    between = SloObjective("chat", "ttft_ms", "mean", "max", (mean + high) / 2)
    (on_estimate,) = evaluate(summary, [between], "estimate")
    (on_interval,) = evaluate(summary, [between], "interval")
    assert on_estimate.passed
    assert on_estimate.value == pytest.approx(mean)
    assert not on_interval.passed
    assert on_interval.value == pytest.approx(high)
    assert on_interval.estimate == pytest.approx(mean)
    line = breach_line("chat", "concurrency=1", on_interval)
    assert "upper end of its 95% interval" in line
    assert f"estimate {mean:.1f}" in line
    record = on_interval.to_dict()
    assert record["judged_on"] == "interval"
    assert record["interval"] == pytest.approx([low, high])
    # a lower bound is judged on the lower end
    floor = SloObjective("chat", "output_throughput", None, "min", 50.0)
    (throughput,) = evaluate(summary, [floor], "interval")
    assert throughput.value == pytest.approx(
        summary["intervals"]["per_level"]["output_throughput"][0]
    )


def test_a_figure_without_an_interval_is_judged_on_itself_and_says_so() -> None:
    records = records_frame(llm_rows(0, 1000.0, [100.0] * 10, 0.5))
    summary = summarize("openai", records)
    floor = SloObjective("chat", "output_throughput", None, "min", 1.0)
    (outcome,) = evaluate(summary, [floor], "interval")
    assert outcome.passed
    assert outcome.judged_on == "estimate"
    assert outcome.interval == []
