"""A run's summary rebuilt from its raw records alone.

The records are written by the client processes while the load runs; summary.json by the
driver after each test, records.parquet once the session ends. A driver killed outright
(SIGKILL, a lost login node, a full disk at the wrong moment) leaves the records and no
summary, or one that lacks the last tests and has no records.parquet beside it. The recipe
the run was started with is saved beside them (`recipe.json`), so every statistic and SLO
verdict can be computed again, by the same functions, from what was measured.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from pytest_aifactory.cases import LoadCase, cases_for, sweep_step
from pytest_aifactory.cluster.run_control import driver_alive
from pytest_aifactory.cluster.run_records import read_run
from pytest_aifactory.cluster.rundir import RunDir, driver_gone
from pytest_aifactory.loadgen.records import read_records
from pytest_aifactory.metrics import slo as slo_eval
from pytest_aifactory.metrics.summaries import summarize
from pytest_aifactory.recipe import Recipe
from pytest_aifactory.report.run_store import results_records, save_run, test_entry
from pytest_aifactory.report.signing import ownership_problem
from pytest_aifactory.results import CaseResult

if TYPE_CHECKING:
    from pytest_aifactory.summary_shapes import RunTestEntry

RECIPE_FILE = "recipe.json"
RECOVERED_NOTE = "summary rebuilt from the raw records (the session did not write it)"


class RecoverError(Exception):
    """The run cannot be rebuilt; the message says why, in one line."""


def save_recipe(root: Path, recipe: Recipe, redacted: Any) -> Path:
    """The run's recipe as it was validated (`redacted`: the document with secrets masked:
    statistics and verdicts need no credentials), written 0600 when the run starts."""
    path = root / RECIPE_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"path": str(recipe.path), "document": redacted}, fh, indent=2)
    return path


def load_saved_recipe(root: Path) -> Recipe:
    path = root / RECIPE_FILE
    try:
        saved = json.loads(path.read_text())
        recipe = Recipe.model_validate(saved["document"])
    except FileNotFoundError:
        raise RecoverError(f"{root}: no {RECIPE_FILE} (run written by an older version)") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise RecoverError(f"{path}: unreadable ({err})") from None
    recipe._path = Path(saved.get("path") or "")
    return recipe


def _case_of(recipe: Recipe, client: str, label: str) -> LoadCase | None:
    for case in cases_for(recipe):
        if case.client == client and case.label == label:
            return case
    spec = recipe.clients.get(client)
    if spec is not None and spec.load.mode == "sweep":  # a level the capacity search chose
        sweep = LoadCase(client, spec.kind, "sweep", 0.0, "sweep", f"{client}-sweep")
        level = float(label.partition("=")[2] or 0)
        return sweep_step(sweep, spec, level)
    return None


def recover_tests(root: Path, recipe: Recipe) -> tuple[list[RunTestEntry], pd.DataFrame]:
    """One summary entry per test whose records are in the run, in the order they ran."""
    results: list[CaseResult] = []
    for folder in sorted(p for p in (root / "records").glob("*") if p.is_dir()):
        records = read_records(sorted(folder.glob("p*.jsonl")))
        if not len(records):
            continue
        client, label = str(records["client"].iloc[0]), str(records["level_label"].iloc[0])
        case = _case_of(recipe, client, label)
        if case is None:
            continue  # not this recipe's client (a hand-copied folder): nothing to judge
        measured = records[records["phase"] == "measure"]
        requested = case.level if case.mode == "rate" else None
        objectives = recipe.objectives(client)
        load = recipe.clients[client].load
        summary = summarize(
            case.kind,
            records,
            requested_rate=requested,
            objectives=objectives,
            confidence=load.confidence,
        )
        summary["slo_judged_on"] = load.slo_rule
        starts = pd.to_numeric(measured["send_ts"], errors="coerce").dropna()
        ends = pd.to_numeric(records["end_ts"], errors="coerce").dropna()
        results.append(
            CaseResult(
                test_id=folder.name,
                name=folder.name,
                case=case,
                records=records,
                summary=summary,
                outcomes=slo_eval.evaluate(summary, objectives, load.slo_rule),
                notes=[],
                warnings=[RECOVERED_NOTE],
                started_at=float(starts.min()) if len(starts) else 0.0,
                ended_at=float(ends.max()) if len(ends) else 0.0,
            )
        )
    results.sort(key=lambda r: r.started_at)
    return [test_entry(r) for r in results], results_records(results)


def driver_still_running(root: Path) -> str:
    """Why the run's driver may still be writing it ("" when it is not): its recorded process
    lives on this host, or, on another host, it touched the heartbeat lately. A rebuild then
    would race the driver's own saving and overwrite what it writes."""
    record = read_run(root)
    if record is None:
        return ""
    alive = driver_alive(record)
    if alive is None and record.status == "running" and not driver_gone(root / "heartbeat"):
        return f"its driver on {record.driver_host} beat lately ({root / 'heartbeat'})"
    if alive:
        pid = record.driver.pid if record.driver is not None else "?"
        return f"its driver (PID {pid} on {record.driver_host}) is still running"
    return ""


def recover_run(root: Path) -> Path:
    """Write summary.json, records.parquet, benchmark.json and the manifest again from the
    run's records and saved recipe; returns the summary's path. Only a run of this user's
    (its records are signed with the user's key) whose driver is gone."""
    problem = ownership_problem(root, "refusing to rebuild and sign it")
    if problem:
        raise RecoverError(problem)
    running = driver_still_running(root)
    if running:
        raise RecoverError(f"{root}: not rebuilt while the session may still write it: {running}")
    recipe = load_saved_recipe(root)
    tests, records = recover_tests(root, recipe)
    if not tests:
        raise RecoverError(f"{root}: no records of this run's clients to rebuild from")
    started = min(
        (pd.Timestamp(t["started_at"]).timestamp() for t in tests if t.get("started_at")),
        default=0.0,
    )
    run = RunDir.open(root)
    for leftover in root.glob(".*.tmp"):  # a write the killed session never finished
        leftover.unlink(missing_ok=True)
    unsigned = save_run(run, recipe, tests, records, "recovered", started)
    if unsigned:
        raise RecoverError(f"rebuilt, but {unsigned}")
    return root / "summary.json"
