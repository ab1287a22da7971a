"""Ctrl-C or SIGTERM in the middle of a load: every job stops, what was measured stays."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from pytest_aifactory.cluster.rundir import private_root_of
from tests.factories import recipe_document
from tests.helpers import (
    processes_matching,
    start_benchmark,
    wait_for,
    write_recipe,
)

pytestmark = pytest.mark.slow


def long_load_recipe() -> dict[str, Any]:
    return recipe_document(
        name="interrupted",
        service={"args": ["--parallel", "2"]},
        client={
            "processes_per_node": 2,
            "dataset": {"input_tokens": 16, "output_tokens": 32},
            "load": {"levels": [2], "requests": 2000},
        },
    )


def measured_lines(report_dir: Path) -> int:
    return sum(len(p.read_text().splitlines()) for p in report_dir.glob("*/records/*/*.jsonl"))


def squeue_names() -> str:
    return subprocess.run(
        ["squeue", "-h", "-o", "%j"], capture_output=True, text=True, check=False
    ).stdout


@pytest.mark.requires("llama-server")
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
    proc = start_benchmark(tmp_path, recipe, "--executor", executor)
    try:
        wait_for(lambda: measured_lines(report_dir) >= 6, timeout=120, what="load")
        (run,) = [p for p in report_dir.iterdir() if p.is_dir()]
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
    # the run's key and job folders went with it, its logs copied first
    assert not (private_root_of(run) / "jobs").exists()
    assert not (private_root_of(run) / "secrets" / "api_key").exists()
    assert any((run / "logs").glob("service-llm/*_log.err"))


def stop_with(proc: subprocess.Popen[str], signum: signal.Signals) -> str:
    try:
        proc.send_signal(signum)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return output


@pytest.mark.parametrize(
    ("signum", "executor"),
    [(signal.SIGINT, "local"), (signal.SIGTERM, "slurm")],
    ids=["SIGINT-local", "SIGTERM-slurm"],
)
def test_signal_while_a_service_starts_cancels_it(
    tmp_path: Path, signum: signal.Signals, executor: str, request: pytest.FixtureRequest
) -> None:
    if executor == "slurm":
        request.getfixturevalue("slurm_cluster")
    marker = f"{abs(hash(tmp_path)) % 10**6 + 10**6}"
    # never listens: the session waits for it to become healthy until the signal comes
    command = f'python3 -c "import time; time.sleep({marker})"'
    document = {
        "name": "interrupted-start",
        "services": {"svc": {"kind": "command", "command": command, "health_timeout_s": 300}},
        "clients": {"chat": {"kind": "openai", "service": "svc", "load": {"requests": 2}}},
        "monitor": {"prometheus": False},
    }
    proc = start_benchmark(
        tmp_path, write_recipe(tmp_path / "recipe.yaml", document), "--executor", executor
    )
    try:
        wait_for(lambda: processes_matching(f"time.sleep({marker})"), 120, "service started")
    except AssertionError:
        proc.kill()
        raise
    output = stop_with(proc, signum)
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, output
    assert wait_for(lambda: not processes_matching(f"time.sleep({marker})"), timeout=15)
    (run,) = [p for p in (tmp_path / "reports").iterdir() if p.is_dir()]
    if executor == "slurm":
        assert wait_for(lambda: run.name not in squeue_names(), timeout=30)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert "Traceback" not in output.split("KeyboardInterrupt")[0]


@pytest.mark.requires("llama-server")
def test_signal_while_the_report_is_written_keeps_the_run(tmp_path: Path) -> None:
    document = recipe_document(
        name="interrupted-report",
        service={"args": ["--parallel", "2"]},
        client={
            "dataset": {"input_tokens": 16, "output_tokens": 8},
            "load": {"levels": [1, 2], "requests": 6},
        },
        monitor={"prometheus": False},
    )
    proc = start_benchmark(tmp_path, write_recipe(tmp_path / "recipe.yaml", document))
    reports = tmp_path / "reports"
    try:
        # the report's chart folder appears first, the page last, seconds later
        wait_for(lambda: list(reports.glob("*/report")), 300, "report being written", 0.01)
    except AssertionError:
        proc.kill()
        raise
    output = stop_with(proc, signal.SIGINT)
    (run,) = [p for p in reports.iterdir() if p.is_dir()]
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, output
    assert "interrupted while writing the report" in output
    assert f"aifactory report {run.name}" in output
    assert "Traceback" not in output
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert len(summary["tests"]) == 2
    assert len(pd.read_parquet(run / "records.parquet")) == 12
    assert not processes_matching(str(run))
    assert not private_root_of(run).exists()  # saved: its secrets went all the same
    # what was interrupted can be done later from the saved run
    from pytest_aifactory.cli import main

    assert main(["report", str(run)]) == 0
    assert (run / "report.html").is_file()
