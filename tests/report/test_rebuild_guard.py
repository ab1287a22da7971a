"""`aifactory report` rebuilds a run from its raw records only once its driver is gone: a
rebuild while the session still saves would race it and overwrite what it writes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_aifactory.cli import main
from pytest_aifactory.cluster.run_records import RunRecord, process_ref, utcnow, write_run


def running_run(tmp_path: Path, driver_pid: int) -> Path:
    """A run whose summary still says `running`, recorded as driven by `driver_pid` here."""
    root = tmp_path / "20260101-000000-guard"
    root.mkdir(mode=0o700)
    (root / "records").mkdir()
    (root / "summary.json").write_text(json.dumps({"status": "running", "tests": []}))
    write_run(
        RunRecord(
            run_id=root.name,
            run_dir=str(root),
            recipe="guard",
            executor="local",
            driver_host=socket.gethostname(),
            driver=process_ref(driver_pid, "driver"),
            started_at=utcnow(),
        )
    )
    return root


def test_a_run_whose_driver_lives_is_not_rebuilt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = running_run(tmp_path, os.getpid())  # this process plays the live driver
    before = (root / "summary.json").read_text()
    assert main(["report", str(root)]) == 2
    err = capsys.readouterr().err
    assert f"(PID {os.getpid()} on {socket.gethostname()}) is still running" in err
    assert (root / "summary.json").read_text() == before
    assert main(["report", str(root), "--from-records"]) == 2


def test_a_run_whose_driver_is_gone_is_rebuilt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    root = running_run(tmp_path, gone.pid)
    assert main(["report", str(root)]) == 2
    err = capsys.readouterr().err
    assert "still running" not in err
    assert "no recipe.json" in err  # it went on to rebuild (this folder has nothing to rebuild)
