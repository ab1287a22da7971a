"""A service that dies during the load fails its test with the service's own last words, keeps
what was measured before, and no secret it was given shows in the output or the run's files."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pandas as pd
import pytest

from pytest_aifactory.metrics.stats import succeeded
from tests.helpers import processes_matching, run_dying_service

pytestmark = pytest.mark.slow  # each test runs a pytest session or real servers

DIE_AFTER = 8
REQUESTS = 60
FLAG_SECRET = "sk-test-SECRET123"
ENV_SECRET = "sk-env-SECRET456"


def test_service_death_during_the_load_is_reported_with_its_log_tail(tmp_path: Path) -> None:
    marker = f"dying-{uuid.uuid4().hex[:8]}"
    command = (
        f"{sys.executable} -m pytest_aifactory.testing.dying_server "
        "--host {host} --port {port} "
        f"--die-after-requests {DIE_AFTER} --marker {marker} --api-key {FLAG_SECRET}"
    )
    env = {"DYING_SERVER_API_KEY": ENV_SECRET}
    session = run_dying_service(tmp_path, "dying-service", command, REQUESTS, env=env)

    # the failure message: the note, then the service's log tail, secrets masked
    assert "service 'svc' died during the load" in session.stdout, session.output
    assert f"{marker}: giving up after {DIE_AFTER} requests" in session.stdout, session.output
    assert f"{marker}: started with --api-key ***" in session.stdout
    assert f"{marker}: DYING_SERVER_API_KEY=***" in session.stdout
    assert FLAG_SECRET not in session.output
    assert ENV_SECRET not in session.output

    (run,) = session.run_dirs()
    logs = [p for p in (run / "logs").rglob("*") if p.is_file()]
    service_logs = "".join(p.read_text() for p in logs if p.parent.name.startswith("service-"))
    assert f"{marker}: giving up after {DIE_AFTER} requests" in service_logs
    assert "--api-key ***" in service_logs
    for path in logs:
        text = path.read_text()
        assert FLAG_SECRET not in text, path
        assert ENV_SECRET not in text, path
    for name in ("summary.json", "benchmark.json"):
        text = (run / name).read_text()
        assert FLAG_SECRET not in text, name
        assert ENV_SECRET not in text, name

    # what was measured before the death is kept, and the rest counted as failed
    (test,) = session.summary()["tests"]
    assert test["passed"] is False
    assert test["notes"][0].startswith("service 'svc' died during the load")
    assert f"{marker}: giving up after" in test["notes"][0]
    counts = test["counts"]
    assert 1 <= counts["completed"] <= DIE_AFTER, counts
    assert counts["failed"] >= 1, counts
    records = pd.read_parquet(run / "records.parquet")
    assert len(records) == counts["sent"] == REQUESTS
    assert int(succeeded(records).sum()) == counts["completed"]

    assert processes_matching(marker) == []
