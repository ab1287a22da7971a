"""Fixtures benchmark modules use: the run's driver, the per-test load runner, monitoring."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest

from pytest_aifactory.cases import LoadCase
from pytest_aifactory.driver import CaseError, Driver
from pytest_aifactory.monitor.run_monitor import RunMonitor
from pytest_aifactory.report.junit import junit_properties
from pytest_aifactory.results import CaseResult
from pytest_aifactory.stash_keys import DRIVER_KEY, RESULT_KEY


class AIFactoryWarning(UserWarning):
    """Something the run's reader should know that does not fail the test (monitoring lost,
    server and client figures disagreeing); shown in pytest's warnings summary."""


@pytest.fixture(scope="session")
def aifactory(pytestconfig: pytest.Config) -> Driver:
    """The run's driver: recipe, services, results. Skips when no recipe was given."""
    driver = pytestconfig.stash.get(DRIVER_KEY, None)
    if driver is None:
        pytest.skip("no recipe: run with --recipe FILE")
    return driver


@pytest.fixture
def aifactory_load(
    aifactory: Driver, request: pytest.FixtureRequest
) -> Callable[[LoadCase], CaseResult]:
    """Runs a load case in client jobs against its (started on demand) service."""

    def run(case: LoadCase) -> CaseResult:
        try:
            runner = aifactory.run_sweep if case.mode == "sweep" else aifactory.run_case
            result = runner(case, test_id=request.node.nodeid, name=request.node.name)
        except CaseError as err:
            message = str(err)
        else:
            request.node.stash[RESULT_KEY] = result
            run_id = aifactory.run.run_id if aifactory.run is not None else None
            request.node.user_properties.extend(junit_properties(result, run_id))
            for text in result.warnings:
                warnings.warn(AIFactoryWarning(text), stacklevel=2)
            return result
        pytest.fail(message, pytrace=False)
        return result

    return run


@pytest.fixture
def aifactory_monitor(aifactory: Driver) -> RunMonitor | None:
    """The run's monitoring (Prometheus or the direct scraper), started with the run; None when
    the recipe turns it off. Benchmarks that query the server's series use it."""
    return aifactory.start_monitoring()
