"""Replicas in a recipe: `replicas: N`, an external service's list of URLs and a client's
`openai.balance`, and every setting where several servers make no sense refused before any job
starts, with the file, line and key named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from pytest_aifactory.recipe import Recipe, RecipeError, RecipeProblem, load_recipe
from tests.factories import recipe_document
from tests.helpers import validate_refuses


def write(tmp_path: Path, document: dict[str, Any]) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def loads(tmp_path: Path, **overrides: Any) -> Recipe:
    return load_recipe(write(tmp_path, recipe_document(**overrides)), environ={})


def one_problem(tmp_path: Path, **overrides: Any) -> RecipeProblem:
    path = write(tmp_path, recipe_document(**overrides))
    with pytest.raises(RecipeError) as caught:
        load_recipe(path, environ={})
    problems = caught.value.problems
    assert len(problems) == 1, problems
    assert problems[0].file == str(path)
    assert problems[0].line is not None
    return problems[0]


def test_replicas_and_url_lists_validate(tmp_path: Path) -> None:
    recipe = loads(
        tmp_path,
        service={"replicas": 3},
        client={"openai": {"balance": "least_outstanding"}},
    )
    assert recipe.services["llm"].replicas == 3
    assert recipe.services["llm"].replica_count == 3
    assert recipe.clients["chat"].options()["balance"] == "least_outstanding"
    external = loads(
        tmp_path, service={"kind": "external", "url": ["http://a:8000", "http://b:8000/"]}
    )
    assert external.services["llm"].urls == ["http://a:8000", "http://b:8000/"]
    assert external.services["llm"].replica_count == 2
    assert loads(tmp_path).clients["chat"].options()["balance"] == "round_robin"


def test_a_saved_recipe_with_replicas_still_validates(tmp_path: Path) -> None:
    """recipe.json holds every key, defaults included."""
    recipe = loads(tmp_path, service={"replicas": 2})
    again = Recipe.model_validate(recipe.model_dump())
    assert again.services["llm"].replicas == 2


@pytest.mark.parametrize(
    ("service", "key", "words"),
    [
        (
            {"kind": "external", "url": "http://a:1", "replicas": 2},
            "services.llm.replicas",
            "list the servers' URLs in `url` instead",
        ),
        (
            {"kind": "postgres", "replicas": 2},
            "services.llm.replicas",
            "a service of kind 'postgres' has one server",
        ),
        (
            {"nodes": 2, "replicas": 2},
            "services.llm.replicas",
            "give replicas or nodes, not both",
        ),
        ({"replicas": 0}, "services.llm.replicas", "must be at least 1, got 0"),
        (
            {"kind": "external", "url": ["http://a:1", "http://a:1/"]},
            "services.llm.url[1]",
            "http://a:1 is listed twice",
        ),
        (
            {"kind": "external", "url": ["http://a:1", "ftp://b"]},
            "services.llm.url[1]",
            "expected http://host:port",
        ),
        ({"kind": "external", "url": []}, "services.llm.url", "needs at least one"),
    ],
)
def test_replicas_where_they_make_no_sense_are_refused(
    tmp_path: Path, service: dict[str, Any], key: str, words: str
) -> None:
    client = {"kind": "sql"} if service.get("kind") == "postgres" else None
    problem = one_problem(tmp_path, service=service, client=client)
    assert problem.key == key, problem
    assert words in problem.message, problem


def test_an_unknown_balance_is_refused(tmp_path: Path) -> None:
    problem = one_problem(tmp_path, client={"openai": {"balance": "random"}})
    assert problem.key == "clients.chat.openai.balance"
    assert "round_robin" in problem.message
    assert "least_outstanding" in problem.message


def test_a_client_that_cannot_spread_is_refused(tmp_path: Path) -> None:
    """A Triton client sends to one address: on a service of two servers it would load one."""
    problem = one_problem(
        tmp_path,
        service={"kind": "command", "command": "serve {port}", "replicas": 2},
        client={"kind": "triton"},
    )
    assert problem.key == "clients.chat.service"
    assert problem.message.startswith("service 'llm' has 2 replicas")
    assert "a client of kind 'triton' sends to one server only" in problem.message
    external = {"kind": "external", "url": ["http://a:1", "http://b:1"]}
    problem = one_problem(tmp_path, service=external, client={"kind": "triton"})
    assert problem.key == "clients.chat.service"


def test_recipe_validate_names_replica_problems_without_a_traceback(tmp_path: Path) -> None:
    document = recipe_document(service={"replicas": 2, "nodes": 2})
    document["services"]["db"] = {"kind": "command", "command": "db {port}", "replicas": 2}
    document["clients"]["query"] = {"kind": "triton", "service": "db"}
    path = write(tmp_path, document)
    output = validate_refuses(path)
    assert f"{path}:" in output
    assert "services.llm.replicas" in output
    assert "clients.query.service: service 'db' has 2 replicas" in output
