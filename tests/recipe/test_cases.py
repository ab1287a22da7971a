"""Splitting a load level over client processes: together they make the requested load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pytest_aifactory.cases import cases_for, process_specs
from pytest_aifactory.recipe import Recipe
from tests.factories import recipe


def split_recipe(load: dict[str, Any], nodes: int = 3, per_node: int = 2) -> Recipe:
    return recipe(
        name="split", client={"nodes": nodes, "processes_per_node": per_node, "load": load}
    )


def specs_for(r: Recipe, level_index: int = 0):  # type: ignore[no-untyped-def]
    case = cases_for(r)[level_index]
    return process_specs(
        case,
        r.clients["chat"],
        base_url="http://127.0.0.1:1",
        model="m",
        records_path=lambda i: Path(f"/tmp/r{i}"),
        progress_path=lambda i: Path(f"/tmp/p{i}"),
        heartbeat_path=None,
        barrier_dir=Path("/tmp/barrier"),
    )


@pytest.mark.parametrize(("level", "requests"), [(8, 64), (6, 60), (7, 13), (13, 100)])
def test_concurrency_and_requests_add_up(level: int, requests: int) -> None:
    specs = specs_for(
        split_recipe({"mode": "concurrency", "levels": [level], "requests": requests})
    )
    assert sum(int(s.level) for s in specs) == level
    assert sum(s.requests for s in specs) == requests
    assert all(s.requests >= 1 for s in specs)
    assert [s.process for s in specs] == list(range(len(specs)))
    assert {s.processes for s in specs} == {len(specs)}
    assert len({s.seed for s in specs}) == len(specs)


def test_idle_processes_are_not_started() -> None:
    specs = specs_for(split_recipe({"mode": "concurrency", "levels": [2], "requests": 10}))
    assert len(specs) == 2
    assert [s.requests for s in specs] == [5, 5]
    assert specs[0].processes == 2


def test_rate_is_shared() -> None:
    specs = specs_for(split_recipe({"mode": "rate", "levels": [3], "requests": 4}))
    assert len(specs) == 4
    assert sum(s.level for s in specs) == pytest.approx(3.0)
    assert sum(s.requests for s in specs) == 4


def test_levels_get_different_prompts() -> None:
    r = split_recipe({"mode": "concurrency", "levels": [1, 2], "requests": 4}, nodes=1, per_node=1)
    assert specs_for(r, 0)[0].seed != specs_for(r, 1)[0].seed
