"""A run whose driver died before writing its summary: `aifactory report` rebuilds summary,
verdicts and report from the raw records and the recipe saved with the run."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from pytest_aifactory.cli import main
from pytest_aifactory.report.manifest import verify_run
from pytest_aifactory.report.recover import RECOVERED_NOTE
from tests.helpers import (
    REPO,
    benchmark_in_own_group,
    processes_matching,
    run_benchmark,
    wait_for,
    write_recipe,
)

pytestmark = pytest.mark.slow

STORAGE = REPO / "benchmarks" / "test_storage.py"


def fio_recipe(name: str, levels: list[int], slo: dict[str, Any]) -> dict[str, Any]:
    """fio random reads of a small file, one level per iodepth: seconds per level."""
    return {
        "name": name,
        "clients": {
            "disk": {
                "kind": "fio",
                "fio": {"rw": "randread", "bs": "4k", "size": "8M", "runtime_s": 1},
                "load": {"mode": "concurrency", "levels": levels},
            }
        },
        "slo": {"disk": slo},
        "monitor": {"prometheus": False},
    }


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A real run: fio at two iodepths, one level meeting its SLO and one not."""
    tmp = tmp_path_factory.mktemp("recover")
    document = fio_recipe(
        "recover-fio", [1, 4], {"iops": {"min": 1.0}, "clat_ms": {"p99": {"max": 1e-6}}}
    )
    recipe = write_recipe(tmp / "recipe.yaml", document)
    session = run_benchmark(tmp, recipe, timeout=300, benchmark=STORAGE)
    assert session.returncode == 1, session.output  # the impossible latency bound fails
    (run,) = [p for p in (tmp / "reports").iterdir() if p.is_dir()]
    saved = json.loads((run / "recipe.json").read_text())
    assert saved["document"]["name"] == "recover-fio"
    return run, json.loads((run / "summary.json").read_text())


def figures(summary: dict) -> list[tuple]:
    return [
        (t["client"], t["level_label"], t["passed"], t["counts"], t["per_level"]["iops"])
        for t in summary["tests"]
    ]


def test_a_run_without_summary_is_rebuilt_from_its_records(
    finished_run: tuple[Path, dict], capsys: pytest.CaptureFixture[str]
) -> None:
    run, original = finished_run
    for name in ("summary.json", "records.parquet", "benchmark.json", "report.html"):
        (run / name).unlink(missing_ok=True)
    assert main(["report", str(run)]) == 0
    err = capsys.readouterr().err
    assert "rebuilt from the run's records (the session wrote no summary)" in err
    rebuilt = json.loads((run / "summary.json").read_text())
    assert rebuilt["status"] == "recovered"
    # the same statistics and verdicts, computed again from what was measured
    assert figures(rebuilt) == figures(original)
    assert [o["key"] for o in rebuilt["tests"][0]["slo"]] == ["iops", "clat_ms.p99"]
    assert all(RECOVERED_NOTE in t["warnings"] for t in rebuilt["tests"])
    assert (run / "records.parquet").is_file()
    assert (run / "report.html").is_file()
    assert verify_run(run) == []


def test_a_summary_cut_short_is_completed(finished_run: tuple[Path, dict]) -> None:
    run, original = finished_run
    cut = dict(original, status="running", tests=original["tests"][:1])
    (run / "summary.json").write_text(json.dumps(cut))
    assert main(["report", str(run)]) == 0
    rebuilt = json.loads((run / "summary.json").read_text())
    assert len(rebuilt["tests"]) == len(original["tests"]) == 2


def test_rebuilding_needs_the_saved_recipe(
    finished_run: tuple[Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, _ = finished_run
    bare = tmp_path / run.name
    bare.mkdir(mode=0o700)
    (bare / "records").mkdir()
    assert main(["report", str(bare), "--from-records"]) == 2
    assert "no recipe.json" in capsys.readouterr().err


@pytest.mark.requires("fio")
def test_a_driver_killed_outright_leaves_what_report_rebuilds(tmp_path: Path) -> None:
    """SIGKILL after the first of three levels: the summary written after that test is there
    (status running), the records were not merged yet; `aifactory report` merges and judges
    every level the clients measured."""
    document = fio_recipe("killed-fio", [1, 2, 4], {"iops": {"min": 1.0}})
    recipe = write_recipe(tmp_path / "recipe.yaml", document)
    with benchmark_in_own_group(tmp_path, recipe, benchmark=STORAGE) as session:
        run = wait_for(lambda: next((tmp_path / "reports").glob("*/"), None), 60, "run folder")

        def tests_saved() -> int:
            try:
                return len(json.loads((run / "summary.json").read_text())["tests"])
            except (OSError, ValueError, KeyError):
                return 0

        wait_for(lambda: tests_saved() >= 1, 120, "the first test saved")
        os.killpg(session.pid, signal.SIGKILL)
        session.wait(timeout=30)
    left = json.loads((run / "summary.json").read_text())
    assert left["status"] == "running"
    assert not (run / "records.parquet").exists()
    assert main(["report", str(run)]) == 0
    rebuilt = json.loads((run / "summary.json").read_text())
    assert rebuilt["status"] == "recovered"
    assert len(rebuilt["tests"]) >= len(left["tests"])
    assert all(t["counts"]["completed"] > 0 for t in rebuilt["tests"])
    assert (run / "records.parquet").is_file()
    assert verify_run(run) == []
    assert not processes_matching(str(tmp_path))
