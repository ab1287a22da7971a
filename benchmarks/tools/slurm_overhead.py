"""How much Slurm costs a benchmark: submissions per test case and time to the first request.

    python benchmarks/tools/slurm_overhead.py     # needs a running Slurm (scripts/slurm-up.sh)

Runs a small llama.cpp recipe with `--executor slurm` for clients fanned out over 1 and 3
nodes, counts every `sbatch` call (through a logging wrapper first on PATH) and the run's jobs
in `sacct`, and splits the time from submitting the service to the first measured request into
Slurm queueing, start-up of the server process, the health wait, and the client side (client
job, prompts, warmup, barrier). The numbers are printed, not asserted: this machine is shared
and noisy.
The service's instants come from the run's summary.json (`services.llm`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
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
    runs = list((work / "reports").iterdir()) if (work / "reports").exists() else []
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


def main() -> None:
    if subprocess.run(["scontrol", "ping"], capture_output=True, check=False).returncode:
        sys.exit("no Slurm controller answers: start the dev cluster with scripts/slurm-up.sh")
    with tempfile.TemporaryDirectory(prefix="aif-overhead-") as tmp:
        rows = [run(nodes, Path(tmp) / f"n{nodes}") for nodes in (1, 3)]
    table = pd.DataFrame(rows).set_index("client nodes").T
    print(table.to_string(float_format=lambda v: f"{v:.2f}"))


if __name__ == "__main__":
    main()
