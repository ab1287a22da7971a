"""How much Slurm costs a benchmark: submissions per test case and time to the first request.

    python benchmarks/tools/slurm_overhead.py     # needs a running Slurm (scripts/slurm-up.sh)

Runs a small llama.cpp recipe with `--executor slurm` for clients fanned out over 1 and 3
nodes, counts every `sbatch` call (through a logging wrapper first on PATH), and splits the time
from submitting the service to the first measured request into Slurm queueing, start-up of the
server process, the health wait, and the client side (client job, prompts, warmup, barrier).
The numbers are printed, not asserted: this machine is shared and noisy.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[2]
BENCHMARK = REPO / "benchmarks" / "test_inference.py"


def recipe(nodes: int) -> dict:
    return {
        "name": f"overhead-{nodes}n",
        "platform": {"executor": "slurm", "slurm": {"time_limit": "00:15:00"}},
        "services": {"llm": {"kind": "llamacpp", "args": ["--parallel", "4"]}},
        "clients": {
            "chat": {
                "kind": "openai",
                "service": "llm",
                "nodes": nodes,
                "processes_per_node": 2,
                "dataset": {"input_tokens": 16, "output_tokens": 8},
                "load": {"levels": [6, 12], "requests": 24},
            }
        },
    }


def sbatch_shim(folder: Path, log: Path) -> None:
    real = shutil.which("sbatch")
    if real is None:
        sys.exit("sbatch not found: start the dev cluster with scripts/slurm-up.sh")
    shim = folder / "sbatch"
    shim.write_text(f'#!/bin/sh\necho "$@" >> {log}\nexec {real} "$@"\n')
    shim.chmod(0o755)


def run(nodes: int, work: Path) -> dict:
    work.mkdir(parents=True)
    (work / "bin").mkdir()
    log = work / "sbatch.log"
    log.touch()
    sbatch_shim(work / "bin", log)
    path = work / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe(nodes), sort_keys=False))
    env = {**os.environ, "PATH": f"{work / 'bin'}:{os.environ['PATH']}"}
    env["AIFACTORY_BENCHMARK_STORAGE"] = str(work / ".benchmarks")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(BENCHMARK),
            "--recipe",
            str(path),
            "--report-dir",
            str(work / "reports"),
            "-q",
            "-p",
            "no:cacheprovider",
        ],
        cwd=work,
        env=env,
        check=False,
        capture_output=True,
    )
    (run_dir,) = list((work / "reports").iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    records = pd.read_parquet(run_dir / "records.parquet")
    service = summary["services"]["llm"]
    first_send = records[records["phase"] == "measure"]["send_ts"].min()
    cases = len(summary["tests"])
    calls = len(log.read_text().splitlines())
    return {
        "client nodes": nodes,
        "test cases": cases,
        "sbatch calls": calls,
        "sbatch per case": (calls - 1) / cases,
        "queueing s": service["job_started_at"] - service["submitted_at"],
        "start-up s": service["launched_at"] - service["job_started_at"],
        "health wait s": service["healthy_at"] - service["launched_at"],
        "to first request s": first_send - service["submitted_at"],
        "nodes seen": records["node"].nunique(),
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
