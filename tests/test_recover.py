"""A run whose driver died before writing its summary: `aifactory report` rebuilds summary,
verdicts and report from the raw records and the recipe saved with the run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_aifactory.cli import main
from pytest_aifactory.report.manifest import manifest_problems
from pytest_aifactory.report.recover import RECOVERED_NOTE
from tests.helpers import REPO, run_benchmark, write_recipe

pytestmark = pytest.mark.slow

STORAGE = REPO / "benchmarks" / "test_storage.py"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A real run: fio at two iodepths, one level meeting its SLO and one not."""
    tmp = tmp_path_factory.mktemp("recover")
    document = {
        "name": "recover-fio",
        "clients": {
            "disk": {
                "kind": "fio",
                "fio": {"rw": "randread", "bs": "4k", "size": "8M", "runtime_s": 1},
                "load": {"mode": "concurrency", "levels": [1, 4]},
            }
        },
        "slo": {"disk": {"iops": {"min": 1.0}, "clat_ms": {"p99": {"max": 1e-6}}}},
        "monitor": {"prometheus": False},
    }
    recipe = write_recipe(tmp / "recipe.yaml", document)
    session = run_benchmark(tmp, recipe, timeout=300, benchmark=STORAGE)
    assert session.returncode == 1, session.output  # the impossible latency bound fails
    (run,) = list((tmp / "reports").iterdir())
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
    assert manifest_problems(run) == []


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
    (bare / "records").mkdir(parents=True)
    assert main(["report", str(bare), "--from-records"]) == 2
    assert "no recipe.json" in capsys.readouterr().err
