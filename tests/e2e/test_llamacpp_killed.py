"""llama-server killed (SIGKILL) in the middle of a load: nothing hangs, requests in flight and
after become error records, the test fails on error_rate saying the service died, and what was
measured before is kept."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.factories import recipe_document
from tests.helpers import (
    processes_matching,
    start_benchmark,
    wait_for,
    write_recipe,
)

pytestmark = [pytest.mark.slow, pytest.mark.requires("llama-server")]

REQUESTS = 40


def test_killed_server_gives_error_records_and_a_named_failure(tmp_path: Path) -> None:
    document = recipe_document(
        name="killed-server",
        service={"args": ["--parallel", "2"]},
        client={
            "dataset": {"input_tokens": 16, "output_tokens": 16},
            # 10 s of steady arrivals: the server dies a few seconds in
            "load": {
                "mode": "rate",
                "levels": [4],
                "arrival": "constant",
                "requests": REQUESTS,
                "timeout_s": 10,
            },
        },
        slo={"chat": {"error_rate": {"max": 0.0}}},
        monitor={"prometheus": False},
    )
    recipe = write_recipe(tmp_path / "recipe.yaml", document)
    reports = tmp_path / "reports"
    proc = start_benchmark(tmp_path, recipe)
    try:
        (records,) = wait_for(lambda: list(reports.glob("*/records/*/p0000.jsonl")), 180, "load")
        wait_for(lambda: len(records.read_text().splitlines()) >= 4, 60, "some answers")
        run = records.parents[2]
        pid = json.loads((run / "rendezvous" / "llm.json").read_text())["pid"]
        answered_before = [
            json.loads(line) for line in records.read_text().splitlines() if line.strip()
        ]
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        output, _ = proc.communicate(timeout=180)
        ended_in = time.monotonic() - killed_at
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, output
    assert ended_in < 60, "the session hung after the server died"
    assert "service 'llm' died during the load" in output, output
    assert "error_rate" in output
    assert "Traceback" not in output
    rows = pd.read_parquet(run / "records.parquet")
    rows = rows[rows["phase"] == "measure"]
    assert len(rows) == REQUESTS  # every request sent is a record, answered or not
    ok = rows["error"] == ""
    # what was measured before the kill is kept as it was
    kept = rows.set_index("request_id")
    good_before = [r for r in answered_before if not r["error"]]
    assert good_before
    for record in good_before:
        assert kept.loc[record["request_id"], "error"] == ""
    assert (~ok).sum() >= 1
    failed = rows[~ok].sort_values("scheduled_ts")
    assert rows[ok]["scheduled_ts"].min() < failed["scheduled_ts"].min()
    summary = json.loads((run / "summary.json").read_text())
    (test,) = summary["tests"]
    assert test["per_level"]["error_rate"] == pytest.approx((~ok).sum() / REQUESTS)
    assert not processes_matching(str(run))
