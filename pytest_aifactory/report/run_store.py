"""Writes a run to disk: summary.json, records.parquet and the pytest-benchmark JSON.

The summary is rewritten after every test, the records once the session ends (however it
ends: an interrupted session still leaves a readable run with all that was measured up to
then). Under pytest-xdist each worker writes its part (`parts/`), and the controller merges
the parts into the one run.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pandas as pd

from pytest_aifactory import __version__
from pytest_aifactory.atomic import replacing, write_text_atomic
from pytest_aifactory.loadgen.records import read_parquet, write_parquet
from pytest_aifactory.metrics.stats import json_safe
from pytest_aifactory.redact import Redactor
from pytest_aifactory.report.environment import collect_environment
from pytest_aifactory.report.manifest import remove_manifest, write_manifest
from pytest_aifactory.report.signing import SigningError

if TYPE_CHECKING:
    from pytest_aifactory.cluster.rundir import RunDir
    from pytest_aifactory.recipe import Recipe
    from pytest_aifactory.results import CaseResult
    from pytest_aifactory.summary_shapes import RunSummary, RunSweep, RunTestEntry

SUMMARY_FORMAT = 1
SUMMARY_FILE = "summary.json"
RECORDS_FILE = "records.parquet"


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat()


def redacted(run: RunDir, data: Any) -> Any:
    """What a run writes is shared: notes quote servers' errors and the recipe its settings,
    so secrets (the run's known ones, else any that secret patterns show) become `***`."""
    return (run.redactor or Redactor()).data(json_safe(data))


def test_entry(result: CaseResult) -> RunTestEntry:
    """One test of summary.json: identity, verdict, SLO outcomes and every statistic."""
    entry = json_safe(
        {
            "test_id": result.test_id,
            "name": result.name,
            "client": result.case.client,
            "kind": result.case.kind,
            "mode": result.case.mode,
            "level": result.case.level,
            "level_label": result.case.label,
            "passed": result.passed,
            "notes": result.notes,
            "warnings": result.warnings,
            "sweep": result.sweep,
            "started_at": _iso(result.started_at),
            "ended_at": _iso(result.ended_at),
            "slo": [o.to_dict() for o in result.outcomes],
            **result.summary,
        }
    )
    # json_safe keeps the shape (only NaN becomes None); the level's statistics come untyped
    return cast("RunTestEntry", entry)


def results_records(results: list[CaseResult]) -> pd.DataFrame:
    frames = [r.records.assign(test_id=r.test_id) for r in results if len(r.records)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def build_summary(
    run: RunDir,
    recipe: Recipe,
    tests: list[RunTestEntry],
    status: str,
    started_at: float,
    services: dict[str, dict[str, Any]] | None = None,
    monitoring: dict[str, Any] | None = None,
) -> RunSummary:
    summary: RunSummary = {
        "format": SUMMARY_FORMAT,
        "run_id": run.run_id,
        "recipe": {
            "name": recipe.name,
            "description": recipe.description,
            "path": str(recipe.path),
            "document": recipe.model_dump(mode="json"),
        },
        "status": status,
        "verdict": "pass" if tests and all(t["passed"] for t in tests) else "fail",
        "started_at": _iso(started_at),
        "written_at": dt.datetime.now(dt.UTC).isoformat(),
        "aifactory_version": __version__,
        "environment": collect_environment(),
        "services": services or {},
        "monitoring": monitoring or {"mode": "off"},
        "sweeps": sweeps_of(tests),
        "tests": tests,
    }
    if recipe.matrix_config is not None:
        summary["matrix"] = matrix_of(recipe)
    return summary


def matrix_of(recipe: Recipe) -> dict[str, Any]:
    """Which configuration of its recipe's matrix a run benchmarked, so `aifactory matrix`
    and readers of the summary can set the configurations' runs side by side."""
    config = recipe.matrix_config
    assert config is not None
    return {
        **config.to_json(),
        "configurations": len(recipe.matrix),
        "recipe": recipe.name.removesuffix(f"-{config.config_id}"),
    }


def sweeps_of(tests: list[RunTestEntry]) -> list[RunSweep]:
    """Each capacity search of the run once: its test, client and outcome (from its steps)."""
    found: dict[str, RunSweep] = {}
    for test in tests:
        sweep = test.get("sweep")
        outcome = sweep.get("outcome") if sweep else None
        if sweep and outcome is not None:
            found[sweep["test_id"]] = {
                "test_id": sweep["test_id"],
                "client": test["client"],
                **outcome,
            }
    return list(found.values())


def save_run(
    run: RunDir,
    recipe: Recipe,
    tests: list[RunTestEntry],
    records: pd.DataFrame | None,
    status: str,
    started_at: float,
    services: dict[str, dict[str, Any]] | None = None,
    monitoring: dict[str, Any] | None = None,
) -> str:
    """`records`: None while the session runs (the summary alone is written); `services`: per
    service, where it ran and how long it took to become usable; `monitoring`: how the run was
    monitored and what went wrong with it.

    Once the session ends, the records and benchmark.json are written (each under a name of
    its own, synced, renamed) before the summary, so a session killed at any step leaves a
    summary that still says `running` (rebuilt from the raw records by `aifactory report`) or
    one whose data files are all whole, and the manifest is signed last. Returns why the run
    could not be signed ("" when it was, or while the session runs)."""
    summary = build_summary(run, recipe, tests, status, started_at, services, monitoring)
    remove_manifest(run.root)
    if records is not None:
        if len(records):
            with replacing(run.root / RECORDS_FILE, durable=True) as tmp:
                write_parquet(records, tmp)
        if tests:
            save_benchmark(run, recipe, tests, records, summary)
    # the commit point: a summary that says the session ended comes after every data file
    text = json.dumps(redacted(run, summary), indent=2)
    write_text_atomic(run.root / SUMMARY_FILE, text, durable=records is not None)
    if records is None:
        return ""
    try:
        write_manifest(run.root)
    except SigningError as err:
        return f"run not signed (not usable as a baseline): {err}"
    return ""


# -- parts written by pytest-xdist workers ---------------------------------------------------


def save_part(
    run: RunDir, worker: str, tests: list[RunTestEntry], records: pd.DataFrame | None
) -> None:
    """`records`: None while the worker runs (its tests' entries alone are written)."""
    parts = run.root / "parts"
    parts.mkdir(exist_ok=True, mode=0o700)
    if records is not None and len(records):  # before the entries that refer to them
        with replacing(parts / f"{worker}.parquet", durable=True) as tmp:
            write_parquet(records, tmp)
    write_text_atomic(parts / f"{worker}.json", json.dumps(redacted(run, tests), indent=2))


def load_parts(run: RunDir, with_records: bool = True) -> tuple[list[RunTestEntry], pd.DataFrame]:
    tests: list[RunTestEntry] = []
    frames: list[pd.DataFrame] = []
    parts = run.root / "parts"
    for path in sorted(parts.glob("*.json")):
        tests.extend(json.loads(path.read_text()))
        if with_records and path.with_suffix(".parquet").exists():
            frames.append(read_parquet(path.with_suffix(".parquet")))
    tests.sort(key=lambda t: t.get("started_at") or "")
    records = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return tests, records


# -- pytest-benchmark ------------------------------------------------------------------------


def save_benchmark(
    run: RunDir,
    recipe: Recipe,
    tests: list[RunTestEntry],
    records: pd.DataFrame,
    summary: RunSummary,
) -> Path:
    """pytest-benchmark's format, in the run and under `.benchmarks/` (one file per run)."""
    # deferred: benchmark_json imports pytest-benchmark and pytest, slow for `aifactory` commands
    from pytest_aifactory.report.benchmark_json import save_benchmark_json, to_benchmark_json

    def measured(test_id: str) -> pd.DataFrame:
        if not len(records):
            return records
        frame = records[records["test_id"] == test_id]
        return frame[frame["phase"] == "measure"]

    data = to_benchmark_json(
        {
            "run_id": run.run_id,
            "recipe_name": recipe.name,
            "datetime": summary["started_at"],
            "tests": [
                {
                    "test_id": t["test_id"],
                    "name": t["name"],
                    "client": t["client"],
                    "level_label": t["level_label"],
                    "records": measured(t["test_id"]),
                    "summary": t,
                    "slo": t["slo"],
                    "passed": t["passed"],
                }
                for t in tests
            ],
            "machine_info": None,
            "commit_info": None,
        }
    )
    data = redacted(run, data)
    write_text_atomic(run.root / "benchmark.json", json.dumps(data, indent=2), durable=True)
    storage = Path(os.environ.get("AIFACTORY_BENCHMARK_STORAGE", ".benchmarks"))
    marker = run.root / ".benchmark-path"
    if marker.exists():  # rewrite the same file as the run goes on, not a new one per test
        target = Path(marker.read_text().strip())
        write_text_atomic(target, json.dumps(data, indent=2))
        return target
    target = save_benchmark_json(data, storage, run.run_id)
    marker.write_text(str(target.resolve()))
    return target
