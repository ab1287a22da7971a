"""The suite's own markers (tests/markers.py), checked on small suites run by pytester: soak
tests run only when asked for by name, and a missing component skips a test outside CI and
fails it under CI."""

from __future__ import annotations

import pytest

from tests.components import COMPONENTS, Component

PLUGIN = ("-p", "tests.markers")


@pytest.fixture(autouse=True)
def only_the_plugin_under_test(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suites below measure nothing: no installed plugin is loaded into them, so each
    takes a fraction of a second and nothing else decides what runs."""
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")


SUITE = """
import pytest

@pytest.mark.soak
def test_soak():
    pass

@pytest.mark.slow
def test_slow():
    pass

def test_plain():
    pass
"""

MARKERS = """
[pytest]
markers =
    soak: long
    slow: slow
"""


@pytest.mark.parametrize(
    ("args", "ran", "deselected"),
    [
        ((), {"test_slow", "test_plain"}, 1),
        (("-m", "not slow"), {"test_plain"}, 2),
        (("-m", "soak"), {"test_soak"}, 2),
        (("-m", "soak or not soak"), {"test_soak", "test_slow", "test_plain"}, 0),
    ],
    ids=["default", "not-slow", "soak", "everything"],
)
def test_soak_runs_only_when_named(
    pytester: pytest.Pytester, args: tuple[str, ...], ran: set[str], deselected: int
) -> None:
    pytester.makeini(MARKERS)
    pytester.makepyfile(test_suite=SUITE)
    recorder = pytester.inline_run(*PLUGIN, *args)
    passed, skipped, failed = recorder.listoutcomes()
    assert {report.head_line for report in passed} == ran
    assert (skipped, failed) == ([], [])
    assert sum(len(call.items) for call in recorder.getcalls("pytest_deselected")) == deselected


NEEDS = """
import pytest

@pytest.mark.requires("always-here")
def test_has_it():
    pass

@pytest.mark.requires("never-here")
def test_lacks_it():
    pass

def test_needs_nothing():
    pass
"""


@pytest.fixture
def stand_in_components(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two components whose presence the test decides (pytester runs in this process)."""
    monkeypatch.setitem(COMPONENTS, "always-here", Component("always-here", "-", lambda: True))
    monkeypatch.setitem(
        COMPONENTS, "never-here", Component("never-here", "bash install-it.sh", lambda: False)
    )


@pytest.mark.usefixtures("stand_in_components")
def test_a_missing_component_skips_outside_ci_and_says_how_to_install_it(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CI", raising=False)
    pytester.makepyfile(test_needs=NEEDS)
    result = pytester.runpytest(*PLUGIN, "-rs")
    result.assert_outcomes(passed=2, skipped=1)
    result.stdout.fnmatch_lines(
        # at the test's own line, so the list names the tests that did not run
        ["SKIPPED [[]1[]] test_needs.py:*: never-here is not installed (bash install-it.sh)"]
    )


@pytest.mark.usefixtures("stand_in_components")
@pytest.mark.parametrize("ci", ["true", "TRUE", "1"])
def test_under_ci_a_missing_component_fails_the_run(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str
) -> None:
    monkeypatch.setenv("CI", ci)
    pytester.makepyfile(test_needs=NEEDS)
    result = pytester.runpytest(*PLUGIN)
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*a component is missing under CI: never-here is not installed*"])
    assert result.ret == pytest.ExitCode.TESTS_FAILED


@pytest.mark.usefixtures("stand_in_components")
def test_ci_false_is_not_ci(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "false")
    pytester.makepyfile(test_needs=NEEDS)
    pytester.runpytest(*PLUGIN).assert_outcomes(passed=2, skipped=1)


def test_an_unknown_component_is_an_error_not_a_skip(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_typo="""
        import pytest

        @pytest.mark.requires("promethues")
        def test_it():
            pass
        """
    )
    result = pytester.runpytest(*PLUGIN)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*unknown component 'promethues'*"])


def test_every_component_says_how_to_install_it() -> None:
    assert all(component.install.strip() for component in COMPONENTS.values())
    assert {"slurm", "prometheus", "postgresql", "vllm", "chromium", "fio"} <= set(COMPONENTS)
    assert {"llama-server", "tritonserver"} <= set(COMPONENTS)
