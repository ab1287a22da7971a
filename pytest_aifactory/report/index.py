"""Every run in a reports folder at once: one row per run and each recipe's history.

A single report answers how one run went; the experiments dashboard (`index.html` beside the
runs) answers how a benchmark moved over weeks of runs. This module reads the runs as their
summaries say (the same readers as reports and comparisons) and turns them into rows and
history points; `index_html.py` draws them.

A run that does not verify (another account's, edited after it was written, unsigned) is
listed with the reason but never drawn in a history nor used as the run a regression is
measured against: its numbers cannot be vouched for. A regression is a headline figure that
moved the wrong way, beyond a tolerance, from the latest earlier verified complete run of the
same recipe that has the same test, as the regression gate of `aifactory compare` judges it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_aifactory.cluster.run_records import read_run
from pytest_aifactory.loadgen.kinds import UnknownKind, metric_info
from pytest_aifactory.monitor.efficiency import FIGURES as EFFICIENCY_FIGURES
from pytest_aifactory.numbers import finite_number
from pytest_aifactory.report.compare import (
    SUMMARY_FILE,
    change_percent,
    format_value,
    metric_value,
    regressed,
    test_key,
    test_label,
    worse_than,
)
from pytest_aifactory.report.headline import efficiency_headline_figure, headline_of
from pytest_aifactory.report.manifest import verify_run
from pytest_aifactory.report.verify_cache import VerifyCache

INDEX_NAME = "index.html"
REPORT_NAME = "report.html"
DEFAULT_TOLERANCE = 0.10
"""A headline figure worse than the previous run's by more than this is marked a regression."""
FIGURES: tuple[str, ...] = ("throughput", "p50", "p99", "efficiency")
"""The headline figures of a test drawn over runs: its throughput, its latency p50 and p99, and
what it cost the service's nodes (the efficiency figure a report heads its test with), where the
run was monitored."""
EFFICIENCY_PREFIX = "efficiency."
NOT_VERIFIED_WHILE_RUNNING = "the session is still running (its run is signed when it ends)"


class IndexBuildError(Exception):
    """The folder cannot be indexed; the message names it and says why."""


@dataclass(frozen=True)
class Figure:
    """One headline figure of a test: which metric it is and its value."""

    name: str
    """`throughput`, `p50`, `p99` or `efficiency`."""
    metric: str
    """The key `compare.metric_value` reads: `output_throughput`, `ttft_ms.p99`; an efficiency
    figure's is `efficiency.<key>` (`efficiency.energy_per_output_token_j`)."""
    label: str
    """How the page names it: `output tok/s`, `TTFT p99 (ms)`."""
    value: float | None


@dataclass(frozen=True)
class TestRow:
    """One test of a run: its identity, verdict, failed objectives and headline figures."""

    client: str
    level_label: str
    level: float | None
    passed: bool | None
    failed_objectives: tuple[str, ...]
    figures: tuple[Figure, ...]

    @property
    def label(self) -> str:
        return test_label((self.client, self.level_label))

    @property
    def key(self) -> tuple[str, str]:
        return (self.client, self.level_label)


@dataclass(frozen=True)
class RunRow:
    """One run as the dashboard lists it."""

    run_id: str
    folder: Path
    recipe: str
    started_at: str
    host: str
    executor: str
    status: str
    verdict: str
    tests: tuple[TestRow, ...]
    report: str | None
    """The run's report page relative to the folder indexed; None when it has none."""
    problems: tuple[str, ...] = ()
    """Why the run does not verify (nothing when it does)."""
    unreadable: str = ""
    """Why the run's summary could not be read ("" when it could)."""

    @property
    def verified(self) -> bool:
        return not self.problems and not self.unreadable

    @property
    def passed(self) -> int:
        return sum(1 for t in self.tests if t.passed)

    @property
    def failed(self) -> int:
        return sum(1 for t in self.tests if t.passed is False)

    @property
    def date(self) -> str:
        """`YYYY-MM-DD` of the start, what the date filter compares."""
        return self.started_at[:10]


@dataclass(frozen=True)
class HistoryPoint:
    """One figure of one test of one run, drawn in its recipe's history."""

    recipe: str
    client: str
    test: str
    run_id: str
    started_at: str
    figure: str
    label: str
    value: float
    marks: tuple[str, ...] = ()
    """What went wrong at this point: a failed objective, a regression (with its numbers)."""

    @property
    def flag(self) -> str:
        """The point's mark in the chart's legend."""
        objective = any(m.startswith("objective") for m in self.marks)
        regression = any(m.startswith("regression") for m in self.marks)
        if objective and regression:
            return "objective failed + regression"
        if objective:
            return "objective failed"
        if regression:
            return "regression"
        return "ok"


@dataclass(frozen=True)
class History:
    """A recipe's client over runs: every headline figure of each of its tests."""

    recipe: str
    client: str
    points: tuple[HistoryPoint, ...]
    left_out: tuple[str, ...] = field(default_factory=tuple)
    """Runs of the recipe not drawn (they do not verify)."""


# -- reading runs -------------------------------------------------------------------------------


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _figures(test: Mapping[str, Any]) -> tuple[Figure, ...]:
    try:
        head = headline_of(test.get("kind"), test.get("api"))
    except UnknownKind:  # a kind of another version: the run is still listed
        return ()
    info = metric_info(head.latency)
    unit = f" ({info.unit})" if info and info.unit else ""
    figures = [Figure("throughput", head.throughput, head.throughput_label, None)]
    figures.extend(
        Figure(stat, f"{head.latency}.{stat}", f"{head.latency_label} {stat}{unit}", None)
        for stat in ("p50", "p99")
    )
    found = [
        Figure(f.name, f.metric, f.label, finite_number(metric_value(test, f.metric)))
        for f in figures
    ]
    efficiency = efficiency_headline_figure(test)
    if efficiency is not None:
        cost, value = efficiency
        found.append(Figure("efficiency", f"{EFFICIENCY_PREFIX}{cost.key}", cost.unit, value))
    return tuple(found)


def _efficiency_higher_is_better(metric: str) -> bool | None:
    """The direction of an `efficiency.<key>` figure; None for any other metric."""
    if not metric.startswith(EFFICIENCY_PREFIX):
        return None
    key = metric.removeprefix(EFFICIENCY_PREFIX)
    return next((info.higher_is_better for info in EFFICIENCY_FIGURES if info.key == key), None)


def _failed_objectives(test: Mapping[str, Any]) -> tuple[str, ...]:
    failed = []
    for outcome in test.get("slo") or []:
        if not isinstance(outcome, Mapping) or outcome.get("passed") is not False:
            continue
        statistic = f".{outcome['statistic']}" if outcome.get("statistic") else ""
        value = finite_number(outcome.get("value"))
        shown = "no value" if value is None else format_value(value)
        bound = _text(outcome.get("bound"))
        unit = f" {outcome.get('unit')}" if outcome.get("unit") else ""
        failed.append(
            f"objective {outcome.get('metric')}{statistic} {bound} "
            f"{format_value(finite_number(outcome.get('limit')))}{unit}: {shown}"
        )
    return tuple(failed)


def test_row(test: Mapping[str, Any]) -> TestRow:
    passed = test.get("passed")
    client, level_label = test_key(test)
    return TestRow(
        client=client,
        level_label=level_label,
        level=finite_number(test.get("level")),
        passed=passed if isinstance(passed, bool) else None,
        failed_objectives=_failed_objectives(test),
        figures=_figures(test),
    )


def _where(folder: Path, summary: Mapping[str, Any]) -> tuple[str, str]:
    """(host or cluster and nodes, executor): the run's own job record says where its jobs
    ran; a run without one (copied from elsewhere, an old version) is read from its summary."""
    environment = summary.get("environment") or {}
    document = (summary.get("recipe") or {}).get("document") or {}
    executor = _text((document.get("platform") or {}).get("executor")) or "local"
    host = _text(environment.get("hostname"))
    record = read_run(folder)
    if record is not None:
        executor = record.executor or executor
        host = record.driver_host or host
        nodes = sorted({n for job in record.jobs for n in job.nodes if n and n != host})
        if executor == "slurm" and nodes:
            host = f"{', '.join(nodes)} (from {host})" if host else ", ".join(nodes)
    cluster = _text(environment.get("slurm_cluster"))
    if executor == "slurm" and cluster:
        host = f"{cluster}: {host}" if host else cluster
    return host, executor


def _report_link(folder: Path, base: Path) -> str | None:
    page = folder / REPORT_NAME
    if not page.is_file():
        return None
    try:
        return Path(os.path.relpath(page.resolve(), base.resolve())).as_posix()
    except ValueError:  # another drive
        return page.resolve().as_uri()


def read_row(folder: Path, base: Path | None = None, cache: VerifyCache | None = None) -> RunRow:
    """The run saved in `folder` as one row; `base`: the folder its report link is relative to
    (default: the run's parent, where the dashboard lives); `cache`: remembered verifications
    (default: verify it now)."""
    base = base or folder.parent
    report = _report_link(folder, base)
    try:
        summary = json.loads((folder / SUMMARY_FILE).read_text(encoding="utf-8"))
        if not isinstance(summary, dict):
            raise ValueError("not a run summary")
    except (OSError, ValueError) as err:
        reason = f"{folder / SUMMARY_FILE}: unreadable ({err})"
        record = read_run(folder)
        return RunRow(
            run_id=folder.name,
            folder=folder,
            recipe=record.recipe if record else "",
            started_at=record.started_at.isoformat() if record else "",
            host=record.driver_host if record else "",
            executor=record.executor if record else "",
            status=record.status if record else "",
            verdict="",
            tests=(),
            report=report,
            unreadable=reason,
        )
    status = _text(summary.get("status"))
    if status == "running":
        problems: tuple[str, ...] = (NOT_VERIFIED_WHILE_RUNNING,)
    else:
        problems = tuple(cache.problems(folder) if cache else verify_run(folder))
    host, executor = _where(folder, summary)
    tests = summary.get("tests") or []
    return RunRow(
        run_id=_text(summary.get("run_id")) or folder.name,
        folder=folder,
        recipe=_text((summary.get("recipe") or {}).get("name")),
        started_at=_text(summary.get("started_at")),
        host=host,
        executor=executor,
        status=status,
        verdict=_text(summary.get("verdict")),
        tests=tuple(test_row(t) for t in tests if isinstance(t, Mapping)),
        report=report,
        problems=problems,
    )


def run_folders(folder: Path) -> list[Path]:
    """The run folders directly in `folder`: those with a summary, or a job record of a
    session that ended before writing one."""
    if not folder.is_dir():
        raise IndexBuildError(f"{folder}: no such folder")
    try:
        children = list(folder.iterdir())
    except OSError as err:
        raise IndexBuildError(f"{folder}: cannot be read ({err.strerror or err})") from None
    found = []
    for child in children:
        try:
            if child.is_dir() and ((child / SUMMARY_FILE).is_file() or read_run(child) is not None):
                found.append(child)
        except OSError:  # a folder closed to this user: not listable, not a run of theirs
            continue
    return found


def read_rows(folder: Path, base: Path | None = None) -> list[RunRow]:
    """Every run in `folder`, the latest first; `base`: where the page that links to their
    reports is (default: `folder`)."""
    cache = VerifyCache()
    rows = [read_row(child, base or folder, cache) for child in run_folders(folder)]
    cache.save()
    return sorted(rows, key=lambda r: (r.started_at, r.run_id), reverse=True)


# -- history ------------------------------------------------------------------------------------


def _regression(
    metric: str, baseline: float, value: float | None, tolerance: float, baseline_run: str
) -> str:
    efficiency_up = _efficiency_higher_is_better(metric)
    if efficiency_up is not None:
        worse = worse_than(efficiency_up, baseline, value, tolerance)
    else:
        try:
            worse = regressed(metric, baseline, value, tolerance)
        except UnknownKind:
            return ""
    if not worse:
        return ""
    change = change_percent(baseline, value)
    moved = "" if change is None else f" ({change:+.1f}%)"
    shown = "no value" if value is None else format_value(value)
    return (
        f"regression: {metric} {format_value(baseline)} -> {shown}{moved} against "
        f"{baseline_run}, beyond {tolerance * 100:g}%"
    )


def histories(rows: Iterable[RunRow], tolerance: float = DEFAULT_TOLERANCE) -> list[History]:
    """Per recipe and client, each verified run's headline figures of each test, oldest first,
    with their marks: a failed objective, and a regression against the latest earlier
    verified complete run of the recipe that has the same test. Runs of different recipes are
    never in one history."""
    by_recipe: dict[str, list[RunRow]] = {}
    for row in rows:
        by_recipe.setdefault(row.recipe, []).append(row)
    found: list[History] = []
    for recipe in sorted(by_recipe):
        runs = sorted(by_recipe[recipe], key=lambda r: (r.started_at, r.run_id))
        left_out = tuple(r.run_id for r in runs if not r.verified and r.tests)
        points: dict[str, list[HistoryPoint]] = {}
        baselines: dict[tuple[tuple[str, str], str], tuple[float, str]] = {}
        for run in runs:
            if not run.verified:
                continue
            for test in run.tests:
                for figure in test.figures:
                    marks = list(test.failed_objectives)
                    base = baselines.get((test.key, figure.metric))
                    if base is not None:
                        mark = _regression(figure.metric, base[0], figure.value, tolerance, base[1])
                        if mark:
                            marks.append(mark)
                    if figure.value is None:
                        continue
                    points.setdefault(test.client, []).append(
                        HistoryPoint(
                            recipe=recipe,
                            client=test.client,
                            test=test.label,
                            run_id=run.run_id,
                            started_at=run.started_at,
                            figure=figure.name,
                            label=figure.label,
                            value=figure.value,
                            marks=tuple(marks),
                        )
                    )
                    if run.status == "complete":
                        baselines[(test.key, figure.metric)] = (figure.value, run.run_id)
        found.extend(
            History(recipe, client, tuple(client_points), left_out)
            for client, client_points in points.items()
        )
    return found


def recipes_of(rows: Sequence[RunRow]) -> list[str]:
    return sorted({row.recipe for row in rows})
