"""The regression gate's noise test: a change counts only when worse than its tolerance and
when the bootstrap interval of the change, from both runs' requests, excludes no change."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pytest_aifactory.cli import main
from pytest_aifactory.report.compare import compare_runs, judge_metrics, load_run, regressions
from pytest_aifactory.report.noise import change_interval
from tests.report.test_compare import level_test, save_records, save_run

LABEL = "concurrency=1"


def latencies(seed: int, count: int, scale: float = 1.0) -> np.ndarray:
    """Lognormal TTFTs around 100 ms: the long right tail real servers show."""
    values: np.ndarray = np.random.default_rng(seed).lognormal(np.log(100.0), 0.5, count) * scale
    return values


def test_two_samples_of_one_setup_differ_within_their_noise() -> None:
    found = change_interval(latencies(1, 400), latencies(2, 400), "p99")
    assert found is not None
    assert found.low < 0.0 < found.high
    assert not found.excludes_no_change()


def test_a_real_slowdown_lies_outside_the_noise() -> None:
    found = change_interval(latencies(1, 400), latencies(2, 400, scale=1.5), "p50")
    assert found is not None
    assert found.low > 0.2
    assert found.low <= found.change <= found.high
    assert found.change == pytest.approx(0.5, abs=0.15)


def test_repeats_that_disagree_keep_a_change_within_their_noise() -> None:
    """Three loads per run, each a fifth faster or slower than the last: a run that happened to
    start high differs by more than its requests alone would allow, not by more than its
    repeats do."""
    baseline = [latencies(seed, 200, scale) for seed, scale in ((1, 0.8), (2, 1.0), (3, 1.2))]
    later = [latencies(seed, 200, scale) for seed, scale in ((4, 1.0), (5, 1.2), (6, 1.4))]
    as_requests = change_interval(np.concatenate(baseline), np.concatenate(later), "p50")
    as_repeats = change_interval(baseline, later, "p50")
    assert as_requests is not None
    assert as_repeats is not None
    assert as_requests.change == pytest.approx(as_repeats.change)
    assert as_requests.excludes_no_change()
    assert not as_repeats.excludes_no_change()
    assert as_repeats.count == 600


def test_the_interval_narrows_with_more_requests() -> None:
    few = change_interval(latencies(1, 50), latencies(2, 50), "p50")
    many = change_interval(latencies(1, 2000), latencies(2, 2000), "p50")
    assert few is not None
    assert many is not None
    assert (many.high - many.low) < (few.high - few.low) / 3


def test_the_same_runs_get_the_same_interval() -> None:
    first = change_interval(latencies(1, 300), latencies(2, 300), "p99")
    again = change_interval(latencies(1, 300), latencies(2, 300), "p99")
    assert first == again


@pytest.mark.parametrize(
    ("base", "new", "statistic"),
    [
        (latencies(1, 100), latencies(2, 100), "max"),  # a resample only repeats its max
        (np.array([100.0]), latencies(2, 100), "p50"),  # one value: nothing to resample
        (np.zeros(50), latencies(2, 50), "p50"),  # no relative change from zero
    ],
    ids=["max", "one-value", "zero-baseline"],
)
def test_no_interval_where_resampling_says_nothing(
    base: np.ndarray, new: np.ndarray, statistic: str
) -> None:
    assert change_interval(base, new, statistic) is None


def gated_pair(tmp_path: Path, scale: float, count: int) -> tuple[Path, Path]:
    """Two runs whose summaries carry the p50 of the TTFTs saved in their records."""
    roots = []
    for name, seed, factor in (("run-a", 1, 1.0), ("run-b", 2, scale)):
        values = latencies(seed, count, factor)
        test = level_test("chat", 1)
        test["per_request"]["ttft_ms"]["p50"] = float(np.percentile(values, 50))
        root = save_run(tmp_path, name, [test])
        save_records(root, "chat", LABEL, values)
        roots.append(root)
    return roots[0], roots[1]


def judged(a: Path, b: Path, tolerance: float) -> list[str]:
    comparison = compare_runs([load_run(a), load_run(b)], ["ttft_ms.p50"])
    return [j.outcome for j in judge_metrics(comparison, {"ttft_ms.p50": tolerance})]


def test_a_noisy_change_beyond_the_tolerance_is_not_a_regression(tmp_path: Path) -> None:
    # thirty requests a run: a 15% move of the median is within their noise
    a, b = gated_pair(tmp_path, scale=1.15, count=30)
    assert judged(a, b, 0.05) == ["within noise"]


def test_a_clear_change_beyond_the_tolerance_is_a_regression(tmp_path: Path) -> None:
    a, b = gated_pair(tmp_path, scale=1.6, count=300)
    assert judged(a, b, 0.05) == ["regressed"]
    comparison = compare_runs([load_run(a), load_run(b)], ["ttft_ms.p50"])
    (found,) = regressions(comparison, {"ttft_ms.p50": 0.05})
    assert found.interval is not None
    assert found.interval.low > 0
    assert "worse than the 5% tolerance and than the noise" in found.describe()


def test_a_clear_change_within_the_tolerance_is_not_a_regression(tmp_path: Path) -> None:
    a, b = gated_pair(tmp_path, scale=1.6, count=300)
    assert judged(a, b, 1.0) == ["within tolerance"]


def test_a_per_level_figure_is_judged_on_its_tolerance_alone(tmp_path: Path) -> None:
    a = save_run(tmp_path, "run-a", [level_test("chat", 1, throughput=100.0)])
    b = save_run(tmp_path, "run-b", [level_test("chat", 1, throughput=50.0)])
    comparison = compare_runs([load_run(a), load_run(b)], ["output_throughput"])
    (judgement,) = judge_metrics(comparison, {"output_throughput": 0.1})
    assert judgement.outcome == "tolerance alone"
    assert judgement.counts
    assert "judged on it alone" in judgement.describe()


def test_the_compare_command_says_how_each_metric_was_judged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = gated_pair(tmp_path, scale=1.6, count=300)
    gate = "ttft_ms.p50:5%,ttft_ms.p99:1000%"
    assert main(["compare", str(a), str(b), "--no-html", "--fail-on-regression", gate]) == 1
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("gate: ")]
    assert len(lines) == 2, out
    assert lines[0].endswith("excludes no change: regressed"), lines
    assert lines[1].endswith("within the 1000% tolerance"), lines
