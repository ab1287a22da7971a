"""The inference benchmark end to end on Triton: the shipped `recipes/triton.yaml` (real
tritonserver, HTTP and gRPC clients, monitoring of Triton's metrics port) plus one client whose
objective no server can meet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from tests.factories import speed_objectives_loosened
from tests.helpers import REPO, Session, run_benchmark, write_recipe

pytestmark = [pytest.mark.slow, pytest.mark.requires("tritonserver")]

RECIPE_TESTS = ("http-concurrency-1", "http-concurrency-8", "grpc-rate-200")


def recipe_document() -> dict[str, Any]:
    document = yaml.safe_load((REPO / "recipes" / "triton.yaml").read_text())
    document["clients"]["strict"] = {
        "kind": "triton",
        "service": "triton",
        "triton": {"protocol": "http"},
        "load": {"mode": "concurrency", "levels": [1], "requests": 20},
    }
    document["slo"] = speed_objectives_loosened(document["slo"])
    document["slo"]["strict"] = {"latency_ms": {"p50": {"max": 0.001}}}
    document["report"] = {"dir": "reports"}
    return document


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Session:
    tmp = tmp_path_factory.mktemp("triton-e2e")
    recipe = write_recipe(tmp / "triton.yaml", recipe_document())
    return run_benchmark(tmp, recipe, "-v", timeout=300)


def levels_by_id(session: Session) -> dict[str, dict[str, Any]]:
    return {t["name"].split("[")[1].rstrip("]"): t for t in session.summary()["tests"]}


def test_the_recipe_s_levels_pass_and_an_impossible_slo_fails(session: Session) -> None:
    assert session.returncode == 1, session.output
    for passing in RECIPE_TESTS:
        assert f"test_serving[{passing}] PASSED" in session.stdout, session.output
    assert "test_serving[strict-concurrency-1] FAILED" in session.stdout, session.output
    breach = [
        ln for ln in session.stdout.splitlines() if "strict[concurrency=1] latency_ms.p50 =" in ln
    ]
    assert breach, session.output
    assert breach[0].rstrip().endswith("ms > max 0.001"), breach[0]
    assert "Traceback" not in session.output


def test_both_protocols_answer_every_request(session: Session) -> None:
    (run,) = session.run_dirs()
    records = pd.read_parquet(run / "records.parquet")
    measured = records[records["phase"] == "measure"]
    assert (measured["error"] == "").all(), measured["error"].unique()
    assert (measured["op"] == "infer").all()
    counts = measured.groupby("client").size().to_dict()
    assert counts == {"http": 600, "grpc": 300, "strict": 20}
    # HTTP answers carry a status, gRPC ones do not
    assert (measured[measured["client"] == "http"]["http_status"] == 200).all()
    assert measured[measured["client"] == "grpc"]["http_status"].isna().all()
    grpc = levels_by_id(session)["grpc-rate-200"]
    assert grpc["per_level"]["achieved_rate"] == pytest.approx(200, rel=0.2)


def test_server_queue_and_compute_time_per_request(session: Session) -> None:
    tests = levels_by_id(session)
    for test_id in RECIPE_TESTS:
        server = tests[test_id]["server"]["triton"]
        assert server["queue_ms"] > 0, server
        assert server["compute_ms"] > 0, server
        assert server["request_ms"] >= server["queue_ms"] + server["compute_ms"] * 0.5
        assert server["failed_requests"] == 0
    # one request in flight: every execution runs one request of 4 items; eight in flight:
    # dynamic batching gathers several requests into one execution
    assert tests["http-concurrency-1"]["server"]["triton"]["batch_size"] == pytest.approx(4.0)
    assert tests["http-concurrency-8"]["server"]["triton"]["batch_size"] > 4.0


def test_client_count_equals_triton_s_request_counter(session: Session) -> None:
    for test_id, test in levels_by_id(session).items():
        (check,) = [c for c in test["cross_checks"] if c["metric"] == "requests"]
        sent = test["counts"]["completed"] + (8 if test_id in RECIPE_TESTS else 0)
        # measured and warmup requests alike, exactly: nothing else reaches the server
        assert check["client"] == sent, check
        assert check["server"] == check["client"], check
        assert check["difference"] == 0
        assert not check["flagged"]
        assert test["server"]["triton"]["requests"] == check["server"]


def test_triton_s_metrics_port_is_monitored(session: Session) -> None:
    (run,) = session.run_dirs()
    samples = pd.read_parquet(run / "metrics.parquet")
    triton = samples[samples["service"] == "triton"]
    assert {"triton_request_success", "triton_queue_duration_us"} <= set(triton["series"])
    summary = session.summary()
    assert summary["services"]["triton"]["kind"] == "triton"
    assert Path(run / "report.html").is_file()
