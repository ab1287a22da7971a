"""Writes a run to disk: summary.json, records.parquet and the pytest-benchmark JSON.

Rewritten after every test, so an interrupted session still leaves a readable run with all
that was measured up to then.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from pytest_aifactory import __version__
from pytest_aifactory.loadgen.records import write_parquet
from pytest_aifactory.metrics.stats import json_safe
from pytest_aifactory.report.environment import collect_environment

if TYPE_CHECKING:
    from pytest_aifactory.cluster.rundir import RunDir
    from pytest_aifactory.recipe import Recipe
    from pytest_aifactory.session import CaseResult

SUMMARY_FORMAT = 1


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat()


def test_entry(result: CaseResult) -> dict[str, Any]:
    return {
        "test_id": result.test_id,
        "name": result.name,
        "client": result.case.client,
        "kind": result.case.kind,
        "mode": result.case.mode,
        "level": result.case.level,
        "level_label": result.case.label,
        "passed": result.passed,
        "notes": result.notes,
        "started_at": _iso(result.started_at),
        "ended_at": _iso(result.ended_at),
        "slo": [o.to_dict() for o in result.outcomes],
        **result.summary,
    }


def build_summary(
    run: RunDir, recipe: Recipe, results: list[CaseResult], status: str, started_at: float
) -> dict[str, Any]:
    return {
        "format": SUMMARY_FORMAT,
        "run_id": run.run_id,
        "recipe": {
            "name": recipe.name,
            "description": recipe.description,
            "path": str(recipe.path),
            "document": recipe.model_dump(mode="json"),
        },
        "status": status,
        "verdict": "pass" if results and all(r.passed for r in results) else "fail",
        "started_at": _iso(started_at),
        "written_at": dt.datetime.now(dt.UTC).isoformat(),
        "aifactory_version": __version__,
        "environment": collect_environment(),
        "tests": [test_entry(r) for r in results],
    }


def save_run(
    run: RunDir, recipe: Recipe, results: list[CaseResult], status: str, started_at: float
) -> None:
    summary = build_summary(run, recipe, results, status, started_at)
    _atomic_write(run.root / "summary.json", json.dumps(json_safe(summary), indent=2))
    if results:
        frames = [r.records.assign(test_id=r.test_id) for r in results if len(r.records)]
        if frames:
            write_parquet(pd.concat(frames, ignore_index=True), run.root / "records.parquet")
        save_benchmark(run, recipe, results, summary)


def save_benchmark(
    run: RunDir, recipe: Recipe, results: list[CaseResult], summary: dict[str, Any]
) -> Path:
    """pytest-benchmark's format, in the run and under `.benchmarks/` (one file per run)."""
    from pytest_aifactory.report.benchmark_json import save_benchmark_json, to_benchmark_json

    data = to_benchmark_json(
        {
            "run_id": run.run_id,
            "recipe_name": recipe.name,
            "datetime": summary["started_at"],
            "tests": [
                {
                    "test_id": r.test_id,
                    "name": r.name,
                    "client": r.case.client,
                    "level_label": r.case.label,
                    "records": r.records[r.records["phase"] == "measure"]
                    if "phase" in r.records
                    else r.records,
                    "summary": r.summary,
                    "slo": [o.to_dict() for o in r.outcomes],
                    "passed": r.passed,
                }
                for r in results
            ],
            "machine_info": None,
            "commit_info": None,
        }
    )
    _atomic_write(run.root / "benchmark.json", json.dumps(json_safe(data), indent=2))
    storage = Path(os.environ.get("AIFACTORY_BENCHMARK_STORAGE", ".benchmarks"))
    marker = run.root / ".benchmark-path"
    if marker.exists():  # rewrite the same file as the run goes on, not a new one per test
        target = Path(marker.read_text().strip())
        _atomic_write(target, json.dumps(json_safe(data), indent=2))
        return target
    target = save_benchmark_json(json_safe(data), storage, run.run_id)
    marker.write_text(str(target.resolve()))
    return target
