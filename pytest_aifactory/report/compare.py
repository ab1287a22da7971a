"""Runs side by side: each test's statistics per run, the change against the first (baseline)
run, and which changes count as regressions.

Tests are matched across runs by client and load level, so a recipe may gain or lose levels
between runs and the rest still compares. Better or worse follows each metric's direction in
`metrics/catalog.py`: a lower TTFT is better, a lower throughput is worse. A regression gate
gives each metric a tolerance (`output_throughput:5%`): the metric regressed when it moved the
wrong way by more than that and, for a per-request statistic, by more than the two runs' noise
(`report/noise.py`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pytest_aifactory.cluster.run_records import RunNotFound, resolve_run
from pytest_aifactory.loadgen.kinds import all_metrics, higher_is_better
from pytest_aifactory.metrics.catalog import STATISTICS
from pytest_aifactory.numbers import finite_number
from pytest_aifactory.report.manifest import verify_run
from pytest_aifactory.report.noise import (
    DEFAULT_CONFIDENCE,
    ChangeInterval,
    Outcome,
    RunSamples,
    Samples,
    change_interval,
)
from pytest_aifactory.tabulate import format_table

Verdict = Literal["better", "worse", "same"]
TestKey = tuple[str, str]
"""(client, level_label): what makes a test of one run the same test in another."""

SUMMARY_FILE = "summary.json"
DEFAULT_STATISTICS: tuple[str, ...] = ("p50", "p99")
"""Statistics shown by default for each per-request metric."""
DEFAULT_SKIPPED: frozenset[str] = frozenset(
    {"output_tokens", "input_tokens", "queue_ms", "connect_ms", "achieved_rate"}
)
"""Not shown by default: properties of the workload or of the client, not of the service."""


class CompareError(Exception):
    """A run that cannot be read or a metric or tolerance that makes no sense; the message is
    meant for the user."""


# -- runs ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunView:
    """One run as saved in its summary.json."""

    root: Path
    summary: dict[str, Any] = field(repr=False)

    @property
    def run_id(self) -> str:
        return str(self.summary.get("run_id") or self.root.name)

    @property
    def recipe(self) -> str:
        return str((self.summary.get("recipe") or {}).get("name") or "")

    @property
    def started_at(self) -> str:
        return str(self.summary.get("started_at") or "")

    @property
    def status(self) -> str:
        return str(self.summary.get("status") or "")

    @property
    def verdict(self) -> str:
        return str(self.summary.get("verdict") or "")

    @property
    def tests(self) -> list[dict[str, Any]]:
        return list(self.summary.get("tests") or [])

    def tests_by_key(self) -> dict[TestKey, dict[str, Any]]:
        """The first test of each (client, level); a later duplicate is left out."""
        found: dict[TestKey, dict[str, Any]] = {}
        for test in self.tests:
            found.setdefault(test_key(test), test)
        return found


def test_key(test: Mapping[str, Any]) -> TestKey:
    return (str(test.get("client") or ""), str(test.get("level_label") or ""))


def test_label(key: TestKey) -> str:
    client, level = key
    return f"{client}[{level}]"


def _unchecked_run(folder: Path) -> RunView:
    """The run saved in `folder` as its summary says, its data not yet checked."""
    path = folder / SUMMARY_FILE
    try:
        summary = json.loads(path.read_text())
    except FileNotFoundError:
        raise CompareError(f"{folder}: no {SUMMARY_FILE} there (not a run folder)") from None
    except (OSError, ValueError) as err:
        raise CompareError(f"{path}: unreadable ({err})") from None
    if not isinstance(summary, dict):
        raise CompareError(f"{path}: not a run summary")
    return RunView(root=folder.resolve(), summary=summary)


def _check_data(run: RunView) -> RunView:
    problems = verify_run(run.root)
    if problems:
        raise CompareError(f"refusing run {run.run_id}: " + "; ".join(problems))
    return run


def read_run_folder(folder: Path) -> RunView:
    """The run saved in `folder` (its summary.json), once verified: this user's, closed to
    others, its data matching its signed manifest."""
    return _check_data(_unchecked_run(folder))


def load_run(ref: str | Path) -> RunView:
    """A run by folder, or by anything `aifactory` accepts for a run: id, id prefix, `latest`."""
    path = Path(ref).expanduser()
    if path.is_dir():
        return read_run_folder(path)
    try:
        record = resolve_run(str(ref))
    except RunNotFound as err:
        raise CompareError(str(err)) from None
    return read_run_folder(record.root)


@dataclass(frozen=True)
class PreviousRun:
    """The run `--compare=last` and the report's previous-run section use, and the later
    candidates refused on the way to it (planted, edited, unsigned), each with its reason."""

    run: RunView | None
    refused: list[str] = field(default_factory=list)


def find_previous(run: RunView, folder: Path | None = None) -> PreviousRun:
    """The latest run of the same recipe saved in the same folder before `run` started, that
    completed, measured something and verifies (`verify_run`); a later folder that claims to
    be such a run but does not verify is named in `refused`, never used."""
    folder = folder or run.root.parent
    candidates: list[RunView] = []
    for child in folder.iterdir() if folder.is_dir() else ():
        if not (child / SUMMARY_FILE).is_file() or child.resolve() == run.root:
            continue
        try:
            other = _unchecked_run(child)
        except CompareError:
            continue
        if (
            other.recipe == run.recipe
            and other.status == "complete"
            and other.tests
            and (other.started_at, other.run_id) < (run.started_at, run.run_id)
        ):
            candidates.append(other)
    # the latest is verified first: a folder of many runs is not read whole
    refused: list[str] = []
    for other in sorted(candidates, key=lambda r: (r.started_at, r.run_id), reverse=True):
        try:
            return PreviousRun(_check_data(other), refused)
        except CompareError as err:
            refused.append(str(err))
    return PreviousRun(None, refused)


def previous_run(run: RunView, folder: Path | None = None) -> RunView | None:
    """`find_previous`'s run alone."""
    return find_previous(run, folder).run


# -- metric keys --------------------------------------------------------------------------------


def known_metric_keys() -> str:
    """What a metric key may be, for error messages."""
    per_request = [name for name, info in all_metrics().items() if info.per_request]
    per_level = [name for name, info in all_metrics().items() if not info.per_request]
    return (
        f"{', '.join(f'{name}.STAT' for name in per_request)} "
        f"(STAT: {', '.join(STATISTICS)}); {', '.join(per_level)}"
    )


def check_metric_key(key: str) -> str:
    """`key` itself when it names a statistic of a per-request metric (`ttft_ms.p99`) or a
    per-level metric (`output_throughput`); else a CompareError saying what would be right."""
    metric, _, statistic = key.partition(".")
    info = all_metrics().get(metric)
    if info is None:
        raise CompareError(f"unknown metric '{key}'; known: {known_metric_keys()}")
    if info.per_request and statistic not in STATISTICS:
        wanted = "needs a statistic" if not statistic else f"has no statistic '{statistic}'"
        raise CompareError(
            f"'{key}': {metric} {wanted}: {metric}.STAT with STAT one of {', '.join(STATISTICS)}"
        )
    if not info.per_request and statistic:
        raise CompareError(f"'{key}': {metric} is one value per level; write just '{metric}'")
    return key


def parse_metrics(text: str) -> list[str]:
    """`ttft_ms.p99,output_throughput` -> checked keys, in the given order, without repeats."""
    keys = [part.strip() for part in text.split(",") if part.strip()]
    if not keys:
        raise CompareError("no metrics given; e.g. ttft_ms.p99,output_throughput")
    return list(dict.fromkeys(check_metric_key(key) for key in keys))


_TOLERANCE = re.compile(r"^(?P<key>[A-Za-z0-9_.]+)\s*:\s*(?P<value>[0-9]*\.?[0-9]+)\s*%$")


def parse_tolerances(text: str) -> dict[str, float]:
    """`ttft_ms.p99:10%,output_throughput:5%` -> {'ttft_ms.p99': 0.1, 'output_throughput': 0.05}.

    The `%` is required, so `output_throughput:5` cannot be read as 500%; every bad part is
    named in the error.
    """
    tolerances: dict[str, float] = {}
    parts = [part.strip() for part in text.split(",")]
    if not any(parts):
        raise CompareError("empty tolerance spec; e.g. ttft_ms.p99:10%,output_throughput:5%")
    for part in parts:
        if not part:
            continue
        match = _TOLERANCE.match(part)
        if match is None:
            raise CompareError(
                f"tolerance '{part}': expected METRIC:PERCENT%, e.g. output_throughput:5%"
            )
        key = check_metric_key(match["key"])
        if key in tolerances:
            raise CompareError(f"tolerance '{part}': {key} is given twice")
        tolerances[key] = float(match["value"]) / 100.0
    return tolerances


def metric_value(test: Mapping[str, Any], key: str) -> float | None:
    """A test's value of `ttft_ms.p99` (per_request) or `output_throughput` (per_level)."""
    metric, _, statistic = key.partition(".")
    if statistic:
        value = ((test.get("per_request") or {}).get(metric) or {}).get(statistic)
    else:
        value = (test.get("per_level") or {}).get(metric)
    return finite_number(value)


def metric_unit(key: str) -> str:
    info = all_metrics().get(key.partition(".")[0])
    return info.unit if info else ""


def default_metrics(runs: Sequence[RunView]) -> list[str]:
    """The keys the runs have values for: p50 and p99 of each per-request metric, then each
    per-level metric, in the catalogue's order."""
    present_request: set[str] = set()
    present_level: set[str] = set()
    for run in runs:
        for test in run.tests:
            present_request.update(test.get("per_request") or {})
            present_level.update(
                name for name, value in (test.get("per_level") or {}).items() if value is not None
            )
    keys: list[str] = []
    for name, info in all_metrics().items():
        if name in DEFAULT_SKIPPED:
            continue
        if info.per_request and name in present_request:
            keys.extend(f"{name}.{stat}" for stat in DEFAULT_STATISTICS)
    keys.extend(
        name
        for name, info in all_metrics().items()
        if not info.per_request and name in present_level and name not in DEFAULT_SKIPPED
    )
    return keys


# -- comparing ----------------------------------------------------------------------------------


def judge(metric: str, baseline: float | None, value: float | None) -> Verdict | None:
    """Better, worse or the same as the baseline in the metric's own direction."""
    if baseline is None or value is None:
        return None
    if value == baseline:
        return "same"
    improved = value > baseline if higher_is_better(metric) else value < baseline
    return "better" if improved else "worse"


def change_percent(baseline: float | None, value: float | None) -> float | None:
    """Relative change in %; None without both values or from a zero baseline to non-zero."""
    if baseline is None or value is None:
        return None
    if baseline == 0:
        return 0.0 if value == 0 else None
    return (value - baseline) / abs(baseline) * 100.0


@dataclass(frozen=True)
class Cell:
    """One run's value of one metric of one test, and how it moved from the baseline."""

    value: float | None
    change: float | None = None
    verdict: Verdict | None = None


@dataclass(frozen=True)
class Row:
    client: str
    level_label: str
    level: float | None
    metric: str
    cells: tuple[Cell, ...]
    """One per run, the baseline first."""

    @property
    def test(self) -> str:
        return test_label((self.client, self.level_label))

    @property
    def unit(self) -> str:
        return metric_unit(self.metric)


@dataclass(frozen=True)
class Comparison:
    runs: tuple[RunView, ...]
    metrics: tuple[str, ...]
    rows: tuple[Row, ...]
    tests: tuple[TestKey, ...]
    """Every test of any run, the baseline's first and in its order."""
    missing: tuple[str, ...] = ()
    """Lines saying which test a run lacks."""

    @property
    def baseline(self) -> RunView:
        return self.runs[0]


def _level(tests: Iterable[dict[str, Any] | None]) -> float | None:
    for test in tests:
        if test is not None and isinstance(test.get("level"), int | float):
            return float(test["level"])
    return None


def compare_runs(runs: Sequence[RunView], metrics: Sequence[str] | None = None) -> Comparison:
    """Every test of every run against the first run (the baseline).

    `metrics`: the keys to compare (checked); default `default_metrics(runs)`. Rows are kept only
    where some run has a value.
    """
    if len(runs) < 2:
        raise CompareError("comparing needs at least two runs")
    keys = [check_metric_key(k) for k in metrics] if metrics else default_metrics(runs)
    by_run = [run.tests_by_key() for run in runs]
    order = list(dict.fromkeys(key for tests in by_run for key in tests))
    rows: list[Row] = []
    missing: list[str] = []
    for key in order:
        tests = [tests.get(key) for tests in by_run]
        missing.extend(
            f"{test_label(key)}: not in {run.run_id}"
            for run, test in zip(runs, tests, strict=True)
            if test is None
        )
        for metric in keys:
            values = [metric_value(t, metric) if t is not None else None for t in tests]
            if all(v is None for v in values):
                continue
            base = values[0]
            cells = [Cell(base)]
            cells.extend(
                Cell(v, change_percent(base, v), judge(metric, base, v)) for v in values[1:]
            )
            rows.append(Row(key[0], key[1], _level(tests), metric, tuple(cells)))
    return Comparison(tuple(runs), tuple(keys), tuple(rows), tuple(order), tuple(missing))


# -- the regression gate ------------------------------------------------------------------------


@dataclass(frozen=True)
class Regression:
    """A metric of a test that moved the wrong way by more than its tolerance (and, where the
    runs' requests allow the question, by more than their noise)."""

    run_id: str
    baseline_run_id: str
    client: str
    level_label: str
    metric: str
    baseline: float
    value: float | None
    """None: the test ran but gave no value (every request failed)."""
    change: float | None
    tolerance: float
    """A fraction: 0.05 for 5%."""
    interval: ChangeInterval | None = None
    """The change's interval from the two runs' requests; None for a per-level figure."""

    @property
    def test(self) -> str:
        return test_label((self.client, self.level_label))

    def describe(self) -> str:
        """`chat[concurrency=4] ttft_ms.p99: 33.9 -> 52.1 ms (+53.7% [+31.0%, +80.2%], worse
        than the 10% tolerance and than the noise)`."""
        unit = f" {metric_unit(self.metric)}".rstrip()
        value = "no value" if self.value is None else format_value(self.value)
        if self.interval is not None:
            change = f"{self.interval.describe()}, "
            beyond = " and than the noise"
        else:
            change = "" if self.change is None else f"{self.change:+.1f}%, "
            beyond = ""
        return (
            f"{self.test} {self.metric}: {format_value(self.baseline)} -> {value}{unit} "
            f"({change}worse than the {self.tolerance * 100:g}% tolerance{beyond})"
        )


def regressed(metric: str, baseline: float, value: float | None, tolerance: float) -> bool:
    """Worse than the tolerance in the metric's direction: for lower-is-better metrics
    value > baseline * (1 + tolerance), for higher-is-better value < baseline * (1 - tolerance).
    A missing value where the baseline had one counts as regressed."""
    return worse_than(higher_is_better(metric), baseline, value, tolerance)


def worse_than(higher: bool, baseline: float, value: float | None, tolerance: float) -> bool:
    """`regressed` for a figure whose direction is known (`higher`: more is better) but which
    is no metric of the catalogue (an efficiency figure)."""
    if value is None:
        return True
    if higher:
        return value < baseline * (1.0 - tolerance)
    return value > baseline * (1.0 + tolerance)


@dataclass(frozen=True)
class Judgement:
    """What the gate made of one metric of one test: the change, its interval where the runs'
    requests give one, and why it counts as a regression or not."""

    regression: Regression
    outcome: Outcome

    @property
    def counts(self) -> bool:
        return self.outcome in ("regressed", "tolerance alone")

    def describe(self) -> str:
        r = self.regression
        tolerance = f"{r.tolerance * 100:g}%"
        if r.value is None:
            return f"{r.test} {r.metric}: no value where the baseline had one: regressed"
        change = (
            r.interval.describe()
            if r.interval is not None
            else ("n/a" if r.change is None else f"{r.change:+.1f}%")
        )
        sure = f"{r.interval.confidence * 100:g}%" if r.interval is not None else ""
        why = {
            "regressed": f"worse than the {tolerance} tolerance, and its {sure} interval "
            "excludes no change: regressed",
            "within noise": f"worse than the {tolerance} tolerance, but its {sure} interval "
            "includes no change: within the runs' noise",
            "within tolerance": f"within the {tolerance} tolerance",
            "tolerance alone": f"worse than the {tolerance} tolerance, judged on it alone (a "
            "per-level figure: no requests to resample): regressed",
        }[self.outcome]
        return (
            f"{r.test} {r.metric}: {format_value(r.baseline)} -> {format_value(r.value)} "
            f"({change}): {why}"
        )


def _worse_beyond_noise(metric: str, interval: ChangeInterval) -> bool:
    """The whole interval lies on the worse side of no change."""
    if higher_is_better(metric):
        return interval.high < 0.0
    return interval.low > 0.0


def judge_metrics(
    comparison: Comparison,
    tolerances: Mapping[str, float],
    confidence: float = DEFAULT_CONFIDENCE,
) -> list[Judgement]:
    """Each (later run, test, metric with a tolerance) judged against the baseline.

    Only tests both runs have are judged: a level the recipe dropped is not a regression. A
    per-request statistic worse than its tolerance is resampled from both runs' records
    (`report/noise.py`) and counts only when its interval excludes no change; a per-level
    figure, or a run without records, is judged on the tolerance alone.
    """
    base_run = comparison.baseline
    base_tests = base_run.tests_by_key()
    base_samples = RunSamples(base_run.root)
    judged: list[Judgement] = []
    for run in comparison.runs[1:]:
        tests = run.tests_by_key()
        samples = RunSamples(run.root)
        for key, base_test in base_tests.items():
            test = tests.get(key)
            if test is None:
                continue
            for metric, tolerance in tolerances.items():
                baseline = metric_value(base_test, metric)
                if baseline is None:
                    continue
                value = metric_value(test, metric)
                finding = Regression(
                    run.run_id,
                    base_run.run_id,
                    key[0],
                    key[1],
                    metric,
                    baseline,
                    value,
                    change_percent(baseline, value),
                    tolerance,
                )
                name = metric.partition(".")[0]
                outcome, interval = judge_change(
                    metric,
                    tolerance,
                    baseline,
                    value,
                    functools.partial(base_samples.values, key[0], key[1], name),
                    functools.partial(samples.values, key[0], key[1], name),
                    confidence,
                )
                judged.append(Judgement(dataclasses.replace(finding, interval=interval), outcome))
    return judged


def judge_change(
    metric: str,
    tolerance: float,
    baseline: float,
    value: float | None,
    baseline_samples: Callable[[], Samples | None],
    samples: Callable[[], Samples | None],
    confidence: float = DEFAULT_CONFIDENCE,
) -> tuple[Outcome, ChangeInterval | None]:
    """The gate's rule for one metric (module docstring of `report/noise.py`): worse than the
    tolerance, then, for a statistic of per-request samples, outside their noise. The samples
    are read only when the tolerance alone would count the change."""
    if not regressed(metric, baseline, value, tolerance):
        return "within tolerance", None
    statistic = metric.partition(".")[2]
    if value is None or not statistic:
        return "tolerance alone", None
    base_values, values = baseline_samples(), samples()
    if base_values is None or values is None:
        return "tolerance alone", None
    interval = change_interval(base_values, values, statistic, confidence)
    if interval is None:
        return "tolerance alone", None
    return ("regressed" if _worse_beyond_noise(metric, interval) else "within noise"), interval


def regressions(
    comparison: Comparison,
    tolerances: Mapping[str, float],
    confidence: float = DEFAULT_CONFIDENCE,
) -> list[Regression]:
    """The judgements that count (`judge_metrics`)."""
    return [j.regression for j in judge_metrics(comparison, tolerances, confidence) if j.counts]


def unchecked_metrics(comparison: Comparison, tolerances: Mapping[str, float]) -> list[str]:
    """Metrics with a tolerance that no test of the baseline and a later run both measured, so
    the gate could not check them (a typo'd client kind, a metric these runs do not have)."""
    base_tests = comparison.baseline.tests_by_key()
    later = [run.tests_by_key() for run in comparison.runs[1:]]
    unchecked = []
    for metric in tolerances:
        checked = any(
            metric_value(test, metric) is not None and key in tests
            for key, test in base_tests.items()
            for tests in later
        )
        if not checked:
            unchecked.append(metric)
    return unchecked


# -- text ---------------------------------------------------------------------------------------


def format_value(value: float | None) -> str:
    """Enough digits to see a few-percent change at any magnitude."""
    if value is None:
        return ""
    magnitude = abs(value)
    if magnitude >= 100 or value == 0:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:#.3g}"


def format_change(cell: Cell) -> str:
    if cell.verdict is None:
        return ""
    if cell.verdict == "same":
        return "same"
    change = "" if cell.change is None else f"{cell.change:+.1f}% "
    return f"{change}{cell.verdict}"


def run_letters(count: int) -> list[str]:
    """A, B, ... Z, then R27, R28, ...: short column names for the runs."""
    return [chr(ord("A") + i) if i < 26 else f"R{i + 1}" for i in range(count)]


def format_runs(comparison: Comparison) -> str:
    """Which letter is which run."""
    letters = run_letters(len(comparison.runs))
    rows = [
        (
            f"{letter} (baseline)" if i == 0 else letter,
            run.run_id,
            run.recipe,
            run.status,
            run.verdict,
        )
        for i, (letter, run) in enumerate(zip(letters, comparison.runs, strict=True))
    ]
    return format_table(("RUN", "ID", "RECIPE", "STATUS", "VERDICT"), rows)


def format_comparison(comparison: Comparison) -> str:
    """The runs' legend, then one line per test and metric: each run's value and each later
    run's change against the baseline, `better` or `worse` in the metric's direction."""
    letters = run_letters(len(comparison.runs))
    headers = ["TEST", "METRIC", "UNIT", letters[0]]
    for letter in letters[1:]:
        headers.extend([letter, f"{letter} vs {letters[0]}"])
    rows = []
    for row in comparison.rows:
        line: list[object] = [row.test, row.metric, row.unit, format_value(row.cells[0].value)]
        for cell in row.cells[1:]:
            line.extend([format_value(cell.value), format_change(cell)])
        rows.append(line)
    right = set(range(3, len(headers)))
    parts = [format_runs(comparison), ""]
    if rows:
        parts.append(format_table(headers, rows, right=right))
    else:
        parts.append("no test and metric in common")
    parts.extend(comparison.missing)
    return "\n".join(parts)
