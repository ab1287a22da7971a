"""An invalid recipe stops pytest before anything starts, naming file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import run_benchmark

pytestmark = pytest.mark.slow  # each test runs a pytest session or real servers

CASES = {
    "syntax": ("name: x\nservices: {llm: {kind: llamacpp}\n", None),
    "unknown-key": (
        "name: x\nservices:\n  llm:\n    kind: llamacpp\n    modle: smollm2-135m\n",
        "5",
    ),
    "wrong-type": (
        "name: x\nservices:\n  llm: {kind: llamacpp}\nclients:\n  chat:\n    kind: openai\n"
        "    service: llm\n    load: {levels: [one]}\n",
        "8",
    ),
    "missing-service": (
        "name: x\nservices:\n  llm: {kind: llamacpp}\nclients:\n  chat:\n    kind: openai\n"
        "    service: nope\n",
        "7",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_invalid_recipe_stops_before_anything_starts(tmp_path: Path, case: str) -> None:
    text, line = CASES[case]
    recipe = tmp_path / f"{case}.yaml"
    recipe.write_text(text)
    session = run_benchmark(tmp_path, recipe, timeout=60)
    assert session.returncode == 4, session.output  # pytest's usage error
    assert "Traceback" not in session.output
    assert str(recipe) in session.stderr
    if line is not None:
        assert f"{recipe}:{line}:" in session.stderr, session.stderr
    assert session.run_dirs() == []  # no run started, so no job either
