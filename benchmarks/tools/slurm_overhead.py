"""How much Slurm costs a benchmark: submissions, queueing, and time to the first request.

    python benchmarks/tools/slurm_overhead.py     # needs a running Slurm (scripts/slurm-up.sh)
    python benchmarks/tools/slurm_overhead.py --only modes

Two measurements, both printed, not asserted (this machine is shared and noisy):

- *fan-out*: a small llama.cpp recipe with `--executor slurm` for clients fanned out over 1 and
  3 nodes; the time from submitting the service to the first measured request split into Slurm
  queueing, start-up of the server process, the health wait, and the client side (client job,
  prompts, warmup, barrier). The service's instants come from the run's summary.json
  (`services.llm`).
- *modes*: a six-level recipe run with one sbatch job per service and client
  (`platform.slurm.mode: jobs`) and as steps of one allocation (`salloc`, mode `allocation`),
  one after the other in the same run: sbatch calls, jobs and steps in `sacct`, and the time
  from the command's start to the report (for the allocation, salloc's own wait included).

Every `sbatch` call is counted through a logging wrapper first on PATH.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[2]
BENCHMARK = REPO / "benchmarks" / "test_inference.py"
SERVICE = "llm"
INSTANTS = ("submitted_at", "job_started_at", "launched_at", "healthy_at")


def recipe(nodes: int) -> dict[str, Any]:
    return {
        "name": f"overhead-{nodes}n",
        "platform": {"executor": "slurm", "slurm": {"time_limit": "00:15:00"}},
        "services": {SERVICE: {"kind": "llamacpp", "args": ["--parallel", "4"]}},
        "clients": {
            "chat": {
                "kind": "openai",
                "service": SERVICE,
                "nodes": nodes,
                "processes_per_node": 2,
                "dataset": {"input_tokens": 16, "output_tokens": 8},
                "load": {"levels": [6, 12], "requests": 24},
            }
        },
        # Prometheus would be one more job: only the benchmark's own jobs are counted here
        "monitor": {"prometheus": False},
    }


def sbatch_shim(folder: Path, log: Path) -> None:
    """An `sbatch` that logs the arguments of each call, then submits."""
    real = shutil.which("sbatch")
    if real is None:
        sys.exit("sbatch not found: start the dev cluster with scripts/slurm-up.sh")
    shim = folder / "sbatch"
    shim.write_text(f'#!/bin/sh\necho "$*" >> {log}\nexec {real} "$@"\n')
    shim.chmod(0o755)


def sacct_jobs(prefix: str) -> list[str]:
    """Names of the jobs (allocations, not steps) whose name starts with `prefix`."""
    out = subprocess.run(
        ["sacct", "-X", "-P", "-n", "-S", "now-1hours", "-o", "JobName"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return [name for name in out.split() if name.startswith(prefix)]


def service_instants(summary: dict[str, Any]) -> dict[str, float]:
    """When the service was submitted, started running, launched its server, answered."""
    saved = summary["services"][SERVICE]
    return {key: float(saved[key]) for key in INSTANTS}


def run(nodes: int, work: Path) -> dict[str, Any]:
    work.mkdir(parents=True)
    (work / "bin").mkdir()
    log = work / "sbatch.log"
    log.touch()
    sbatch_shim(work / "bin", log)
    path = work / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe(nodes), sort_keys=False))
    env = {**os.environ, "PATH": f"{work / 'bin'}:{os.environ['PATH']}"}
    env["AIFACTORY_BENCHMARK_STORAGE"] = str(work / ".benchmarks")
    session = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(BENCHMARK),
            "--recipe",
            str(path),
            "--report-dir",
            str(work / "reports"),
            "-p",
            "no:cacheprovider",
        ],
        cwd=work,
        env=env,
        check=False,
        capture_output=True,
        text=True,
    )
    output = session.stdout + session.stderr
    runs = [p for p in (work / "reports").glob("*") if p.is_dir()]
    if session.returncode != 0 or len(runs) != 1:
        sys.exit(f"the {nodes}-node run failed (exit {session.returncode}):\n{output[-4000:]}")
    run_dir = runs[0]
    summary = json.loads((run_dir / "summary.json").read_text())
    records = pd.read_parquet(run_dir / "records.parquet")
    measured = records[records["phase"] == "measure"]
    times = service_instants(summary)
    first_send = float(measured["send_ts"].min())
    cases = len(summary["tests"])
    calls = len(log.read_text().splitlines())
    return {
        "client nodes": nodes,
        "test cases": cases,
        "sbatch calls": calls,
        "sbatch per case": (calls - 1) / cases,
        "jobs in sacct": len(sacct_jobs(f"aif-{run_dir.name}-")),
        "queueing s": times["job_started_at"] - times["submitted_at"],
        "start-up s": times["launched_at"] - times["job_started_at"],
        "health wait s": times["healthy_at"] - times["launched_at"],
        "client side s": first_send - times["healthy_at"],
        "to first request s": first_send - times["submitted_at"],
        "nodes seen": measured["node"].nunique(),
        "processes seen": measured["process"].nunique(),
    }


SIX_LEVELS = [1, 2, 3, 4, 6, 8]


def six_level_recipe(mode: str) -> dict[str, Any]:
    """Six levels of a small load on one llama.cpp server; the mode is the only difference."""
    return {
        "name": f"overhead-{mode}",
        "platform": {"executor": "slurm", "slurm": {"time_limit": "00:20:00", "mode": mode}},
        "services": {SERVICE: {"kind": "llamacpp", "args": ["--parallel", "8"]}},
        "clients": {
            "chat": {
                "kind": "openai",
                "service": SERVICE,
                "dataset": {"input_tokens": 16, "output_tokens": 8},
                "load": {"levels": SIX_LEVELS, "requests": 16, "warmup_requests": 1},
            }
        },
        "monitor": {"prometheus": False},
    }


def sacct_rows(job_ids: list[str]) -> list[str]:
    """JobIDs of the jobs and steps of `job_ids` (without Slurm's own batch and extern steps)."""
    if not job_ids:
        return []
    out = subprocess.run(
        ["sacct", "-n", "-P", "-j", ",".join(job_ids), "-o", "JobID"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    return [row for row in out if not row.endswith((".batch", ".extern"))]


def run_mode(mode: str, work: Path) -> dict[str, Any]:
    """The six-level recipe in `mode` (`jobs`, or `allocation` inside a new salloc of 2 nodes),
    from the command's start to its report."""
    work.mkdir(parents=True)
    (work / "bin").mkdir()
    log = work / "sbatch.log"
    log.touch()
    sbatch_shim(work / "bin", log)
    path = work / "recipe.yaml"
    path.write_text(yaml.safe_dump(six_level_recipe(mode), sort_keys=False))
    env = {**os.environ, "PATH": f"{work / 'bin'}:{os.environ['PATH']}"}
    env["AIFACTORY_BENCHMARK_STORAGE"] = str(work / ".benchmarks")
    command = [sys.executable, "-m", "pytest", str(BENCHMARK), "--recipe", str(path)]
    command += ["--report-dir", str(work / "reports"), "-p", "no:cacheprovider"]
    name = f"aif-overhead-{os.getpid()}-{mode}"
    if mode == "allocation":
        command = ["salloc", "--nodes=2", f"--job-name={name}", *command]
    started = time.time()
    try:
        session = subprocess.run(
            command, cwd=work, env=env, check=False, capture_output=True, text=True, timeout=1800
        )
    finally:
        subprocess.run(["scancel", f"--name={name}"], capture_output=True, check=False)
    ended = time.time()
    output = session.stdout + session.stderr
    runs = [p for p in (work / "reports").glob("*") if p.is_dir()]
    if session.returncode != 0 or len(runs) != 1:
        sys.exit(f"the {mode} run failed (exit {session.returncode}):\n{output[-4000:]}")
    run_dir = runs[0]
    record = json.loads((run_dir / "jobs.json").read_text())
    job_ids = sorted({job["job_id"].split(".")[0] for job in record["jobs"]})
    rows = sacct_rows(job_ids)
    summary = json.loads((run_dir / "summary.json").read_text())
    records = pd.read_parquet(run_dir / "records.parquet")
    first_send = float(records[records["phase"] == "measure"]["send_ts"].min())
    report_at = (run_dir / "report.html").stat().st_mtime
    return {
        "mode": mode,
        "test cases": len(summary["tests"]),
        "sbatch calls": len(log.read_text().splitlines()),
        "Slurm jobs": sum(1 for row in rows if "." not in row),
        "job steps": sum(1 for row in rows if "." in row),  # a batch job's srun counts too
        "to first request s": first_send - started,
        "start to report s": report_at - started,
        "command s": ended - started,
    }


def fanout_table(tmp: Path) -> pd.DataFrame:
    rows = [run(nodes, tmp / f"n{nodes}") for nodes in (1, 3)]
    return pd.DataFrame(rows).set_index("client nodes").T


def modes_table(tmp: Path) -> pd.DataFrame:
    rows = [run_mode(mode, tmp / mode) for mode in ("jobs", "allocation")]
    shown = [
        {key: f"{value:.2f}" if isinstance(value, float) else value for key, value in row.items()}
        for row in rows
    ]
    return pd.DataFrame(shown).set_index("mode").T


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=("fanout", "modes"), help="one measurement only")
    args = parser.parse_args()
    if subprocess.run(["scontrol", "ping"], capture_output=True, check=False).returncode:
        sys.exit("no Slurm controller answers: start the dev cluster with scripts/slurm-up.sh")
    with tempfile.TemporaryDirectory(prefix="aif-overhead-") as tmp:
        for name, measure in (("fanout", fanout_table), ("modes", modes_table)):
            if args.only in (None, name):
                table = measure(Path(tmp))
                print(f"-- {name}")
                print(table.to_string(float_format=lambda v: f"{v:.2f}"))


if __name__ == "__main__":
    main()
