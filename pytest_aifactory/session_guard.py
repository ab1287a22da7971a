"""No green by accident: a CI job whose benchmark measured nothing must not pass.

Two ways a gate goes green without measuring: the job lost its `--recipe` (every benchmark test
would be skipped, and pytest exits 0), or every benchmark test was deselected (`-k`, `-m`) or
skipped. The first is a usage error before anything starts; the second is said at the end and
fails the session when something was asked of the run (an objective in the recipe, or
`--fail-on-regression`), since that question then went unanswered.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import pytest

NO_RECIPE_ID = "no-recipe"
"""The id of the placeholder case a benchmark test gets when no recipe was given."""
BENCHMARK_PROPERTY = "aifactory_benchmark"
"""A user property on every benchmark test's reports, so whoever reads the reports (pytest-xdist's
controller included, which has no items) can tell them from other tests."""


def is_benchmark(item: pytest.Item) -> bool:
    """A test the plugin parametrizes with the recipe's load cases."""
    return "load_case" in getattr(item, "fixturenames", ())


def refuse_without_recipe(items: Iterable[pytest.Item], collect_only: bool) -> None:
    """Raises pytest's usage error (exit status 4) when benchmark tests were collected but no
    recipe names what to run; listing them (`--collect-only`) stays allowed."""
    if collect_only:
        return
    benchmarks = [item for item in items if is_benchmark(item)]
    if not benchmarks:
        return
    shown = ", ".join(item.nodeid for item in benchmarks[:3])
    more = f" and {len(benchmarks) - 3} more" if len(benchmarks) > 3 else ""
    raise pytest.UsageError(
        f"{len(benchmarks)} benchmark test(s) collected ({shown}{more}) but no recipe: give "
        "--recipe FILE (or the aifactory_recipe ini option); without one nothing is measured "
        "and every benchmark test would be skipped"
    )


@dataclass
class BenchmarkTally:
    """How many benchmark tests were selected here and how many ran anywhere (a skip is not a
    run); registered as a plugin, so it sees every test's report."""

    selected: set[str] = field(default_factory=set)
    ran: int = 0
    closing_line: str = ""
    """Said at the end of the session when no benchmark test ran."""

    def select(self, items: Iterable[pytest.Item]) -> None:
        self.selected = {item.nodeid for item in items if is_benchmark(item)}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "call" or report.skipped:
            return
        if any(name == BENCHMARK_PROPERTY for name, _ in report.user_properties):
            self.ran += 1

    def nothing_ran(self) -> bool:
        return self.ran == 0

    def verdict_line(self, asked: list[str]) -> str:
        """Why the session measured nothing, and whether that fails it."""
        why = (
            f"all {len(self.selected)} selected were skipped"
            if self.selected
            else "none was selected or all were skipped (-k, -m, or no client of the recipe "
            "matched)"
        )
        line = f"no benchmark test ran: {why}"
        if asked:
            return f"{line}; failing, since {' and '.join(asked)} went unchecked"
        return line


def what_was_asked(has_objectives: bool, fail_on_regression: bool) -> list[str]:
    asked = []
    if has_objectives:
        asked.append("the recipe's objectives (slo)")
    if fail_on_regression:
        asked.append("--fail-on-regression")
    return asked
