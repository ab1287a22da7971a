"""Run folders nobody shares: two sessions of one recipe started in the same second each get a
folder of their own, and each folder holds its own session's records only."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from pytest_aifactory.cluster.rundir import RunDir
from pytest_aifactory.report.manifest import verify_run
from pytest_aifactory.testing.token_server import TokenServer
from tests.helpers import benchmark_command, benchmark_env, write_recipe

RUN_ID = "20260101-000000-same-second"


class TakenAfterAnyCheck(type(Path())):  # type: ignore[misc]
    """A reports folder where another session makes the run's folder right after any check
    for it: whatever `exists()` says, it is already there when `mkdir` runs."""

    def exists(self, *, follow_symlinks: bool = True) -> bool:
        return False


def test_a_folder_made_between_check_and_create_is_not_shared(tmp_path: Path) -> None:
    reports = TakenAfterAnyCheck(tmp_path / "reports")
    first = RunDir.create(reports, RUN_ID)
    (first.root / "records" / "mine").mkdir()
    second = RunDir.create(reports, RUN_ID)
    assert first.root.name == RUN_ID
    assert second.root.name == f"{RUN_ID}-2"
    assert not (second.root / "records" / "mine").exists()
    assert second.root.stat().st_mode & 0o777 == 0o700


def same_second_plugin(folder: Path) -> Path:
    """Both sessions name their run as if started in the same second, whatever their timing."""
    plugin = folder / "same_second_run_id.py"
    plugin.write_text(
        "import pytest_aifactory.driver as driver\n\n"
        f"driver.make_run_id = lambda name, now=None: {RUN_ID[:16]!r} + name\n"
    )
    return plugin


REQUESTS = 12


def recipe(url: str) -> dict[str, Any]:
    return {
        "name": "same-second",
        "services": {"srv": {"kind": "external", "url": url, "health": {"http": "/health"}}},
        "clients": {
            "chat": {
                "kind": "openai",
                "service": "srv",
                "dataset": {"input_tokens": 8, "output_tokens": 8},
                "load": {"levels": [1], "requests": REQUESTS, "warmup_requests": 0},
            }
        },
        "slo": {"chat": {"error_rate": {"max": 0.0}}},
        "monitor": {"prometheus": False},
    }


@pytest.mark.slow
def test_two_concurrent_sessions_of_one_recipe_get_two_folders(tmp_path: Path) -> None:
    plugin = same_second_plugin(tmp_path)
    env = benchmark_env(tmp_path, {"PYTHONPATH": str(plugin.parent)})
    reports = tmp_path / "reports"
    with TokenServer(ttft_ms=5, gap_ms=2) as server:
        path = write_recipe(tmp_path / "recipe.yaml", recipe(server.url))
        command = benchmark_command(path, reports, "-p", plugin.stem)
        sessions = [
            subprocess.Popen(
                command,
                cwd=tmp_path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for _ in range(2)
        ]
        outputs = [session.communicate(timeout=300)[0] for session in sessions]
    for session, output in zip(sessions, outputs, strict=True):
        assert session.returncode == 0, output
    runs = sorted(p for p in reports.iterdir() if p.is_dir())
    assert [p.name for p in runs] == [RUN_ID, f"{RUN_ID}-2"]
    for run in runs:
        records = pd.read_parquet(run / "records.parquet")
        measured = records[records["phase"] == "measure"]
        assert len(measured) == REQUESTS, run  # its own requests, none of the other session's
        assert len({p.name for p in (run / "records").rglob("p*.jsonl")}) == 1
        assert verify_run(run) == []
