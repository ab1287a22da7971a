"""The storage benchmark on recipes/postgres.yaml, end to end: a real PostgreSQL service, real
client jobs, the recipe's own SLOs, and an impossible one that must fail naming its metric."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from pytest_aifactory.services.kinds.postgres import find_exporter
from tests.factories import speed_objectives_loosened
from tests.helpers import REPO, Session, processes_matching, run_benchmark, write_recipe

pytestmark = pytest.mark.slow

RECIPE = REPO / "recipes" / "postgres.yaml"
BENCHMARK = REPO / "benchmarks" / "test_storage.py"


def short_recipe() -> dict[str, Any]:
    """The shipped recipe with fewer transactions per level and one more client whose
    throughput objective no server can meet."""
    document = yaml.safe_load(RECIPE.read_text())
    for client in document["clients"].values():
        client["load"].pop("duration_s", None)
        client["load"]["requests"] = 150
        client["load"]["warmup_requests"] = 5
    document["clients"]["impossible"] = {
        "kind": "sql",
        "service": "db",
        "sql": {"mix": "read-only"},
        "load": {"mode": "concurrency", "levels": [1], "requests": 20},
    }
    document["slo"] = speed_objectives_loosened(document["slo"])  # set for a busy 2-core box
    document["slo"]["impossible"] = {"tps": {"min": 1_000_000}}
    document["monitor"] = {"prometheus": True, "scrape_interval_s": 0.5}
    return document


@pytest.mark.requires("postgresql")
def test_recipe_slos_hold_and_an_impossible_one_fails(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "postgres.yaml", short_recipe())
    session = run_benchmark(tmp_path, recipe, "-rA", timeout=300, benchmark=BENCHMARK)
    output = session.output
    assert session.returncode == 1, output[-4000:]
    passed, failed = session.verdicts()
    assert passed == {
        "test_storage[tpcb-concurrency-1]",
        "test_storage[tpcb-concurrency-4]",
        "test_storage[point-rate-200]",
    }, output[-4000:]
    assert failed == ["test_storage[impossible-concurrency-1]"], output[-4000:]
    assert re.search(r"impossible\[concurrency=1\] tps = [\d.]+ tx/s < min 1000000", output)
    assert not processes_matching(str(tmp_path))  # the server and its jobs are gone
    if find_exporter() is not None:
        server_counts_agree_with_the_clients(session)


def server_counts_agree_with_the_clients(session: Session) -> None:
    """The exporter beside the server counted each test's transactions: every one the clients
    committed (warmup included), plus a few of the server's own (setup, autovacuum)."""
    (run,) = session.run_dirs()
    records = pd.read_parquet(run / "records.parquet")
    for test in session.summary()["tests"]:
        (check,) = test["cross_checks"]
        mine = records[(records["test_id"] == test["test_id"]) & (records["phase"] != "setup")]
        committed = float((mine["error"].fillna("") == "").sum())
        assert check["client"] == committed
        assert 0 <= check["server"] - committed <= check["server_extra_allowed"], check
        assert not check["flagged"]
        figures = test["server"]["db"]
        assert figures["transactions"] == check["server"]
        assert figures["rollbacks"] == 0
        assert 0 < figures["buffer_hit_ratio"] <= 1
    metrics = pd.read_parquet(run / "metrics.parquet")
    sessions = metrics[metrics["series"] == "postgres_sessions"]
    assert sessions["value"].max() >= 4  # the 4 sessions of tpcb at concurrency 4
    assert {json.loads(labels)["datname"] for labels in sessions["labels"]} == {"aifactory"}
