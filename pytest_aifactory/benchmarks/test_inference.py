"""LLM serving benchmark: one test per client and load level of the recipe.

    pytest --pyargs pytest_aifactory.benchmarks.test_inference --recipe llamacpp-smollm2.yaml

Each test starts the client's service if it is not running yet, drives the load level from
client jobs, and fails when any of the recipe's service-level objectives is broken.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pytest_aifactory import CaseResult, LoadCase, assert_slos


@pytest.mark.aifactory_clients("openai", "triton")
def test_serving(aifactory_load: Callable[[LoadCase], CaseResult], load_case: LoadCase) -> None:
    result = aifactory_load(load_case)
    assert_slos(result)
