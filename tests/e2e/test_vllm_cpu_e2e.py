"""The inference benchmark end to end against the real vLLM server (CPU build) and SmolLM2.

vLLM takes minutes to start on 2 cores, so one pytest run of the benchmark serves every test
here: two clients share the service, one held to the shipped recipe's objectives (they must
hold) and one to an output throughput no server reaches (it must fail, naming the metric).
Monitoring is on, so the run also shows that the kind's declared Prometheus series exist in
vLLM's real /metrics and that the tokens vLLM counts match the clients' count. A third client
sends prompts in groups sharing a prefix: vLLM serves the prefixes from its cache, and says so
per request (its usage) and in its counters.
"""

from __future__ import annotations

import copy
from typing import Any

import pandas as pd
import psutil
import pytest
import yaml

from pytest_aifactory.monitor.run_monitor import find_prometheus
from pytest_aifactory.services.kinds.vllm import METRIC_SERIES
from tests.factories import speed_objectives_loosened
from tests.helpers import REPO, Session, processes_matching, run_benchmark, write_recipe

pytestmark = [
    pytest.mark.slow,
    pytest.mark.requires("vllm"),
]

SHIPPED = REPO / "recipes" / "vllm.yaml"
REQUESTS = 8
IMPOSSIBLE = 1e9
PREFIX = 256
"""Two of the CPU build's 128-token blocks: vLLM caches whole blocks only."""


def recipe_document() -> dict[str, Any]:
    """The shipped CPU recipe with smaller loads and its speed bounds loosened (they are set for
    some machine; whether this one meets them is a measurement), plus a client whose objective
    cannot hold."""
    document = yaml.safe_load(SHIPPED.read_text())
    chat = document["clients"]["chat"]
    chat["load"] |= {"requests": REQUESTS, "warmup_requests": 1}
    hopeless = copy.deepcopy(chat)
    hopeless["load"] |= {"levels": [2], "requests": 4}
    document["clients"]["hopeless"] = hopeless
    prefix = copy.deepcopy(chat)
    prefix["dataset"] = {
        "kind": "shared_prefix",
        "groups": 2,
        "prefix_tokens": PREFIX,
        "input_tokens": 16,
        "output_tokens": chat["dataset"]["output_tokens"],
    }
    prefix["load"] |= {"levels": [2]}
    document["clients"]["prefix"] = prefix
    # per-request cached tokens in the usage; the counters are there without it
    document["services"]["llm"]["args"] = ["--enable-prompt-tokens-details"]
    document["slo"] = speed_objectives_loosened(document["slo"])
    document["slo"]["hopeless"] = {"output_throughput": {"min": IMPOSSIBLE}}
    document["monitor"] = {"prometheus": True, "scrape_interval_s": 0.5}
    document.pop("report", None)
    return document


def vllm_processes() -> set[int]:
    """vLLM's engine and worker processes (they rename themselves `VLLM::...`)."""
    found = set()
    for proc in psutil.process_iter(["pid", "name", "cmdline"]):
        words = " ".join([proc.info.get("name") or "", *(proc.info.get("cmdline") or [])])
        if "VLLM::" in words:
            found.add(proc.pid)
    return found


PRESENT_BEFORE: set[int] = set()


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Session:
    tmp = tmp_path_factory.mktemp("vllm-cpu")
    recipe = write_recipe(tmp / "vllm-cpu.yaml", recipe_document())
    PRESENT_BEFORE.update(vllm_processes())
    return run_benchmark(tmp, recipe, "-v", timeout=900)


@pytest.fixture(scope="module")
def summary(session: Session) -> dict[str, Any]:
    assert session.run_dirs(), session.output
    return session.summary()


def test_the_holding_objectives_pass_and_the_impossible_one_fails(session: Session) -> None:
    assert session.returncode == 1, session.output
    levels = yaml.safe_load(SHIPPED.read_text())["clients"]["chat"]["load"]["levels"]
    for level in levels:
        assert f"test_serving[chat-concurrency-{level}] PASSED" in session.stdout, session.output
    assert "test_serving[hopeless-concurrency-2] FAILED" in session.stdout, session.output
    breach = [
        line
        for line in session.stdout.splitlines()
        if "hopeless[concurrency=2] output_throughput = " in line
    ]
    assert breach, session.output
    assert breach[0].rstrip().endswith(f"tok/s < min {IMPOSSIBLE:.0f}"), breach[0]
    assert "Traceback" not in session.output


def test_every_request_was_answered_in_full(session: Session, summary: dict[str, Any]) -> None:
    (run,) = session.run_dirs()
    records = pd.read_parquet(run / "records.parquet")
    measured = records[records["phase"] == "measure"]
    assert (measured["error"].fillna("") == "").all(), measured["error"].unique()
    output_tokens = recipe_document()["clients"]["chat"]["dataset"]["output_tokens"]
    assert (measured["output_tokens"] == output_tokens).all()
    assert len(summary["tests"]) == len(measured["test_id"].unique())


def test_vllm_series_cover_each_test_window(session: Session, summary: dict[str, Any]) -> None:
    (run,) = session.run_dirs()
    assert summary["monitoring"]["mode"] == ("prometheus" if find_prometheus() else "scrape")
    metrics = pd.read_parquet(run / "metrics.parquet")
    declared = {series.name for series in METRIC_SERIES}
    for test in summary["tests"]:
        window = metrics[metrics["test_id"] == test["test_id"]]
        vllm = window[window["series"].isin(declared)]
        # every series the kind declares exists under that name in vLLM's real /metrics
        assert set(vllm["series"]) == declared, test["test_id"]
        assert set(vllm["service"]) == {"llm"}
        generated = vllm[vllm["series"] == "vllm_generated_tokens"]
        started = pd.Timestamp(test["started_at"]).timestamp()
        ended = pd.Timestamp(test["ended_at"]).timestamp()
        assert generated["timestamp"].min() <= started
        assert generated["timestamp"].max() >= ended
        assert generated["value"].max() > generated["value"].min()  # it counted this test


def test_server_token_count_agrees_with_the_clients(
    session: Session, summary: dict[str, Any]
) -> None:
    (run,) = session.run_dirs()
    records = pd.read_parquet(run / "records.parquet")
    for test in summary["tests"]:
        (check,) = test["cross_checks"]
        mine = records[records["test_id"] == test["test_id"]]
        assert check["client"] == float(mine["output_tokens"].sum())
        assert check["server"] == pytest.approx(check["client"], rel=0.02), test["test_id"]
        assert not check["flagged"]


def test_the_prefix_cache_serves_shared_prefixes(summary: dict[str, Any]) -> None:
    (test,) = [t for t in summary["tests"] if t["client"] == "prefix"]
    per_request = test["prefix_cache"]
    assert per_request["requests"] == REQUESTS
    assert test["per_level"]["prefix_cache_hit_rate"] > 0.5, per_request
    server = test["server"]["llm"]
    assert server["prefix_cache_hit_rate"] > 0.5, server
    assert server["prefix_cache_hit_tokens"] >= per_request["cached_tokens"]


def test_nothing_is_left_running(session: Session, summary: dict[str, Any]) -> None:
    (run,) = session.run_dirs()
    assert not processes_matching(str(run))
    port = summary["services"]["llm"]["url"].rsplit(":", 1)[1].strip("/")
    assert not processes_matching(f"--port {port}"), "the API server is still running"
    assert not vllm_processes() - PRESENT_BEFORE, "vLLM's engine or worker is still running"
