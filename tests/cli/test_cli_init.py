"""`aifactory init` and the suites the package ships: what another repository starts from."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pytest_aifactory.cli import main
from pytest_aifactory.recipe import load_recipe
from tests.helpers import REPO

STARTER = ("benchmarks/test_aifactory.py", "recipes/aifactory.yaml")
GITHUB = ".github/workflows/aifactory.yml"
GITLAB = ".gitlab/aifactory.gitlab-ci.yml"
SHIPPED_RECIPE = REPO / "recipes" / "llamacpp-smollm2.yaml"


def written(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_init_writes_the_suite_a_recipe_and_a_github_job(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    project = tmp_path / "repo"
    assert main(["init", str(project)]) == 0
    out, err = capsys.readouterr()
    assert written(project) == sorted([*STARTER, GITHUB])
    assert out.splitlines() == [f"wrote {project / name}" for name in [*STARTER, GITHUB]]
    assert "pytest benchmarks/ --recipe recipes/aifactory.yaml" in err

    # the recipe is the shipped default, commented for its new home, and valid
    recipe = project / "recipes" / "aifactory.yaml"
    assert yaml.safe_load(recipe.read_text()) == yaml.safe_load(SHIPPED_RECIPE.read_text())
    assert load_recipe(recipe).platform.executor == "local"

    workflow = yaml.safe_load((project / GITHUB).read_text())
    steps = workflow["jobs"]["benchmark"]["steps"]
    commands = " ".join(step.get("run", "") for step in steps)
    assert "pytest benchmarks/ --recipe recipes/aifactory.yaml" in commands
    assert "--fail-on-regression" in commands
    assert "--compare=last" in commands
    uploads = [step for step in steps if step.get("uses", "").startswith("actions/upload-artifact")]
    assert len(uploads) == 1
    assert "steps.run.outputs.folder" in uploads[0]["with"]["path"]


def test_init_gitlab_both_and_none(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for ci, expected in (("gitlab", [GITLAB]), ("both", [GITHUB, GITLAB]), ("none", [])):
        project = tmp_path / ci
        assert main(["init", str(project), "--ci", ci]) == 0
        assert written(project) == sorted([*STARTER, *expected])
    err = capsys.readouterr().err
    assert f"include: [{{local: {GITLAB}}}]" in err
    job = yaml.safe_load((tmp_path / "gitlab" / GITLAB).read_text())["aifactory-benchmark"]
    script = " ".join(job["script"])
    assert "pytest benchmarks/ --recipe recipes/aifactory.yaml" in script
    assert "--fail-on-regression" in script
    assert job["artifacts"]["when"] == "always"
    assert job["artifacts"]["paths"] == ["aifactory-run/"]


def test_init_refuses_to_overwrite_and_names_each_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mine = tmp_path / "recipes" / "aifactory.yaml"
    mine.parent.mkdir()
    mine.write_text("name: mine\n")
    workflow = tmp_path / GITHUB
    workflow.parent.mkdir(parents=True)
    workflow.write_text("name: mine\n")

    assert main(["init", str(tmp_path)]) == 3
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"aifactory: {mine} already exists: not overwritten (--force replaces it)",
        f"aifactory: {workflow} already exists: not overwritten (--force replaces it)",
    ]
    assert "Traceback" not in err
    assert mine.read_text() == "name: mine\n"
    assert not (tmp_path / "benchmarks").exists()  # nothing written when anything is refused

    assert main(["init", str(tmp_path), "--force"]) == 0
    assert yaml.safe_load(mine.read_text())["name"] == "llamacpp-smollm2"
    assert (tmp_path / "benchmarks" / "test_aifactory.py").is_file()


def test_init_into_a_file_or_onto_a_folder_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("")
    assert main(["init", str(a_file)]) == 2
    assert capsys.readouterr().err == f"aifactory: {a_file}: not a folder\n"

    (tmp_path / "repo" / "recipes" / "aifactory.yaml").mkdir(parents=True)
    assert main(["init", str(tmp_path / "repo"), "--force"]) == 3
    err = capsys.readouterr().err
    assert "aifactory.yaml is a folder" in err
    assert not (tmp_path / "repo" / "benchmarks").exists()

    other = tmp_path / "other"
    other.mkdir()
    (other / "benchmarks").write_text("")
    assert main(["init", str(other)]) == 3
    err = capsys.readouterr().err
    assert err == (
        f"aifactory: {other / 'benchmarks'} is a file: "
        f"{other / 'benchmarks' / 'test_aifactory.py'} cannot be written\n"
    )
    assert written(other) == ["benchmarks"]


def collected(cwd: Path, *args: str) -> list[str]:
    """The test ids pytest collects, as a user's pytest in `cwd` would (this checkout is not on
    its path: it finds the package as an installed one)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return [line for line in done.stdout.splitlines() if "::" in line]


def test_the_starter_module_collects_the_shipped_suites(tmp_path: Path) -> None:
    assert main(["init", str(tmp_path), "--ci", "none"]) == 0
    ids = collected(tmp_path, "benchmarks/", "--recipe", "recipes/aifactory.yaml")
    module = "benchmarks/test_aifactory.py"
    assert ids == [
        f"{module}::test_serving[chat-concurrency-1]",
        f"{module}::test_serving[chat-concurrency-4]",
        f"{module}::test_serving[chat-concurrency-8]",
        f"{module}::test_storage[no-client]",
        f"{module}::test_vectordb[no-client]",
    ]


def test_the_shipped_suites_collect_with_pyargs(tmp_path: Path) -> None:
    ids = collected(
        tmp_path, "--pyargs", "pytest_aifactory.benchmarks", "--recipe", str(SHIPPED_RECIPE)
    )
    names = [test_id.rsplit("::", 1)[1] for test_id in ids]
    assert names == [
        "test_serving[chat-concurrency-1]",
        "test_serving[chat-concurrency-4]",
        "test_serving[chat-concurrency-8]",
        "test_storage[no-client]",
        "test_vectordb[no-client]",
    ]


def test_the_repository_modules_keep_their_test_ids() -> None:
    ids = collected(REPO, "benchmarks/", "--recipe", str(SHIPPED_RECIPE))
    assert ids == [
        "benchmarks/test_inference.py::test_serving[chat-concurrency-1]",
        "benchmarks/test_inference.py::test_serving[chat-concurrency-4]",
        "benchmarks/test_inference.py::test_serving[chat-concurrency-8]",
        "benchmarks/test_storage.py::test_storage[no-client]",
        "benchmarks/test_vectordb.py::test_vectordb[no-client]",
    ]
