"""The capacity search's rules, and the recipe's sweep settings."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pytest_aifactory.cases import cases_for, sweep_step
from pytest_aifactory.recipe import Recipe, RecipeError, Sweep, load_recipe
from pytest_aifactory.sweep import CapacitySearch, SweepStep, describe_outcome
from tests.factories import recipe_document
from tests.helpers import write_recipe


def search_with(capacity: float, **settings: Any) -> tuple[CapacitySearch, list[float]]:
    """Run a search against a server whose true capacity is `capacity`."""
    search = CapacitySearch(Sweep(**settings))
    measured = []
    while (level := search.next_level()) is not None:
        measured.append(level)
        search.record(SweepStep(level, level <= capacity))
        assert len(measured) < 50
    return search, measured


def confirmed_search(
    lucky: float, confirmed: float, boundary: int = 3
) -> tuple[CapacitySearch, list[tuple[float, int]]]:
    """The session's loop against a server that holds up to `lucky` on one load and only up
    to `confirmed` over `boundary` loads judged on their intervals."""
    search = CapacitySearch(Sweep(start=1, factor=2, max=16, boundary_repeats=boundary))
    loads: list[tuple[float, int]] = []
    confirming = False
    while True:
        level = search.next_level()
        if level is None:
            level = search.unconfirmed_capacity()
            if level is None:
                break
            confirming = True
        repeats = boundary if confirming else 1
        loads.append((level, repeats))
        passed = level <= (confirmed if confirming else lucky)
        search.record(SweepStep(level, passed, repeats=repeats, confirmed=confirming))
        assert len(loads) < 50
    return search, loads


def test_a_capacity_that_held_by_luck_is_measured_again_and_the_search_goes_on_below() -> None:
    search, loads = confirmed_search(lucky=6, confirmed=4)
    assert loads == [(1, 1), (2, 1), (4, 1), (8, 1), (6, 1), (7, 1), (6, 3), (5, 3), (4, 3)]
    outcome = search.outcome()
    assert outcome["capacity"] == 4
    assert outcome["capacity_range"] == [4, 5]
    assert outcome["passed_at"] is not None
    assert outcome["passed_at"]["confirmed"] is True
    assert outcome["passed_at"]["repeats"] == 3
    by_level = {s["level"]: s for s in outcome["steps"]}
    assert by_level[6]["passed"] is False  # its single lucky load no longer counts
    assert by_level[6]["confirmed"] is True
    assert "over 3 loads, judged on its intervals" in describe_outcome("chat", outcome)


def test_a_capacity_confirmed_at_once_costs_one_more_measurement() -> None:
    search, loads = confirmed_search(lucky=6, confirmed=6)
    assert loads[-1] == (6, 3)
    assert [level for level, _ in loads].count(6) == 2
    assert search.capacity == 6
    assert search.outcome()["capacity_range"] == [6, 7]


def test_one_boundary_repeat_keeps_the_single_load_verdict() -> None:
    search, loads = confirmed_search(lucky=6, confirmed=4, boundary=1)
    assert all(repeats == 1 for _, repeats in loads)
    assert search.capacity == 6


@pytest.mark.parametrize("capacity", [1, 2, 3, 5, 6, 7, 13, 31, 63])
def test_concurrency_search_finds_the_exact_capacity(capacity: int) -> None:
    search, measured = search_with(capacity, start=1, factor=2, max=64)
    assert search.capacity == capacity
    assert search.failed_at == capacity + 1
    assert all(level.is_integer() for level in measured)
    assert len(measured) == len(set(measured))  # no level measured twice


def test_search_steps_up_by_factor_then_bisects() -> None:
    _, measured = search_with(11, start=1, factor=2, max=64)
    assert measured[:5] == [1, 2, 4, 8, 16]
    assert measured[5:] == [12, 10, 11]


def test_capacity_at_max_says_the_limit_is_higher() -> None:
    search, measured = search_with(1000, start=2, factor=3, max=20)
    assert measured == [2, 6, 18, 20]
    outcome = search.outcome()
    assert outcome["capacity"] == 20
    assert outcome["reached_max"] is True
    assert "limit is higher" in describe_outcome("chat", outcome)


def test_no_capacity_when_the_first_level_fails() -> None:
    search, measured = search_with(0.5, start=1, max=8)
    assert measured == [1]
    outcome = search.outcome()
    assert outcome["capacity"] is None
    assert "no capacity" in describe_outcome("chat", outcome)


def test_rate_search_bisects_to_its_resolution() -> None:
    search, _ = search_with(7.3, over="rate", start=1, factor=2, max=32, resolution=0.25)
    assert search.capacity is not None
    assert search.failed_at is not None
    assert search.capacity <= 7.3 < search.failed_at
    assert search.failed_at - search.capacity <= 0.25


def test_min_capacity_flags_a_low_capacity() -> None:
    search, _ = search_with(3, start=1, max=16, min_capacity=4)
    outcome = search.outcome()
    assert outcome["below_min_capacity"] is True
    assert "below min_capacity 4" in describe_outcome("chat", outcome)


SLO = {"chat": {"ttft_ms": {"p99": {"max": 500}}}}


def sweeping(load: dict[str, Any], slo: bool = True) -> dict[str, Any]:
    return recipe_document(name="sweeping", client={"load": load}, **({"slo": SLO} if slo else {}))


def test_a_sweep_is_one_test_and_its_steps_are_ordinary_cases(
    make_recipe: Callable[..., Recipe],
) -> None:
    recipe = make_recipe(client={"load": {"mode": "sweep", "sweep": {"max": 16}}}, slo=SLO)
    (case,) = cases_for(recipe)
    assert (case.mode, case.label, case.id) == ("sweep", "sweep", "chat-sweep")
    step = sweep_step(case, recipe.clients["chat"], 4)
    assert (step.mode, step.level, step.label, step.id) == (
        "concurrency",
        4.0,
        "concurrency=4",
        "chat-sweep-concurrency-4",
    )


@pytest.mark.parametrize(
    ("load", "slo", "where", "message"),
    [
        ({"mode": "sweep"}, False, "clients.chat.load.mode", "give slo.chat"),
        ({"mode": "sweep", "levels": [1, 2]}, True, "clients.chat.load.levels", "sweep.start"),
        ({"mode": "rate", "sweep": {"max": 4}}, True, "clients.chat.load.sweep", "mode: sweep"),
        ({"mode": "sweep", "sweep": {"start": 1.5}}, True, "sweep.start", "whole number"),
        ({"mode": "sweep", "sweep": {"start": 8, "max": 4}}, True, "sweep.max", "below start"),
        ({"mode": "sweep", "sweep": {"factor": 1}}, True, "sweep.factor", "greater than 1"),
    ],
)
def test_bad_sweep_settings_are_named(
    tmp_path: Path, load: dict[str, Any], slo: bool, where: str, message: str
) -> None:
    path = write_recipe(tmp_path / "recipe.yaml", sweeping(load, slo))
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    text = str(caught.value)
    assert where in text
    assert message in text
