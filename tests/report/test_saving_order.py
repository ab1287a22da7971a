"""A session killed at any step of saving its run leaves a run that is either complete and
verified, or not marked complete-and-signed and rebuilt by `aifactory report`: never one that
says `complete` over torn or missing records.

The final save runs in a child process that kills itself (SIGKILL, nothing cleaned up) just
before or just after its k-th file rename, for every k until a save completes: every state a
killed session can leave on disk, in the order the real code writes them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from pytest_aifactory.cli_report import _needs_rebuild
from pytest_aifactory.report.manifest import verify_run
from pytest_aifactory.report.recover import recover_run
from pytest_aifactory.testing.token_server import TokenServer
from tests.helpers import REPO, run_benchmark, write_recipe

pytestmark = pytest.mark.slow  # a real session first

REQUESTS = 10
LEVELS = [1, 2]

KILLING_SAVE = """
import os, signal, sys
from pathlib import Path

from pytest_aifactory.cluster.rundir import RunDir
from pytest_aifactory.report.recover import load_saved_recipe, recover_tests
from pytest_aifactory.report.run_store import save_run

root, kill_at = Path(sys.argv[1]), int(sys.argv[2])
recipe = load_saved_recipe(root)
tests, records = recover_tests(root, recipe)
steps = 0
rename = os.replace

def step():
    global steps
    steps += 1
    if steps == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)

def killing_replace(src, dst):
    step()
    rename(src, dst)
    step()

os.replace = killing_replace
save_run(RunDir.open(root), recipe, tests, records, "complete", 0.0)
print("saved")
"""


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("saving")
    document = {
        "name": "saving-order",
        "services": {"srv": {"kind": "external", "url": "", "health": {"http": "/health"}}},
        "clients": {
            "chat": {
                "kind": "openai",
                "service": "srv",
                "dataset": {"input_tokens": 8, "output_tokens": 8},
                "load": {"levels": LEVELS, "requests": REQUESTS, "warmup_requests": 0},
            }
        },
        "monitor": {"prometheus": False},
    }
    with TokenServer(ttft_ms=5, gap_ms=2) as server:
        document["services"]["srv"]["url"] = server.url  # type: ignore[index]
        recipe = write_recipe(tmp / "recipe.yaml", document)
        session = run_benchmark(tmp, recipe, timeout=300)
    assert session.returncode == 0, session.output
    (run,) = session.run_dirs()
    assert verify_run(run) == []
    return run


def as_before_the_final_save(finished: Path, copy: Path) -> Path:
    """The run as its driver left it while the session ran: a summary that says `running`,
    the raw records, no merged records, benchmark file or manifest yet."""
    shutil.copytree(finished, copy)
    for name in ("records.parquet", "benchmark.json", "manifest.json", ".benchmark-path"):
        (copy / name).unlink(missing_ok=True)
    summary = json.loads((copy / "summary.json").read_text())
    (copy / "summary.json").write_text(json.dumps(dict(summary, status="running")))
    return copy


def killed_save(copy: Path, kill_at: int, tmp_path: Path) -> bool:
    """True when the save completed (`kill_at` is past its last step)."""
    done = subprocess.run(
        [sys.executable, "-c", KILLING_SAVE, str(copy), str(kill_at)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "AIFACTORY_BENCHMARK_STORAGE": str(tmp_path / "bm")},
        check=False,
    )
    if done.returncode == 0:
        assert "saved" in done.stdout
        return True
    assert done.returncode == -9, done.stderr  # killed, as asked
    return False


def measured_rows(run: Path) -> int:
    records = pd.read_parquet(run / "records.parquet")
    return int((records["phase"] == "measure").sum())


def test_a_session_killed_at_any_step_of_saving_leaves_a_whole_or_rebuildable_run(
    finished_run: Path, tmp_path: Path
) -> None:
    expected = measured_rows(finished_run)
    assert expected == REQUESTS * len(LEVELS)
    verdicts = []
    for kill_at in range(1, 40):
        copy = as_before_the_final_save(finished_run, tmp_path / f"k{kill_at:02d}" / "run")
        completed = killed_save(copy, kill_at, tmp_path)
        status = json.loads((copy / "summary.json").read_text())["status"]
        problems = verify_run(copy)
        if not problems:
            # verified: complete, with every record
            assert status == "complete"
            assert measured_rows(copy) == expected
            assert _needs_rebuild(copy) == ""
            verdicts.append("verified")
        else:
            # not verified: `aifactory report` sees it must rebuild, and the rebuild verifies
            reason = _needs_rebuild(copy)
            assert reason, (kill_at, status, problems)
            recover_run(copy)
            assert verify_run(copy) == []
            assert measured_rows(copy) == expected
            assert not list(copy.glob(".*.tmp"))
            verdicts.append(reason)
        if completed:
            break
    else:
        pytest.fail("the save never completed")
    assert verdicts[-1] == "verified"
    # kills before the summary leave it `running`; kills after it, before the manifest, leave
    # it unsigned: both were seen, and both were rebuilt
    assert "the session ended without finishing its summary" in verdicts
    assert "the session ended before signing its run" in verdicts
