"""Ctrl-C or SIGTERM in the middle of a load: every job stops, what was measured stays."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers import (
    benchmark_command,
    benchmark_env,
    processes_matching,
    wait_for,
    write_recipe,
)

pytestmark = pytest.mark.slow


def long_load_recipe() -> dict:
    return {
        "name": "interrupted",
        "services": {"llm": {"kind": "llamacpp", "args": ["--parallel", "2"]}},
        "clients": {
            "chat": {
                "kind": "openai",
                "service": "llm",
                "processes_per_node": 2,
                "dataset": {"input_tokens": 16, "output_tokens": 32},
                "load": {"levels": [2], "requests": 2000},
            }
        },
    }


def measured_lines(report_dir: Path) -> int:
    return sum(len(p.read_text().splitlines()) for p in report_dir.glob("*/records/*/*.jsonl"))


def squeue_names() -> str:
    return subprocess.run(
        ["squeue", "-h", "-o", "%j"], capture_output=True, text=True, check=False
    ).stdout


@pytest.mark.parametrize(
    ("signum", "executor"),
    [(signal.SIGINT, "local"), (signal.SIGTERM, "local"), (signal.SIGINT, "slurm")],
    ids=["SIGINT-local", "SIGTERM-local", "SIGINT-slurm"],
)
def test_signal_under_load_stops_every_job_and_keeps_records(
    tmp_path: Path, signum: signal.Signals, executor: str, request: pytest.FixtureRequest
) -> None:
    if executor == "slurm":
        request.getfixturevalue("slurm_cluster")
    recipe = write_recipe(tmp_path / "recipe.yaml", long_load_recipe())
    report_dir = tmp_path / "reports"
    proc = subprocess.Popen(
        benchmark_command(recipe, report_dir, "--executor", executor),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=benchmark_env(tmp_path),
    )
    try:
        wait_for(lambda: measured_lines(report_dir) >= 6, timeout=120, what="load")
        (run,) = list(report_dir.iterdir())
        assert processes_matching(str(run))  # the run's jobs are alive now
        server_pid = json.loads((run / "rendezvous" / "llm.json").read_text())["pid"]
        proc.send_signal(signum)
        output, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, output
    if executor == "slurm":
        assert run.name not in squeue_names()
    assert wait_for(lambda: not processes_matching(str(run)), timeout=5), processes_matching(
        str(run)
    )
    assert wait_for(lambda: not Path(f"/proc/{server_pid}").exists(), timeout=5)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    (test,) = summary["tests"]
    assert test["notes"] == ["interrupted during the load"]
    assert test["passed"] is False
    records = pd.read_parquet(run / "records.parquet")
    assert len(records) >= 6
    assert sorted(records["process"].unique()) == [0, 1]
    assert "Traceback" not in output.split("KeyboardInterrupt")[0]
