"""Another account on the same node plants a baseline run in a shared reports folder.

Reports folders on clusters are often shared (a project folder, a 0777 scratch folder). The
planted run claims the recipe, a later start and flattering numbers, with a manifest whose
hashes match (anyone can compute sha256) and a made-up signature. `--compare=last`, the
report's previous-run section and `--compare=PATH` all refuse it by name, with the reason, and
compare with the user's own run instead.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_aifactory.report.baseline import LAST, BaselineCheck
from pytest_aifactory.report.compare import CompareError, RunView, find_previous, load_run
from pytest_aifactory.report.manifest import write_manifest
from pytest_aifactory.report.previous import previous_section
from pytest_aifactory.testing.other_user import OtherUser

pytestmark = pytest.mark.requires("other-user")

RECIPE = "shared-demo"


@pytest.fixture
def shared_reports() -> Iterator[Path]:
    """A reports folder every account may write to, reachable by the other account."""
    folder = Path(tempfile.mkdtemp(prefix="aifactory-shared-reports-", dir="/tmp"))
    folder.chmod(0o777)
    yield folder
    shutil.rmtree(folder)


def summary(run_id: str, started: str, throughput: float) -> dict[str, Any]:
    return {
        "format": 1,
        "run_id": run_id,
        "recipe": {"name": RECIPE},
        "status": "complete",
        "verdict": "pass",
        "started_at": started,
        "tests": [
            {
                "test_id": "bench.py::test_serving[chat-concurrency-1]",
                "client": "chat",
                "level_label": "concurrency=1",
                "passed": True,
                "per_request": {"ttft_ms": {"p50": 50.0, "p99": 100.0}},
                "per_level": {"output_throughput": throughput},
            }
        ],
    }


def own_run(reports: Path, run_id: str, started: str, throughput: float) -> Path:
    """A run as this user's sessions save it: 0700, signed."""
    root = reports / run_id
    root.mkdir(mode=0o700)
    (root / "summary.json").write_text(json.dumps(summary(run_id, started, throughput)))
    write_manifest(root)
    return root


PLANT = """
import hashlib, json, os, sys
root, data = sys.argv[1], json.loads(sys.argv[2])
os.mkdir(root, 0o700)
text = json.dumps(data)
with open(os.path.join(root, "summary.json"), "w") as fh:
    fh.write(text)
digest = hashlib.sha256(text.encode()).hexdigest()
files = {"summary.json": {"sha256": digest, "bytes": len(text.encode())}}
manifest = {"format": 2, "algorithm": "sha256", "files": files,
            "signature": {"algorithm": "hmac-sha256", "key_id": "0" * 16, "value": "0" * 64}}
with open(os.path.join(root, "manifest.json"), "w") as fh:
    json.dump(manifest, fh)
print("planted")
"""


def plant(other_user: OtherUser, reports: Path, run_id: str, started: str) -> Path:
    root = reports / run_id
    data = json.dumps(summary(run_id, started, throughput=1e6))
    done = other_user.run(["/usr/bin/python3", "-c", PLANT, str(root), data])
    assert done.returncode == 0, done.stderr
    assert root.stat().st_uid == other_user.uid
    return root


def test_a_run_planted_by_another_account_is_refused_by_name(
    other_user: OtherUser, shared_reports: Path
) -> None:
    old = own_run(shared_reports, "20260101-000000-demo", "2026-01-01T00:00:00+00:00", 100.0)
    now = own_run(shared_reports, "20260101-020000-demo", "2026-01-01T02:00:00+00:00", 90.0)
    planted = plant(other_user, shared_reports, "20260101-010000-demo", "2026-01-01T01:00:00")
    current = load_run(now)

    # --compare=last: the user's own earlier run, the planted one named with the reason
    found = find_previous(current)
    assert found.run is not None
    assert found.run.root == old.resolve()
    (refused,) = found.refused
    assert str(planted) in refused
    assert f"owned by {other_user.name}, not by you" in refused
    gate = BaselineCheck(LAST, {"output_throughput": 0.05})
    result = gate.run(now)
    assert result is not None
    assert result.baseline is not None
    assert result.baseline.run_id == old.name
    lines = gate.report_lines()
    assert any(str(planted) in line and bad for line, bad in lines)

    # the report's previous-run section
    section = previous_section(now, current.summary, "report.html")
    assert old.name in section
    assert str(planted) in section
    assert "not compared with" in section

    # --compare=PATH naming the planted run
    with pytest.raises(CompareError, match=f"owned by {other_user.name}"):
        load_run(planted)


def test_the_other_account_cannot_edit_or_read_the_users_runs(
    other_user: OtherUser, shared_reports: Path
) -> None:
    own = own_run(shared_reports, "20260101-000000-demo", "2026-01-01T00:00:00+00:00", 100.0)
    edit = other_user.python(
        f"open({str(own / 'summary.json')!r}, 'w').write('{{}}')",
    )
    assert edit.returncode != 0
    assert "Permission denied" in edit.stderr
    listing = other_user.python(f"import os; print(os.listdir({str(own)!r}))")
    assert listing.returncode != 0
    assert load_run(own).run_id == own.name


def test_a_run_whose_folder_others_can_write_is_refused(shared_reports: Path) -> None:
    """Even the user's own signed run, once its folder is opened to everyone: whatever is
    in it may have been swapped after it was checked."""
    own = own_run(shared_reports, "20260101-000000-demo", "2026-01-01T00:00:00+00:00", 100.0)
    own.chmod(0o777)
    with pytest.raises(CompareError, match="mode 0777 lets others change it"):
        load_run(own)
    later = RunView(
        root=shared_reports / "later", summary=summary("later", "2026-01-02T00:00:00+00:00", 1.0)
    )
    found = find_previous(later)
    assert found.run is None
    (refused,) = found.refused
    assert "mode 0777" in refused
