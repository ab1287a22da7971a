"""The prefix-cache hit rate an LLM server's own counters give over a test: vLLM counts the
prompt tokens it looked up and found; llama.cpp the tokens it served from its cache beside the
ones it processed. Each kind collects the series it reads."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from pytest_aifactory.services.base import get_kind


def figures(kind: str, grown: Mapping[str, float | None]) -> dict[str, float | None]:
    series = {s.name for s in get_kind(kind).metric_series}
    assert set(grown) <= series, "read only series the kind collects"
    return get_kind(kind).server_figures(grown.get)


def test_vllm_hit_rate_is_hits_over_queries() -> None:
    found = figures("vllm", {"vllm_prefix_cache_hits": 300.0, "vllm_prefix_cache_queries": 400.0})
    assert found["prefix_cache_hit_rate"] == pytest.approx(0.75)
    assert found["prefix_cache_query_tokens"] == 400.0
    assert figures("vllm", {"vllm_prefix_cache_hits": 0.0, "vllm_prefix_cache_queries": 0.0}) == {
        "prefix_cache_hit_rate": None,
        "prefix_cache_hit_tokens": 0.0,
        "prefix_cache_query_tokens": 0.0,
    }


def test_llamacpp_hit_rate_counts_cached_beside_processed_tokens() -> None:
    grown = {"llamacpp_prompt_tokens_cached": 90.0, "llamacpp_prompt_tokens": 30.0}
    found = figures("llamacpp", grown)
    assert found["prefix_cache_hit_rate"] == pytest.approx(0.75)
    assert found["prefix_cache_query_tokens"] == 120.0


@pytest.mark.parametrize("kind", ["vllm", "llamacpp"])
def test_no_figure_where_the_counters_do_not_cover_the_test(kind: str) -> None:
    assert figures(kind, {}) == {}
