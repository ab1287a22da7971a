"""Repeats: each level measured several times by one client job, the figures pooled and given
intervals, the objectives judged on them, the report drawing them.

Against the token server (a real HTTP server whose answers take a known time: a test double
for the one thing no real server offers), so the intervals can be checked against the truth.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from pytest_aifactory.testing.token_server import TokenServer
from tests.helpers import processes_matching, run_benchmark, write_recipe

pytestmark = pytest.mark.slow  # pytest sessions with client jobs

TTFT_MS = 40.0


def recipe(url: str, ttft_p50_max_ms: float) -> dict[str, Any]:
    return {
        "name": "repeats",
        "services": {"srv": {"kind": "external", "url": url, "health": {"http": "/health"}}},
        "clients": {
            "chat": {
                "kind": "openai",
                "service": "srv",
                "dataset": {"input_tokens": 8, "output_tokens": 4},
                "load": {"levels": [2], "requests": 12, "repeats": 2},
            }
        },
        "slo": {
            "chat": {
                "ttft_ms": {"p50": {"max": ttft_p50_max_ms}},
                "output_throughput": {"min": 1.0},
            }
        },
        "monitor": {"prometheus": False},
    }


def test_repeats_pool_requests_give_intervals_and_judge_on_them(tmp_path: Path) -> None:
    with TokenServer(ttft_ms=TTFT_MS, gap_ms=5) as server:
        path = write_recipe(tmp_path / "recipe.yaml", recipe(server.url, 10 * TTFT_MS))
        # the option overrides the recipe's two repeats
        session = run_benchmark(tmp_path, path, "-v", "--repeats", "3", timeout=300)
    assert session.returncode == 0, session.output
    assert "repeat 3 of 3" in session.output
    (run,) = session.run_dirs()
    (test,) = session.summary()["tests"]
    assert test["repeats"]["count"] == 3
    assert test["counts"]["completed"] == 36
    records = pd.read_parquet(run / "records.parquet")
    measured = records[records["phase"] == "measure"]
    assert measured.groupby("repeat").size().to_dict() == {0: 12, 1: 12, 2: 12}
    # one job took the three loads, each an order of its own
    orders = sorted(p.name for p in (run / "orders" / "client-chat").glob("order.*"))
    assert orders == ["order.0", "order.1", "order.2"]
    intervals = test["intervals"]
    assert intervals["method"].startswith("bootstrap over repeats")
    low, high = intervals["per_request"]["ttft_ms"]["p50"]
    assert TTFT_MS <= low <= test["per_request"]["ttft_ms"]["p50"] <= high
    per_repeat = [r["output_throughput"] for r in test["repeats"]["per_level"]]
    low, high = intervals["per_level"]["output_throughput"]
    assert min(per_repeat) <= low <= high <= max(per_repeat)
    # judged on the interval's far end, as repeats make the default
    by_key = {o["key"]: o for o in test["slo"]}
    assert by_key["ttft_ms.p50"]["judged_on"] == "interval"
    assert by_key["ttft_ms.p50"]["value"] == pytest.approx(
        intervals["per_request"]["ttft_ms"]["p50"][1]
    )
    assert by_key["output_throughput"]["value"] == pytest.approx(low)
    page = (run / "report.html").read_text()
    assert "bootstrap over repeats, then requests within each; 3 repeats of the level" in page
    assert "upper end" in page
    assert not processes_matching(str(run))
