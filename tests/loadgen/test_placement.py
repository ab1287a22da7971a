"""Where a level's load processes run: spread over the client's nodes, not piled on the first.

A client job has nodes x processes_per_node tasks, ranked node by node (Slurm's and submitit's
numbering). A level that needs fewer processes than that must still load from as many nodes as
it can, or a 2-node client at concurrency 2 measures one node's network path twice.
"""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import pytest

from pytest_aifactory.cases import cases_for, place, process_specs, task_rank
from pytest_aifactory.loadgen.spec import LoadSpec
from pytest_aifactory.recipe import Recipe
from tests.factories import recipe


def client_recipe(load: dict[str, object], nodes: int, per_node: int) -> Recipe:
    return recipe(
        name="placement",
        client={"nodes": nodes, "processes_per_node": per_node, "load": load},
    )


def placed(r: Recipe) -> list[LoadSpec | None]:
    client = r.clients["chat"]
    specs = process_specs(
        cases_for(r)[0],
        client,
        base_url="http://127.0.0.1:1",
        model="m",
        records_path=lambda i: Path(f"/tmp/r{i}"),
        progress_path=lambda i: Path(f"/tmp/p{i}"),
        heartbeat_path=None,
    )
    return place(specs, client.nodes, client.processes_per_node)


def node_of(rank: int, per_node: int) -> int:
    return rank // per_node


def test_two_of_four_slots_use_both_nodes() -> None:
    tasks = placed(client_recipe({"levels": [2], "requests": 8}, nodes=2, per_node=2))
    assert [t.process if t else None for t in tasks] == [0, None, 1, None]
    busy = [node_of(rank, 2) for rank, t in enumerate(tasks) if t is not None]
    assert busy == [0, 1]
    assert sum(t.requests or 0 for t in tasks if t) == 8


def test_three_of_six_slots_one_per_node() -> None:
    tasks = placed(client_recipe({"levels": [3], "requests": 9}, nodes=3, per_node=2))
    busy = Counter(node_of(rank, 2) for rank, t in enumerate(tasks) if t is not None)
    assert busy == {0: 1, 1: 1, 2: 1}


def test_a_full_level_fills_every_task_node_by_node() -> None:
    tasks = placed(client_recipe({"levels": [6], "requests": 12}, nodes=3, per_node=2))
    assert all(t is not None for t in tasks)
    # every node runs two processes, and each process exactly once
    assert sorted(t.process for t in tasks if t) == list(range(6))
    assert Counter(node_of(rank, 2) for rank in range(6)) == {0: 2, 1: 2, 2: 2}


def test_fewer_requests_than_slots_in_rate_mode_spread_too() -> None:
    tasks = placed(
        client_recipe({"mode": "rate", "levels": [4], "requests": 2}, nodes=2, per_node=3)
    )
    busy = [node_of(rank, 3) for rank, t in enumerate(tasks) if t is not None]
    assert busy == [0, 1]


@pytest.mark.parametrize(("nodes", "per_node"), list(itertools.product(range(1, 5), range(1, 5))))
def test_any_number_of_processes_is_balanced_over_the_nodes(nodes: int, per_node: int) -> None:
    slots = nodes * per_node
    for active in range(1, slots + 1):
        ranks = [task_rank(p, nodes, per_node) for p in range(active)]
        assert len(set(ranks)) == active
        assert all(0 <= r < slots for r in ranks)
        per_node_count = Counter(node_of(r, per_node) for r in ranks)
        counts = [per_node_count.get(n, 0) for n in range(nodes)]
        # as even as can be: no node has two more than another, none exceeds its slots
        assert max(counts) - min(counts) <= 1, (active, counts)
        assert max(counts) <= per_node


def test_a_process_beyond_the_slots_is_refused() -> None:
    with pytest.raises(ValueError, match="does not fit 2 x 2"):
        task_rank(4, 2, 2)
