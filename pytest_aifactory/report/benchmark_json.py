"""A run in pytest-benchmark's JSON format, so `pytest-benchmark list/compare` read our runs.

pytest-benchmark times one function many times; a load level instead yields one latency per
request. Each latency metric of each test becomes one benchmark entry whose rounds are the
requests (or, for inter-token latency, the gaps), in seconds, with pytest-benchmark's own
statistics. `extra_info` says so, since `ops` (1/mean) there is not a throughput; the real
throughputs, goodput and SLO verdict travel alongside in `extra_info`.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NotRequired, TypedDict

import numpy as np
import pandas as pd
import pytest_benchmark
from pytest_benchmark.plugin import pytest_benchmark_generate_machine_info
from pytest_benchmark.stats import Stats
from pytest_benchmark.utils import cached_property, get_commit_info, get_machine_id

from pytest_aifactory.loadgen.kinds import all_metrics
from pytest_aifactory.metrics.stats import describe, distribution, json_safe, measured, succeeded
from pytest_aifactory.summary_shapes import Counts, Figure, RunTestEntry, SloEntry

LATENCIES: dict[str, tuple[str, str, str]] = {
    "ttft": (
        "ttft_ms",
        "seconds per request (time to first token)",
        "each round is one request; ops is 1/mean, not a throughput",
    ),
    "tpot": (
        "tpot_ms",
        "seconds per output token after the first, per request (time per output token)",
        "each round is one request with more than one output token; ops is 1/mean, "
        "not a throughput",
    ),
    "itl": (
        "itl_ms",
        "seconds between consecutive content events (inter-token latency)",
        "each round is one gap, pooled over all requests; ops is 1/mean, not a throughput",
    ),
    "e2el": (
        "e2el_ms",
        "seconds per request (end-to-end latency)",
        "each round is one request; ops is 1/mean, not a throughput",
    ),
    "latency": (
        "latency_ms",
        "seconds per operation (query, object operation, transaction, inference)",
        "each round is one operation; ops is 1/mean, not a throughput",
    ),
    "ttfb": (
        "ttfb_ms",
        "seconds to the first byte of an object GET",
        "each round is one GET; ops is 1/mean, not a throughput",
    ),
}
"""Entry suffix -> (record column, what a value is, how to read the entry)."""


class BenchmarkTest(TypedDict):
    """One test as `to_benchmark_json` takes it: its summary.json entry and its records."""

    test_id: str
    name: str
    client: str
    level_label: str
    passed: bool
    slo: list[SloEntry]
    records: NotRequired[pd.DataFrame]
    """The test's measured records (its latencies become the entries' rounds)."""
    summary: NotRequired[RunTestEntry]


class BenchmarkRun(TypedDict):
    """A run as `to_benchmark_json` takes it; machine and commit info default to
    pytest-benchmark's own."""

    run_id: str
    recipe_name: str
    datetime: str | None
    tests: list[BenchmarkTest]
    machine_info: NotRequired[dict[str, Any] | None]
    commit_info: NotRequired[dict[str, Any] | None]


_ILLEGAL_NAME = re.compile(r'[\\/:*?<>|"\s]')
_COUNTER = re.compile(r"^(\d{4})_")


class _RoundStats(Stats):
    """pytest-benchmark's statistics, with the sums and sorts done by numpy.

    The base class computes means with exact fractions, which takes seconds for the hundreds of
    thousands of inter-token gaps of a long run; quartiles and outlier rules stay the library's.
    """

    def __init__(self, values: np.ndarray) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # pytest-benchmark: unannotated
        self._array = np.asarray(values, dtype=float)
        self.data = self._array.tolist()

    @cached_property
    def sorted_data(self) -> list[float]:
        ordered: list[float] = np.sort(self._array).tolist()
        return ordered

    @cached_property
    def total(self) -> float:
        return float(np.sum(self._array))

    @cached_property
    def mean(self) -> float:
        return float(np.mean(self._array))

    @cached_property
    def stddev(self) -> float:
        return float(np.std(self._array, ddof=1)) if self._array.size > 1 else 0.0

    @cached_property
    def median(self) -> float:
        return float(np.median(self._array))


def round_stats(values_s: Sequence[float] | np.ndarray) -> dict[str, Any]:
    """pytest-benchmark's `stats` block for rounds of the given durations (seconds)."""
    round_data = _RoundStats(np.asarray(values_s, dtype=float))
    stats: dict[str, Any] = round_data.as_dict()  # type: ignore[no-untyped-call]  # as above
    stats["iterations"] = 1
    return stats


def latency_seconds(records: pd.DataFrame, column: str) -> np.ndarray:
    """The finite values of one latency column of the successful requests, in seconds."""
    done = measured(records)
    return distribution(done[succeeded(done)], column) / 1000.0


@functools.cache
def _machine_info() -> dict[str, Any]:
    info: dict[str, Any] = pytest_benchmark_generate_machine_info()
    return info


@functools.cache
def _commit_info() -> dict[str, Any]:
    info: dict[str, Any] = get_commit_info()
    return info


def _level_unit(key: str) -> str:
    if key in all_metrics():
        return all_metrics()[key].unit
    return {"duration_s": "s", "requested_rate": "req/s"}.get(key, "")


def _param(name: str) -> str | None:
    match = re.search(r"\[(.*)\]$", name)
    return match.group(1) if match else None


def _entries(test: BenchmarkTest, run: BenchmarkRun) -> list[dict[str, Any]]:
    records = test.get("records")
    if records is None:
        records = pd.DataFrame()
    summary = test.get("summary")
    per_level: dict[str, Figure] = dict(summary.get("per_level") or {}) if summary else {}
    slo = list(test.get("slo") or [])
    entries = []
    for short, (column, unit, note) in LATENCIES.items():
        values = latency_seconds(records, column)
        if values.size == 0:
            continue
        shown = describe(values)
        extra = {
            "unit": unit,
            "note": note,
            "metric": column,
            "client": test.get("client"),
            "level": test.get("level_label"),
            "test_id": test.get("test_id"),
            "run_id": run.get("run_id"),
            "recipe": run.get("recipe_name"),
            "percentiles_s": {k: shown[k] for k in ("p50", "p90", "p95", "p99", "p999")},
            "requests": _summary_counts(test),
            **per_level,
            "per_level_units": {k: _level_unit(k) for k in per_level},
            "tokens_estimated": summary.get("tokens_estimated") if summary else None,
            "slo_passed": all(o.get("passed") for o in slo),
            "slo": slo,
            "passed": bool(test.get("passed")),
        }
        entries.append(
            {
                "group": test["name"],
                "name": f"{test['name']}::{short}",
                "fullname": f"{test['test_id']}::{short}",
                "params": {
                    "client": test.get("client"),
                    "level": test.get("level_label"),
                    "metric": short,
                },
                "param": _param(test["name"]),
                "extra_info": extra,
                "options": {"timer": "perf_counter_ns (load generator, per request)"},
                "stats": round_stats(values),
            }
        )
    return entries


def to_benchmark_json(run: BenchmarkRun) -> dict[str, Any]:
    """The run as pytest-benchmark writes one: machine and commit info, one entry per latency.

    Entries are named `<test name>::ttft` (and `::tpot`, `::itl`, `::e2el`) and grouped by test;
    a latency with no value (every request failed) has no entry. Machine and commit info come
    from pytest-benchmark's own helpers unless the run gives them.
    """
    tests = list(run.get("tests") or [])
    benchmarks = [entry for test in tests for entry in _entries(test, run)]
    machine_info = run.get("machine_info") or copy.deepcopy(_machine_info())
    commit_info = run.get("commit_info") or copy.deepcopy(_commit_info())
    data: dict[str, Any] = json_safe(
        {
            "machine_info": machine_info,
            "commit_info": commit_info,
            "benchmarks": benchmarks,
            "datetime": run.get("datetime"),
            "version": pytest_benchmark.__version__,
            "aifactory": {
                "run_id": run.get("run_id"),
                "recipe": run.get("recipe_name"),
                "tests": [
                    {
                        "test_id": t.get("test_id"),
                        "name": t.get("name"),
                        "client": t.get("client"),
                        "level": t.get("level_label"),
                        "passed": bool(t.get("passed")),
                        "counts": _summary_counts(t),
                    }
                    for t in tests
                ],
            },
        }
    )
    return data


def _summary_counts(test: BenchmarkTest) -> Counts | None:
    summary = test.get("summary")
    return summary.get("counts") if summary else None


def _next_counter(folder: Path) -> int:
    numbers = [
        int(m.group(1))
        for path in folder.glob("[0-9][0-9][0-9][0-9]_*.json")
        if (m := _COUNTER.match(path.name))
    ]
    return max(numbers, default=0) + 1


def save_benchmark_json(data: dict[str, Any], storage_dir: Path, run_name: str) -> Path:
    """Write `<storage_dir>/<machine id>/<NNNN>_<run_name>.json` with the next free counter.

    The machine id and numbering are pytest-benchmark's (`Linux-CPython-3.11-64bit`,
    `0001_...`), so `pytest-benchmark --storage file://<storage_dir> compare` finds the file.
    Characters pytest-benchmark forbids in a save name become '-'.
    """
    folder = Path(storage_dir) / str(get_machine_id())
    folder.mkdir(parents=True, exist_ok=True)
    name = _ILLEGAL_NAME.sub("-", run_name) or "run"
    text = json.dumps(json_safe(data), indent=4, ensure_ascii=True, allow_nan=False)
    while True:
        target = folder / f"{_next_counter(folder):04d}_{name}.json"
        try:
            with target.open("x", encoding="utf-8") as fh:
                fh.write(text)
        except FileExistsError:  # another process took this number first
            continue
        return target
