"""A client process that dies mid-load: the rest of the load and everything measured stay, and
the summary says which process ended early and how much of its load is missing."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import psutil
import pytest

from tests.factories import recipe_document
from tests.helpers import (
    processes_matching,
    start_benchmark,
    wait_for,
    write_recipe,
)

pytestmark = [pytest.mark.slow, pytest.mark.requires("llama-server")]

REQUESTS = 40  # 20 per process


def client_task(run: Path, rank: int) -> psutil.Process | None:
    """The task of the run's client job with this rank (its own process under submitit)."""
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info.get("cmdline") or [])
        if str(run) not in cmdline or "client-" not in cmdline:
            continue
        try:
            if proc.environ().get("SUBMITIT_LOCAL_GLOBALID") == str(rank):
                return proc
        except psutil.Error:
            continue
    return None


def lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_a_killed_client_process_is_named_with_its_missing_load(tmp_path: Path) -> None:
    document = recipe_document(
        name="client-died",
        service={"args": ["--parallel", "2"]},
        client={
            "processes_per_node": 2,
            "dataset": {"input_tokens": 16, "output_tokens": 16},
            "load": {"levels": [2], "requests": REQUESTS},
        },
        monitor={"prometheus": False},
        # a killed process is noticed by its silence: not 30 s of it here
        platform={"silent_task_s": 8},
    )
    recipe = write_recipe(tmp_path / "recipe.yaml", document)
    reports = tmp_path / "reports"
    proc = start_benchmark(tmp_path, recipe)
    try:
        wait_for(lambda: list(reports.glob("*/records/*/p0001.jsonl")), 180, "client started")
        (records_1,) = reports.glob("*/records/*/p0001.jsonl")
        run = records_1.parents[2]
        wait_for(lambda: lines(records_1) >= 3, 120, "process 1 measuring")
        task = wait_for(lambda: client_task(run, 1), 30, "client process 1")
        task.send_signal(signal.SIGKILL)
        output, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, output
    summary = json.loads((run / "summary.json").read_text())
    (test,) = summary["tests"]
    (early,) = test["ended_early"]
    kept = lines(records_1)
    assert early["process"] == 1
    assert early["sent"] == kept >= 3  # what it measured before dying is kept
    assert early["expected"] == REQUESTS // 2
    assert early["missing"] == REQUESTS // 2 - kept
    note = "client process 1 ended early: "
    assert any(n.startswith(note) for n in test["notes"]), test["notes"]
    assert f"it sent {kept} of its {REQUESTS // 2} requests" in output
    # the other process finished its share
    (records_0,) = run.glob("records/*/p0000.jsonl")
    assert lines(records_0) == REQUESTS // 2
    assert test["counts"]["sent"] == REQUESTS // 2 + kept
    assert "Traceback" not in output
    assert not processes_matching(str(run))
