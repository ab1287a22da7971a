"""The test suite's own markers: which tests run by default, and what a test needs to run.

- `soak` tests run only when a marker expression names them (`-m soak`, `-m "soak and not
  slow"`). This is a collection hook rather than an `-m 'not soak'` in addopts: pytest keeps
  only the last `-m`, so `pytest -m "not slow"` would have replaced it and started the soak.
- `requires("fio", ...)`: the real components a test needs (tests/components.py), checked
  before its fixtures start anything.
"""

from __future__ import annotations

import re

import pytest

from tests.components import COMPONENTS, require_component

SOAK = "soak"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "requires(*components): real components the test needs; missing ones skip it, or fail "
        f"it under CI=true (known: {', '.join(sorted(COMPONENTS))})",
    )


def asks_for_soak(markexpr: str) -> bool:
    """The marker expression names the soak marker (whatever it says about it)."""
    return re.search(rf"\b{SOAK}\b", markexpr) is not None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if asks_for_soak(config.getoption("markexpr", "") or ""):
        return
    soak = [item for item in items if item.get_closest_marker(SOAK) is not None]
    if soak:
        config.hook.pytest_deselected(items=soak)
        items[:] = [item for item in items if item.get_closest_marker(SOAK) is None]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("requires"):
        for name in mark.args:
            if name not in COMPONENTS:
                pytest.fail(f"unknown component {name!r} in requires", pytrace=False)
            require_component(name)
