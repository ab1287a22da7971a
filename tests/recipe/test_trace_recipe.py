"""A replayed trace in a recipe: `dataset: {kind: trace}` with `load.mode: replay`, whose levels
are speeds; the pairing, the trace file and its keys checked before any job starts, each problem
named with the recipe's file, line and key (and the trace's own line); the level split over
processes and its job's time planned from the trace's span."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from pytest_aifactory.cases import cases_for, process_specs
from pytest_aifactory.job_time import START_SLACK_S, level_seconds
from pytest_aifactory.recipe import Recipe, RecipeError, RecipeProblem, load_recipe
from tests.factories import recipe_document
from tests.helpers import validate_refuses

TRACE_ROWS = [
    {"timestamp": 0, "input_length": 30, "output_length": 4, "hash_ids": [0, 1]},
    {"timestamp": 1500, "input_length": 20, "output_length": 2, "hash_ids": [0]},
    {"timestamp": 4000, "input_length": 10, "output_length": 3, "hash_ids": [2]},
]


def write_trace(folder: Path, rows: list[Any] | None = None) -> Path:
    path = folder / "trace.jsonl"
    rows = TRACE_ROWS if rows is None else rows
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def write_recipe(tmp_path: Path, client: dict[str, Any]) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe_document(client=client), sort_keys=False))
    return path


def replay_client(**changes: Any) -> dict[str, Any]:
    client: dict[str, Any] = {
        "dataset": {"kind": "trace", "path": "trace.jsonl"},
        "load": {"mode": "replay", "levels": [1, 2]},
    }
    for key, value in changes.items():
        client[key] = {**client[key], **value} if isinstance(value, dict) else value
    return client


def loads(tmp_path: Path, client: dict[str, Any]) -> Recipe:
    return load_recipe(write_recipe(tmp_path, client), environ={})


def problems(tmp_path: Path, client: dict[str, Any]) -> list[RecipeProblem]:
    with pytest.raises(RecipeError) as caught:
        loads(tmp_path, client)
    return caught.value.problems


def test_levels_are_speeds_and_the_whole_trace_is_replayed(tmp_path: Path) -> None:
    write_trace(tmp_path)
    recipe = loads(tmp_path, replay_client())
    client = recipe.clients["chat"]
    assert client.load.requests is None, "no requests given: the whole trace"
    assert client.dataset.format == "auto"
    assert client.dataset.block_tokens == 512
    assert client.dataset.path == str(tmp_path / "trace.jsonl")
    cases = cases_for(recipe)
    assert [(c.mode, c.level, c.label, c.id) for c in cases] == [
        ("replay", 1.0, "replay=1", "chat-replay-1"),
        ("replay", 2.0, "replay=2", "chat-replay-2"),
    ]


def test_every_process_replays_at_the_levels_speed(tmp_path: Path) -> None:
    write_trace(tmp_path)
    recipe = loads(
        tmp_path, replay_client(processes_per_node=3, load={"requests": 5, "warmup_requests": 2})
    )
    specs = process_specs(
        cases_for(recipe)[1],
        recipe.clients["chat"],
        base_url="http://127.0.0.1:1",
        model="m",
        records_path=lambda i: Path(f"/tmp/r{i}"),
        progress_path=lambda i: Path(f"/tmp/p{i}"),
        heartbeat_path=None,
    )
    assert [s.level for s in specs] == [2.0, 2.0, 2.0]
    assert [s.requests for s in specs] == [2, 2, 1], "entry i goes to process i mod 3"
    assert [s.processes for s in specs] == [3, 3, 3]
    assert {s.dataset.kind for s in specs} == {"trace"}


def test_a_replays_job_lasts_the_traces_span_over_the_speed(tmp_path: Path) -> None:
    write_trace(tmp_path)
    recipe = loads(tmp_path, replay_client(load={"timeout_s": 30}))
    client = recipe.clients["chat"]
    assert level_seconds(client, "replay", 1.0) == START_SLACK_S + 4.0 + 30
    assert level_seconds(client, "replay", 2.0) == START_SLACK_S + 2.0 + 30
    capped = loads(tmp_path, replay_client(load={"timeout_s": 30, "requests": 2}))
    assert level_seconds(capped.clients["chat"], "replay", 1.0) == START_SLACK_S + 1.5 + 30


@pytest.mark.parametrize("mode", ["concurrency", "rate", "sweep"])
def test_a_trace_needs_mode_replay(tmp_path: Path, mode: str) -> None:
    write_trace(tmp_path)
    load: dict[str, Any] = {"mode": mode}
    if mode != "sweep":
        load["levels"] = [1]
    found = problems(tmp_path, {"dataset": {"kind": "trace", "path": "trace.jsonl"}, "load": load})
    (problem,) = [p for p in found if p.key != "clients.chat.load.mode"]  # a sweep's own: no SLO
    assert problem.key == "clients.chat.dataset.kind"
    assert "needs load.mode: replay" in problem.message
    assert f"not mode: {mode}" in problem.message
    assert problem.line is not None


def test_mode_replay_needs_a_trace(tmp_path: Path) -> None:
    (problem,) = problems(tmp_path, {"load": {"mode": "replay", "levels": [1]}})
    assert problem.key == "clients.chat.load.mode"
    assert "needs a dataset of kind 'trace' (this client's is 'random')" in problem.message
    vectors = recipe_document(client={"kind": "vectordb", "load": {"mode": "replay"}})
    path = tmp_path / "vectors.yaml"
    path.write_text(yaml.safe_dump(vectors, sort_keys=False))
    with pytest.raises(RecipeError) as caught:
        load_recipe(path, environ={})
    assert any(p.key == "clients.chat.load.mode" for p in caught.value.problems)


def test_a_trace_needs_a_path_and_its_keys_are_its_own(tmp_path: Path) -> None:
    (missing,) = problems(tmp_path, {"dataset": {"kind": "trace"}, "load": {"mode": "replay"}})
    assert missing.key == "clients.chat.dataset.path"
    assert "needs path" in missing.message
    (unread,) = problems(tmp_path, {"dataset": {"format": "mooncake"}})
    assert unread.key == "clients.chat.dataset.format"
    assert "not read by a 'random' dataset" in unread.message
    write_trace(tmp_path)
    (wrong,) = problems(tmp_path, replay_client(dataset={"format": "alibaba"}))
    assert wrong.key == "clients.chat.dataset.format"


def test_trace_mistakes_are_named_by_line_and_key(tmp_path: Path) -> None:
    write_trace(tmp_path, [TRACE_ROWS[0], {"timestamp": 3, "input_length": 0, "output_length": 2}])
    (problem,) = problems(tmp_path, replay_client())
    assert problem.key == "clients.chat.dataset.path"
    assert problem.message == (
        f"{tmp_path / 'trace.jsonl'}: line 2: key 'input_length': expected a whole number of "
        "at least 1, got 0"
    )
    (csv_problem,) = problems(
        tmp_path, replay_client(dataset={"path": "trace.jsonl", "format": "burstgpt"})
    )
    assert csv_problem.message.endswith("a BurstGPT trace is a .csv file")
    (embeddings,) = problems(tmp_path, replay_client(api="embeddings"))
    assert "api completions or chat" in embeddings.message


def test_recipe_validate_names_trace_problems_without_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "trace.csv").write_text("Timestamp,Request tokens,Response tokens\n1,x,4\n")
    path = write_recipe(tmp_path, replay_client(dataset={"path": "trace.csv"}))
    output = validate_refuses(path)
    assert "clients.chat.dataset.path" in output
    assert "line 2: column 'Request tokens'" in output
