"""The recipe's `regression:` section: tolerances checked when the recipe loads, and how
`--fail-on-regression` combines them with its own SPEC."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pytest_aifactory.plugin import gate_tolerances
from pytest_aifactory.recipe import Recipe, RecipeError, load_recipe
from tests.helpers import write_recipe


def recipe_with(tmp_path: Path, regression: dict[str, Any] | None) -> Recipe:
    document: dict[str, Any] = {
        "name": "gated",
        "services": {"llm": {"kind": "external", "url": "http://127.0.0.1:9"}},
        "clients": {
            "chat": {
                "kind": "openai",
                "service": "llm",
                "load": {"mode": "concurrency", "levels": [1], "requests": 2},
            }
        },
    }
    if regression is not None:
        document["regression"] = regression
    return load_recipe(write_recipe(tmp_path / "recipe.yaml", document))


def test_tolerances_are_percentages_written_either_way(tmp_path: Path) -> None:
    recipe = recipe_with(
        tmp_path, {"tolerances": {"ttft_ms.p99": "10%", "output_throughput": 5}, "confidence": 0.9}
    )
    assert recipe.regression.fractions() == {"ttft_ms.p99": 0.10, "output_throughput": 0.05}
    assert recipe.regression.confidence == 0.9


@pytest.mark.parametrize(
    ("regression", "said"),
    [
        ({"tolerances": {"ttft_ms.p123": "10%"}}, "regression.tolerances['ttft_ms.p123']"),
        ({"tolerances": {"ttft_ms.p99": "ten"}}, "expected METRIC:PERCENT%"),
        ({"confidence": 1.5}, "regression.confidence"),
        ({"tolerance": {}}, "regression.tolerance"),
    ],
    ids=["unknown-statistic", "not-a-percentage", "confidence-above-1", "typo"],
)
def test_a_bad_section_is_refused_naming_the_key(
    tmp_path: Path, regression: dict[str, Any], said: str
) -> None:
    with pytest.raises(RecipeError) as refused:
        recipe_with(tmp_path, regression)
    assert said in str(refused.value)


def test_the_spec_adds_to_the_recipes_tolerances_and_wins(tmp_path: Path) -> None:
    recipe = recipe_with(tmp_path, {"tolerances": {"ttft_ms.p99": "10%", "e2el_ms.p50": "20%"}})
    assert gate_tolerances(None, recipe) is None
    assert gate_tolerances("recipe", recipe) == {"ttft_ms.p99": 0.1, "e2el_ms.p50": 0.2}
    assert gate_tolerances("ttft_ms.p99:5%,output_throughput:3%", recipe) == {
        "ttft_ms.p99": 0.05,
        "e2el_ms.p50": 0.2,
        "output_throughput": 0.03,
    }


def test_recipe_tolerances_that_are_not_there_are_a_usage_error(tmp_path: Path) -> None:
    recipe = recipe_with(tmp_path, None)
    with pytest.raises(
        pytest.UsageError, match=r"regression\.tolerances of .*recipe\.yaml, and it has none"
    ):
        gate_tolerances("recipe", recipe)
    with pytest.raises(pytest.UsageError, match="--fail-on-regression"):
        gate_tolerances("ttft_ms.p99:ten", recipe)
