"""The pytest plugin: options, parametrization from the recipe, and the session's end.

This is the only module pytest loads directly (entry point `pytest11`); everything else is
reached from here.
"""

from __future__ import annotations

import json
import math
import os
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from pytest_aifactory.cases import LoadCase, cases_for
from pytest_aifactory.cluster.slurm import SlurmError, effective_settings
from pytest_aifactory.driver import Driver
from pytest_aifactory.fixtures import aifactory, aifactory_load, aifactory_monitor
from pytest_aifactory.loadgen.kinds import get_client_kind
from pytest_aifactory.recipe import (
    SLURM_OVERRIDE_KEYS,
    Recipe,
    RecipeError,
    load_recipe,
    with_repeats,
)
from pytest_aifactory.report.baseline import LAST, BaselineCheck, merged_tolerances
from pytest_aifactory.report.compare import CompareError, load_run
from pytest_aifactory.report.headline import headline_of, headline_values
from pytest_aifactory.session_guard import (
    BENCHMARK_PROPERTY,
    NO_RECIPE_ID,
    BenchmarkTally,
    is_benchmark,
    refuse_without_recipe,
    what_was_asked,
)
from pytest_aifactory.stash_keys import BASELINE_KEY, DRIVER_KEY, TALLY_KEY
from pytest_aifactory.terminal import Terminal

__all__ = ["aifactory", "aifactory_load", "aifactory_monitor"]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("aifactory", "AI Factory benchmarks (pytest-aifactory)")
    group.addoption(
        "--recipe",
        metavar="FILE",
        default=None,
        help="benchmark recipe (YAML): services to start, load to drive, SLOs to check",
    )
    group.addoption(
        "--executor",
        choices=("local", "slurm"),
        default=None,
        help="where jobs run; overrides the recipe's platform.executor",
    )
    group.addoption(
        "--report-dir",
        metavar="DIR",
        default=None,
        help="where runs are saved (default: the recipe's report.dir, else ./reports)",
    )
    group.addoption(
        "--keep-services",
        action="store_true",
        default=False,
        help="leave the run's services running at the end (clients still stop); "
        "see `aifactory status`, stop them with `aifactory stop RUN`",
    )
    group.addoption(
        "--reuse-services",
        nargs="?",
        const="latest",
        default=None,
        metavar="RUN",
        help="use services that runs kept instead of starting new ones, each only if its "
        "whole plan (kind, model, args, env, resources...) is the recipe's (default: the "
        "newest such of this recipe's runs); write --reuse-services=RUN",
    )
    group.addoption(
        "--repeats",
        type=int,
        default=None,
        metavar="N",
        help="measure every level N times, a fresh load each time; overrides each client's "
        "load.repeats",
    )
    group.addoption(
        "--matrix-config",
        type=int,
        default=None,
        metavar="N",
        help="of a recipe with a configuration matrix (services.<s>.matrix), benchmark "
        "configuration N (from 0); `aifactory matrix RECIPE` runs them all",
    )
    group.addoption(
        "--compare",
        metavar="RUN",
        default=None,
        help="after the session, compare this run with RUN (a run folder or id), or with the "
        "latest earlier run of the same recipe in the report folder (--compare=last)",
    )
    group.addoption(
        "--fail-on-regression",
        metavar="SPEC",
        default=None,
        help="fail the session when a metric got worse than the baseline (--compare, default "
        "last) by more than its tolerance and than the runs' noise, e.g. "
        "'ttft_ms.p99:10%%,output_throughput:5%%', added to the recipe's regression.tolerances; "
        "'recipe': those alone",
    )
    slurm = parser.getgroup("aifactory-slurm", "Slurm (override the recipe's platform.slurm)")
    for option, key, help_text in (
        ("--slurm-partition", "partition", "partition to submit jobs to"),
        ("--slurm-account", "account", "account to charge"),
        ("--slurm-qos", "qos", "quality of service"),
        ("--slurm-time", "time_limit", "time limit per job: minutes, HH:MM:SS or D-HH:MM:SS"),
    ):
        slurm.addoption(option, dest=f"slurm_{key}", metavar="VALUE", default=None, help=help_text)
    slurm.addoption(
        "--slurm-setup",
        dest="slurm_setup",
        action="append",
        default=[],
        metavar="LINE",
        help="shell line run before each job's command, after the recipe's (repeatable)",
    )
    slurm.addoption(
        "--slurm-pending-timeout",
        dest="slurm_pending_timeout_s",
        type=float,
        default=None,
        metavar="SECONDS",
        help="cancel a job still queued after this long and fail with Slurm's reason",
    )
    slurm.addoption(
        "--slurm-mode",
        dest="slurm_mode",
        choices=("auto", "jobs", "allocation"),
        default=None,
        help="jobs: one sbatch job per service and client; allocation: srun steps of the "
        "allocation the session runs in; auto (default): allocation inside one",
    )
    parser.addini("aifactory_recipe", "recipe used when --recipe is not given", default="")


def _slurm_overrides(config: pytest.Config, recipe: Any) -> dict[str, Any]:
    """The `--slurm-*` options that were given, checked like the recipe's own settings."""
    overrides = {
        key: value
        for key in SLURM_OVERRIDE_KEYS
        if (value := config.getoption(f"slurm_{key}")) not in (None, [])
    }
    if overrides:
        try:
            effective_settings(recipe, overrides)
        except SlurmError as err:
            raise pytest.UsageError(str(err)) from None
    return overrides


def _baseline_check(config: pytest.Config, recipe: Recipe) -> BaselineCheck | None:
    """`--compare` and `--fail-on-regression`, checked before anything runs."""
    ref = config.getoption("compare")
    spec = config.getoption("fail_on_regression")
    if ref is None and spec is None:
        return None
    tolerances = gate_tolerances(spec, recipe)
    try:
        baseline = load_run(ref) if ref not in (None, LAST) else LAST
    except CompareError as err:
        raise pytest.UsageError(f"--compare: {err}") from None
    return BaselineCheck(baseline, tolerances, confidence=recipe.regression.confidence)


def gate_tolerances(spec: str | None, recipe: Recipe) -> dict[str, float] | None:
    """The gate's tolerances: the recipe's `regression.tolerances`, with SPEC's added (SPEC
    wins where both name a metric); `recipe` alone takes the recipe's."""
    if spec is None:
        return None
    try:
        return merged_tolerances(spec, recipe.regression.fractions(), str(recipe.path))
    except CompareError as err:
        raise pytest.UsageError(f"--fail-on-regression: {err}") from None


def _raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM (scancel, a CI timeout) and SIGHUP (a closed terminal) end the session like
    Ctrl-C: jobs cancelled, data kept."""
    raise KeyboardInterrupt(f"received {signal.Signals(signum).name}")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "aifactory_clients(*kinds): parametrize `load_case` with the recipe's clients of "
        "these kinds (e.g. 'openai')",
    )
    config.stash[DRIVER_KEY] = None
    config.stash[BASELINE_KEY] = None
    config.stash[TALLY_KEY] = tally = BenchmarkTally()
    config.pluginmanager.register(tally, "aifactory-benchmark-tally")
    recipe_arg = config.getoption("recipe") or config.getini("aifactory_recipe")
    if not recipe_arg:
        return
    path = Path(recipe_arg)
    try:
        recipe = load_recipe(path, matrix_config=config.getoption("matrix_config"))
    except RecipeError as err:
        raise pytest.UsageError(str(err)) from None
    if recipe.matrix and recipe.matrix_config is None:
        raise pytest.UsageError(
            f"{path}: this recipe has a configuration matrix of {len(recipe.matrix)} "
            "(services.<s>.matrix): run them all with `aifactory matrix "
            f"{path}`, or one with --matrix-config N (0 to {len(recipe.matrix) - 1})"
        )
    repeats = config.getoption("repeats")
    if repeats is not None:
        if repeats < 1:
            raise pytest.UsageError(
                f"--repeats: expected a whole number of at least 1, got {repeats}"
            )
        recipe = with_repeats(recipe, repeats)
    executor = config.getoption("executor") or recipe.platform.executor
    report_dir = Path(config.getoption("report_dir") or recipe.report.dir)
    config.stash[DRIVER_KEY] = Driver(
        recipe=recipe,
        executor_name=executor,
        report_dir=report_dir if report_dir.is_absolute() else Path(os.getcwd()) / report_dir,
        terminal=Terminal(config),
        keep_services=bool(config.getoption("keep_services")),
        reuse_services=config.getoption("reuse_services"),
        slurm_overrides=_slurm_overrides(config, recipe),
    )
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None:  # the run is compared once, by the process that owns it
        config.stash[BASELINE_KEY] = _baseline_check(config, recipe)
    if config.pluginmanager.hasplugin("html") and config.getoption("htmlpath", None):
        # deferred: it imports pytest-html, an optional dependency present when this is true
        from pytest_aifactory.report import pytest_html as html_extras

        config.pluginmanager.register(html_extras, "aifactory-html")
    if workerinput is not None and "aifactory" in workerinput:
        driver = config.stash[DRIVER_KEY]
        assert driver is not None
        driver.attach(json.loads(workerinput["aifactory"]), workerinput["workerid"])
    # SIGHUP: the terminal or ssh session of an interactive run went away
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) in (signal.SIG_DFL, None):
            signal.signal(signum, _raise_keyboard_interrupt)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """pytest-xdist controller: start the services once, hand the run to every worker."""
    driver = node.config.stash.get(DRIVER_KEY, None)
    if driver is not None:
        node.workerinput["aifactory"] = json.dumps(driver.handoff())


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "load_case" not in metafunc.fixturenames:
        return
    driver = metafunc.config.stash.get(DRIVER_KEY, None)
    marker = metafunc.definition.get_closest_marker("aifactory_clients")
    kinds = tuple(marker.args) if marker else ()
    if driver is None:
        skip = pytest.mark.skip(reason="no recipe: run with --recipe FILE")
        metafunc.parametrize("load_case", [pytest.param(None, marks=skip)], ids=[NO_RECIPE_ID])
        return
    cases = cases_for(driver.recipe, kinds)
    if not cases:
        wanted = " or ".join(kinds) or "any"
        skip = pytest.mark.skip(reason=f"recipe '{driver.recipe.name}' has no {wanted} client")
        metafunc.parametrize("load_case", [pytest.param(None, marks=skip)], ids=["no-client"])
        return
    metafunc.parametrize("load_case", cases, ids=[c.id for c in cases])


def pytest_collection_finish(session: pytest.Session) -> None:
    """The cases selected to run (after -k, -m, --lf): a client's job is sized for its own."""
    driver = session.config.stash.get(DRIVER_KEY, None)
    if driver is None:
        refuse_without_recipe(session.items, bool(session.config.option.collectonly))
        return
    session.config.stash[TALLY_KEY].select(session.items)
    planned = []
    for item in session.items:
        callspec = getattr(item, "callspec", None)
        case = callspec.params.get("load_case") if callspec is not None else None
        if isinstance(case, LoadCase):
            planned.append(case)
    driver.planned = planned


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Benchmark tests' reports say so: under pytest-xdist the process that tallies them has
    no items of its own, only the reports."""
    report = yield
    if is_benchmark(item):
        report.user_properties.append((BENCHMARK_PROPERTY, True))
    return report


def pytest_sessionfinish(session: pytest.Session, exitstatus: int | pytest.ExitCode) -> None:
    driver = session.config.stash.get(DRIVER_KEY, None)
    if driver is None:
        return
    interrupted = exitstatus == pytest.ExitCode.INTERRUPTED
    if not driver.finish("interrupted" if interrupted else "complete"):
        session.exitstatus = pytest.ExitCode.INTERRUPTED
        return
    if driver.role != "worker":
        _fail_when_nothing_ran(session, driver)
    check = session.config.stash.get(BASELINE_KEY, None)
    if check is None or interrupted or driver.run is None or driver.role == "worker":
        return
    check.run(driver.run.root)
    if check.failed and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _fail_when_nothing_ran(session: pytest.Session, driver: Driver) -> None:
    tally = session.config.stash[TALLY_KEY]
    if not tally.nothing_ran() or session.config.option.collectonly:
        return
    asked = what_was_asked(
        has_objectives=any(driver.recipe.slo.values()),
        fail_on_regression=session.config.getoption("fail_on_regression") is not None,
    )
    tally.closing_line = tally.verdict_line(asked)
    if asked and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def _summary_rows(tests: Sequence[Mapping[str, Any]]) -> list[tuple[str, ...]]:
    """The end-of-session table: the kind's own columns when every test is of one kind that
    declares them (LLM serving's usual ones), else each kind's headline latency and throughput
    (see `report.headline`)."""

    def common(test: Mapping[str, Any]) -> tuple[str, str, str]:
        counts = test.get("counts", {})
        verdict = "PASS" if test["passed"] else "FAIL"
        return test["name"], verdict, f"{counts.get('completed', 0)}/{counts.get('sent', 0)}"

    kinds = {(test.get("kind") or "openai", test.get("api")) for test in tests}
    kind, api = kinds.pop() if len(kinds) == 1 else ("", None)
    # an api with a headline of its own (embeddings) has none of the kind's usual columns
    declared = get_client_kind(kind) if kind else None
    own_api = declared is not None and api in dict(declared.api_headlines)
    columns = declared.closing_columns if declared is not None and not own_api else ()
    if columns:
        table: list[tuple[str, ...]] = [
            ("test", "verdict", "ok/sent", *(label for label, _ in columns))
        ]
        for test in tests:
            table.append((*common(test), *(_fmt(_figure(test, f)) for _, f in columns)))
        return table
    rows: list[tuple[str, ...]] = [
        ("test", "verdict", "ok/sent", "latency", "p50", "p99", "throughput")
    ]
    for test in tests:
        head = headline_of(test.get("kind"), test.get("api"))
        values = headline_values(test)
        rows.append(
            (
                *common(test),
                head.latency,
                _fmt(values["latency_p50"], 2),
                _fmt(values["latency_p99"], 2),
                f"{_fmt(values['throughput'])} {head.throughput_label}",
            )
        )
    return rows


def _figure(test: Mapping[str, Any], figure: str) -> Any:
    """A test entry's `metric.statistic` (per request) or `metric` (per level)."""
    metric, _, statistic = figure.partition(".")
    if statistic:
        return (test.get("per_request", {}).get(metric) or {}).get(statistic)
    return test.get("per_level", {}).get(metric)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    tally = config.stash.get(TALLY_KEY, None)
    if tally is not None and tally.closing_line:
        terminalreporter.write_line(f"aifactory: {tally.closing_line}", red=True, bold=True)
    driver = config.stash.get(DRIVER_KEY, None)
    if driver is None or driver.run is None:
        return
    tr = terminalreporter
    tr.section(f"aifactory: {driver.recipe.name}")
    rows = _summary_rows(driver.test_entries())
    header = rows[0]
    if len(rows) > 1:
        widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
        for i, row in enumerate(rows):
            cells = [
                str(c).ljust(w) if j == 0 else str(c).rjust(w)
                for j, (c, w) in enumerate(zip(row, widths, strict=True))
            ]
            tr.write_line("  ".join(cells), bold=i == 0)
    tr.write_line(f"times in ms; run saved to {driver.run.root}")
    check = config.stash.get(BASELINE_KEY, None)
    lines = check.report_lines() if check is not None else []
    if lines:
        assert check is not None
        baseline = check.result.baseline if check.result is not None else None
        tr.section(f"aifactory: compared with {baseline.run_id if baseline else 'no run'}")
        for line, bad in lines:
            tr.write_line(line, red=bad, bold=bad)
