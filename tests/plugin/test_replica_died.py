"""One replica of a service dying during the load fails the test naming that replica and its
last words; the other replica's answers are kept, and nothing is left running."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers import processes_matching, run_dying_service

pytestmark = pytest.mark.slow  # a pytest session with real servers

DIE_AFTER = 4
REQUESTS = 40


def test_a_dying_replica_is_named_and_the_other_keeps_answering(tmp_path: Path) -> None:
    marker = f"dying-{uuid.uuid4().hex[:8]}"
    # the second replica gives up after a few requests, the first never does
    choose = (
        "import os, sys; "
        f"n = '{DIE_AFTER}' if os.environ['AIFACTORY_SERVICE'].endswith('.replica1') "
        "else '100000'; "
        "os.execv(sys.executable, [sys.executable, '-m', 'pytest_aifactory.testing.dying_server', "
        f"'--host', '{{host}}', '--port', '{{port}}', '--marker', '{marker}', "
        "'--die-after-requests', n])"
    )
    session = run_dying_service(
        tmp_path, "dying-replica", f'{sys.executable} -c "{choose}"', REQUESTS, replicas=2
    )
    (test,) = session.summary()["tests"]
    note = test["notes"][0]
    assert note.startswith("service 'svc' died during the load (replica 1 at http://"), note
    assert f"{marker}: giving up after {DIE_AFTER} requests" in note
    (run,) = session.run_dirs()
    records = pd.read_parquet(run / "records.parquet")
    first = records[records["replica"] == 0]
    second = records[records["replica"] == 1]
    assert len(first) == len(second) == REQUESTS // 2, "round robin"
    assert (first["error"] == "").all(), first["error"].unique()
    assert (second["error"] != "").sum() >= REQUESTS // 2 - DIE_AFTER
    by_replica = test["by_replica"]
    assert by_replica["0"]["counts"]["failed"] == 0
    assert by_replica["1"]["counts"]["failed"] >= 1
    assert not processes_matching(marker)
