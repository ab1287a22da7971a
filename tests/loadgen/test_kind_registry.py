"""The registries of kinds are the one place that names a kind: the recipe's choices, its JSON
Schema, SLO metrics, summaries and headline figures all come from the declarations."""

from __future__ import annotations

import importlib.util

import pandas as pd
import pytest

from pytest_aifactory.loadgen.kind import ClientKind, KindDeclarationError
from pytest_aifactory.loadgen.kinds import (
    UnknownKind,
    all_metrics,
    client_kinds,
    get_client_kind,
    headline_of,
    metrics_for_client_kind,
)
from pytest_aifactory.metrics.catalog import COMMON_METRICS, Headline, metric
from pytest_aifactory.metrics.summaries import summarize
from pytest_aifactory.recipe import CLIENT_KINDS, SERVICE_KINDS, recipe_json_schema
from pytest_aifactory.services.base import get_kind, service_kind_names

SHIPPED_CLIENT_KINDS = {"openai", "vectordb", "s3", "fio", "sql", "triton"}
SHIPPED_SERVICE_KINDS = {
    "vllm", "llamacpp", "triton", "chroma", "milvus", "postgres", "s3", "command", "external"
}  # fmt: skip


def test_the_recipe_offers_exactly_the_registered_kinds() -> None:
    assert set(CLIENT_KINDS) == set(client_kinds()) >= SHIPPED_CLIENT_KINDS
    assert set(SERVICE_KINDS) == set(service_kind_names()) >= SHIPPED_SERVICE_KINDS
    definitions = recipe_json_schema()["$defs"]
    assert definitions["Client"]["properties"]["kind"]["enum"] == list(CLIENT_KINDS)
    assert definitions["Service"]["properties"]["kind"]["enum"] == list(SERVICE_KINDS)
    sections = {k.name for k in client_kinds().values() if k.options is not None}
    assert sections <= set(definitions["Client"]["properties"])
    for name in SERVICE_KINDS:
        assert get_kind(name).kind == name


def test_each_kind_loads_and_summarizes_through_functions_that_exist() -> None:
    for kind in client_kinds().values():
        assert callable(kind.summarizer()), kind.name
        # the load is imported in client jobs only (its libraries may be missing here); its
        # module must still be there
        module = kind.load.partition(":")[0]
        assert importlib.util.find_spec(module) is not None, kind.load


def test_an_unknown_kind_is_an_error_not_llm_figures() -> None:
    with pytest.raises(UnknownKind, match=r"unknown client kind 'nope' \(known: openai, "):
        headline_of("nope")
    with pytest.raises(UnknownKind):
        metrics_for_client_kind("nope")
    with pytest.raises(UnknownKind):
        summarize("nope", pd.DataFrame())
    assert headline_of(None) == get_client_kind("openai").headline  # runs before kinds were kept


def test_slo_metrics_are_the_kinds_own_and_the_common_ones_it_reports() -> None:
    common = {info.name for info in COMMON_METRICS}
    openai = set(metrics_for_client_kind("openai"))
    assert {"ttft_ms", "output_throughput"} <= openai
    assert common <= openai
    assert "qps" not in openai
    fio = set(metrics_for_client_kind("fio"))
    assert "goodput" not in fio  # fio declares the common metrics it has
    assert {"bw_mib_s", "clat_ms", "latency_ms"} <= fio
    assert all_metrics()["ttft_ms"].higher_is_better is False
    assert all_metrics()["qps"].higher_is_better is True


def test_a_declaration_that_names_an_undeclared_metric_is_refused() -> None:
    with pytest.raises(KindDeclarationError, match="'gets_s' but does not declare it"):
        ClientKind(
            name="broken",
            load="x:y",
            summarize="x:y",
            headline=Headline("gets_s", "GET/s", "latency_ms", "latency"),
            throughput_metric="request_throughput",
        )
    with pytest.raises(KindDeclarationError, match="not common metrics"):
        ClientKind(
            name="broken",
            load="x:y",
            summarize="x:y",
            headline=Headline("request_throughput", "req/s", "latency_ms", "latency"),
            throughput_metric="request_throughput",
            common_metrics=("qps",),
        )


def test_two_kinds_meaning_different_things_by_one_name_are_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clash = ClientKind(
        name="clash",
        load="x:y",
        summarize="x:y",
        headline=Headline("qps", "QPS", "latency_ms", "latency"),
        throughput_metric="qps",
        metrics=(metric("qps", "q/s", False, False, "clash", "lower is better here"),),
    )
    import pytest_aifactory.loadgen.kinds as registry

    monkeypatch.setattr(registry, "client_kinds", lambda: {**client_kinds(), "clash": clash})
    registry.all_metrics.cache_clear()
    try:
        with pytest.raises(KindDeclarationError, match="metric 'qps' of client kind 'clash'"):
            registry.all_metrics()
    finally:
        monkeypatch.undo()
        registry.all_metrics.cache_clear()
