"""Where the plugin keeps its objects on pytest's config and items (pytest's `Stash`).

Kept in a module of their own so that the plugin, the fixtures and the pytest-html extras
read the same keys without importing each other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pytest_aifactory.driver import Driver
    from pytest_aifactory.report.baseline import BaselineCheck
    from pytest_aifactory.results import CaseResult
    from pytest_aifactory.session_guard import BenchmarkTally

DRIVER_KEY: pytest.StashKey[Driver | None] = pytest.StashKey()
"""On the config: the run's driver; None when no recipe was given."""
RESULT_KEY: pytest.StashKey[CaseResult] = pytest.StashKey()
"""On a test item: what its load measured."""
BASELINE_KEY: pytest.StashKey[BaselineCheck | None] = pytest.StashKey()
"""On the config: the session's `--compare` / `--fail-on-regression`, and once the run is
saved, its outcome."""
TALLY_KEY: pytest.StashKey[BenchmarkTally] = pytest.StashKey()
"""On the config: the benchmark tests selected and run, so that a session that measured nothing
cannot pass a gate."""
