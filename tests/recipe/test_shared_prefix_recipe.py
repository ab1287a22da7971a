"""A `shared_prefix` dataset in a recipe: its keys checked before any job starts, each mistake
named by its key and line, and its keys refused on kinds that do not read them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from pytest_aifactory.cases import cases_for, process_specs
from pytest_aifactory.recipe import RecipeError, RecipeProblem, load_recipe
from tests.factories import recipe_document
from tests.helpers import validate_refuses


def write(tmp_path: Path, dataset: dict[str, Any], **client: Any) -> Path:
    path = tmp_path / "recipe.yaml"
    document = recipe_document(client={"dataset": dataset, **client})
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def one_problem(tmp_path: Path, dataset: dict[str, Any], **client: Any) -> RecipeProblem:
    with pytest.raises(RecipeError) as caught:
        load_recipe(write(tmp_path, dataset, **client), environ={})
    found = caught.value.problems
    assert len(found) == 1, found
    assert found[0].line is not None
    return found[0]


def test_a_shared_prefix_dataset_reaches_the_client_processes(tmp_path: Path) -> None:
    dataset = {"kind": "shared_prefix", "groups": 4, "prefix_tokens": 64, "input_tokens": 16}
    recipe = load_recipe(write(tmp_path, dataset), environ={})
    client = recipe.clients["chat"]
    case = cases_for(recipe)[0]
    specs = process_specs(
        case,
        client,
        base_url="http://127.0.0.1:1",
        model="m",
        records_path=lambda i: tmp_path / f"{i}.jsonl",
        progress_path=lambda i: tmp_path / f"{i}.json",
        heartbeat_path=None,
    )
    assert {(s.dataset.kind, s.dataset.groups, s.dataset.prefix_tokens) for s in specs} == {
        ("shared_prefix", 4, 64)
    }


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("groups", 0, "must be at least 1, got 0"),
        ("prefix_tokens", -3, "must be at least 1, got -3"),
        ("groups", "many", "integer"),
    ],
)
def test_groups_and_prefix_need_a_positive_count(
    tmp_path: Path, key: str, value: Any, message: str
) -> None:
    problem = one_problem(tmp_path, {"kind": "shared_prefix", key: value})
    assert problem.key == f"clients.chat.dataset.{key}"
    assert message in problem.message


def test_keys_of_other_kinds_are_refused(tmp_path: Path) -> None:
    problem = one_problem(tmp_path, {"kind": "random", "groups": 4})
    assert problem.key == "clients.chat.dataset.groups"
    assert "not read by a 'random' dataset" in problem.message
    problem = one_problem(tmp_path, {"kind": "shared_prefix", "max_input_tokens": 512})
    assert problem.key == "clients.chat.dataset.max_input_tokens"
    assert "not read by a 'shared_prefix' dataset" in problem.message
    assert "groups, prefix_tokens" in problem.message


def test_a_vectordb_client_cannot_send_shared_prefixes(tmp_path: Path) -> None:
    problem = one_problem(tmp_path, {"kind": "shared_prefix"}, kind="vectordb", service=None)
    assert problem.key == "clients.chat.dataset.kind"
    assert "sends vectors" in problem.message


def test_recipe_validate_names_the_key_without_a_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, {"kind": "shared_prefix", "groups": 0})
    output = validate_refuses(path)
    assert "clients.chat.dataset.groups" in output
    assert str(path) in output
