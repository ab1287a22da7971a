"""Vector search benchmark: Chroma, Milvus or FAISS, one test per client and load level.

    pytest --pyargs pytest_aifactory.benchmarks.test_vectordb --recipe recipes/vectordb.yaml

Each test starts the client's service if it has one and is not running yet (FAISS runs inside
the client jobs), loads the recipe's vectors, drives the query load from client jobs, and fails
when any of the recipe's service-level objectives is broken: recall@k against an exact search,
queries per second, latency, errors.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pytest_aifactory import CaseResult, LoadCase, assert_slos


@pytest.mark.aifactory_clients("vectordb")
def test_vectordb(aifactory_load: Callable[[LoadCase], CaseResult], load_case: LoadCase) -> None:
    result = aifactory_load(load_case)
    assert_slos(result)
