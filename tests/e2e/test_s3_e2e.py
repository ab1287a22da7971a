"""The storage benchmark on an `s3` recipe, run as a user runs it, against a real nanio server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tests.helpers import (
    REPO,
    Session,
    processes_matching,
    run_benchmark,
    write_recipe,
)

pytestmark = pytest.mark.slow

STORAGE = REPO / "benchmarks" / "test_storage.py"


def run_storage(tmp_path: Path, recipe: Path) -> Session:
    return run_benchmark(tmp_path, recipe, timeout=300, benchmark=STORAGE)


def recipe_document() -> dict[str, Any]:
    s3 = {
        "mix": {"GET": 4, "PUT": 2, "LIST": 2, "DELETE": 2},
        "object_size": "64k",
        "objects": 8,
    }
    load = {"mode": "concurrency", "levels": [2], "requests": 40, "warmup_requests": 2}
    return {
        "name": "e2e-s3",
        "services": {"store": {"kind": "s3", "model": "nanio", "health_timeout_s": 60}},
        "clients": {
            "objects": {
                "kind": "s3",
                "service": "store",
                "processes_per_node": 2,  # both write the GETs' objects, neither fails
                "s3": s3,
                "load": load,
            },
            "impossible": {"kind": "s3", "service": "store", "s3": s3, "load": load},
        },
        "slo": {
            "objects": {
                "ops_s": {"min": 1},
                "throughput_mib_s": {"min": 0.01},
                "latency_ms": {"p99": {"max": 5000}},
                "ttfb_ms": {"p99": {"max": 5000}},
                "error_rate": {"max": 0.0},
            },
            "impossible": {"ops_s": {"min": 1_000_000}},
        },
        "monitor": {"prometheus": False},
    }


def test_storage_benchmark_passes_and_an_impossible_slo_fails(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "s3.yaml", recipe_document())
    session = run_storage(tmp_path, recipe)
    assert session.returncode == 1, session.output  # one test failed, none errored
    assert "1 failed, 1 passed" in session.output, session.output
    assert "ops_s" in session.output
    tests = {t["client"]: t for t in session.summary()["tests"]}
    passed = tests["objects"]
    assert passed["passed"] is True
    assert passed["counts"]["completed"] == 40
    run = session.run_dirs()[0]
    records = pd.read_parquet(run / "records.parquet")
    setup = records[(records["phase"] == "setup") & (records["client"] == "objects")]
    assert sorted(set(setup["process"])) == [0, 1]
    assert (setup["error"] == "").all(), setup["error"].unique()
    assert set(passed["by_op"]) == {"GET", "PUT", "LIST", "DELETE"}
    assert passed["per_level"]["throughput_mib_s"] > 0
    failed = tests["impossible"]
    assert failed["passed"] is False
    broken = [s for s in failed["slo"] if not s["passed"]]
    assert [s["metric"] for s in broken] == ["ops_s"]
    assert failed["counts"]["failed"] == 0  # the load itself went fine
    assert not processes_matching(str(tmp_path))  # the server was stopped
