"""An invalid recipe stops pytest before anything starts, naming file, line and key.

Run by pytester in this process: what is checked is the plugin's handling of `--recipe`, which
needs no process of its own."""

from __future__ import annotations

import shutil

import pytest

from tests.helpers import BENCHMARK

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
    "unknown-client-kind": (
        "name: x\nservices:\n  llm: {kind: llamacpp}\nclients:\n  chat:\n    kind: openia\n"
        "    service: llm\n",
        "6",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_invalid_recipe_stops_before_anything_starts(pytester: pytest.Pytester, case: str) -> None:
    text, line = CASES[case]
    recipe = pytester.path / f"{case}.yaml"
    recipe.write_text(text)
    shutil.copy(BENCHMARK, pytester.path / BENCHMARK.name)
    reports = pytester.path / "reports"
    result = pytester.runpytest_inprocess(
        BENCHMARK.name, "--recipe", str(recipe), "--report-dir", str(reports)
    )
    output = result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.USAGE_ERROR, output
    assert "Traceback" not in output
    assert str(recipe) in result.stderr.str()
    if line is not None:
        assert f"{recipe}:{line}:" in result.stderr.str(), result.stderr.str()
    assert not reports.exists() or not any(reports.iterdir())  # no run, so no job either
