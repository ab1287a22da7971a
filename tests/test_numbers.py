"""One reading of numbers from documents, for summaries, recipes and reports alike."""

from __future__ import annotations

import math

import pytest

from pytest_aifactory.numbers import finite_number


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (3, 3.0),
        (2.5, 2.5),
        ("42", 42.0),
        (" 1e3 ", 1000.0),
        (None, None),
        (True, None),
        (False, None),
        ("fast", None),
        ([1], None),
        ({"max": 1}, None),
        (math.nan, None),
        (math.inf, None),
        ("-inf", None),
        (10**400, None),
    ],
)
def test_finite_number(value: object, expected: float | None) -> None:
    assert finite_number(value) == expected
