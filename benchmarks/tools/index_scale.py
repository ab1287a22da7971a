"""How long the experiments dashboard of 1,000 runs takes to build.

    python benchmarks/tools/index_scale.py                  # 1,000 runs of 10 recipes
    python benchmarks/tools/index_scale.py --runs 300 --keep /tmp/index-scale

Writes a reports folder of synthetic runs the way sessions leave them (summary.json with two
clients of three levels each and their SLO outcomes, a small records.parquet, the job record
and a signed manifest, so every run is verified as the dashboard verifies a real one), with a
failed objective and a sharp drop in throughput here and there, then runs `aifactory index` on it
in a fresh process (imports included) and prints its wall time and the page's size beside the
goal (10 s). With Chromium at /usr/bin/chromium it also times the page opened in it, headless
and offline, until every chart is drawn. The numbers are printed, not asserted (the machine is
shared); `--check` makes a missed goal exit 1.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pytest_aifactory import write_manifest

GOAL_SECONDS = 10.0
CHROMIUM = Path("/usr/bin/chromium")
START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
CLIENTS = ("chat", "batch")
LEVELS = (1, 4, 8)


def _stats(center: float, rng: np.random.Generator) -> dict[str, float]:
    spread = center * rng.uniform(0.05, 0.2)
    values = {
        "mean": center,
        "std": spread,
        "min": center * 0.5,
        "p50": center,
        "p90": center + spread,
        "p95": center + 1.5 * spread,
        "p99": center + 2 * spread,
        "p999": center + 3 * spread,
        "max": center + 4 * spread,
    }
    return {k: round(v, 3) for k, v in values.items()}


def test_entry(
    client: str, level: int, when: dt.datetime, rng: np.random.Generator, slow: bool
) -> dict[str, Any]:
    throughput = 30.0 * level**0.6 * rng.uniform(0.95, 1.05) * (0.5 if slow else 1.0)
    ttft = 40.0 * level * rng.uniform(0.9, 1.1) * (2.0 if slow else 1.0)
    passed = bool(ttft * 1.3 < 600.0)
    name = f"test_serving[{client}-concurrency-{level}]"
    return {
        "test_id": f"benchmarks/test_inference.py::{name}",
        "name": name,
        "client": client,
        "kind": "openai",
        "mode": "concurrency",
        "level": float(level),
        "level_label": f"concurrency={level}",
        "passed": passed,
        "notes": [],
        "warnings": [],
        "sweep": None,
        "started_at": when.isoformat(),
        "ended_at": (when + dt.timedelta(seconds=20)).isoformat(),
        "slo": [
            {
                "client": client,
                "key": "ttft_ms.p99",
                "metric": "ttft_ms",
                "statistic": "p99",
                "bound": "max",
                "limit": 600.0,
                "unit": "ms",
                "value": round(ttft * 1.3, 3),
                "passed": passed,
                "margin": round(600.0 - ttft * 1.3, 3),
                "detail": "",
            }
        ],
        "counts": {"sent": 32, "completed": 32, "failed": 0, "good": 32},
        "per_request": {
            metric: _stats(center, rng)
            for metric, center in (
                ("ttft_ms", ttft),
                ("tpot_ms", 12.0),
                ("itl_ms", 12.0),
                ("e2el_ms", ttft + 64 * 12.0),
                ("output_tokens", 64.0),
                ("input_tokens", 128.0),
            )
        },
        "per_level": {
            "output_throughput": round(throughput, 3),
            "request_throughput": round(throughput / 64, 4),
            "goodput": round(throughput / 64, 4),
            "error_rate": 0.0,
        },
        "errors": {},
    }


def write_run_folder(reports: Path, index: int, recipes: int, rng: np.random.Generator) -> None:
    recipe = f"recipe-{index % recipes:02d}"
    when = START + dt.timedelta(hours=index * 3)
    run_id = f"{when:%Y%m%d-%H%M%S}-{recipe}"
    root = reports / run_id
    root.mkdir(mode=0o700)
    slow = rng.random() < 0.03
    tests = [test_entry(c, level, when, rng, slow) for c in CLIENTS for level in LEVELS]
    summary = {
        "format": 1,
        "run_id": run_id,
        "recipe": {
            "name": recipe,
            "description": "synthetic",
            "path": f"recipes/{recipe}.yaml",
            "document": {"name": recipe, "platform": {"executor": "local"}},
        },
        "status": "complete",
        "verdict": "pass" if all(t["passed"] for t in tests) else "fail",
        "started_at": when.isoformat(),
        "written_at": (when + dt.timedelta(minutes=3)).isoformat(),
        "aifactory_version": "synthetic",
        "environment": {"hostname": f"node{index % 4}"},
        "services": {},
        "monitoring": {"mode": "off"},
        "sweeps": [],
        "tests": tests,
    }
    (root / "summary.json").write_text(json.dumps(summary, indent=2))
    pd.DataFrame(
        {"client": "chat", "phase": "measure", "ttft_ms": rng.uniform(10, 100, 200)}
    ).to_parquet(root / "records.parquet")
    job = {
        "name": "service-llm",
        "role": "service",
        "job_id": str(1000 + index),
        "executor": "local",
        "state": "COMPLETED",
        "host": f"node{index % 4}",
        "submitted_at": when.isoformat(),
    }
    record = {  # jobs.json, as a session leaves it
        "format": 1,
        "run_id": run_id,
        "run_dir": str(root),
        "recipe": recipe,
        "executor": "local",
        "driver_host": f"node{index % 4}",
        "started_at": when.isoformat(),
        "ended_at": (when + dt.timedelta(minutes=3)).isoformat(),
        "status": "complete",
        "jobs": [job],
    }
    (root / "jobs.json").write_text(json.dumps(record, indent=2))
    write_manifest(root)


def time_build(reports: Path) -> tuple[float, Path]:
    page = reports / "index.html"
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "pytest_aifactory.cli", "index", str(reports)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - started, page


def time_browser(page: Path, workdir: Path) -> tuple[float, int, int]:
    """Seconds until headless Chromium has run the page's scripts and drawn every chart, the
    charts drawn and the charts on the page."""
    argv = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        f"--user-data-dir={workdir / 'profile'}",
        "--proxy-server=127.0.0.1:9",
        "--virtual-time-budget=60000",
        "--dump-dom",
        page.as_uri(),
    ]
    started = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=True).stdout
    elapsed = time.perf_counter() - started
    charts = re.findall(r'<div class="chart[ "][^>]*>', out)
    drawn = sum('data-rendered="true"' in tag for tag in charts)
    return elapsed, drawn, len(charts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--recipes", type=int, default=10)
    parser.add_argument("--keep", metavar="DIR", help="write the runs here and keep them")
    parser.add_argument("--no-browser", action="store_true", help="do not open it in Chromium")
    parser.add_argument("--check", action="store_true", help="exit 1 when a goal is missed")
    args = parser.parse_args()
    os.umask(0o077)  # as sessions write runs: closed to others, so they verify
    workdir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="index-scale-"))
    reports = workdir / "reports"
    # its own signing key and remembered verifications, not the user's
    os.environ["AIFACTORY_STATE_DIR"] = str(workdir / "state")
    reports.mkdir(parents=True, exist_ok=True, mode=0o700)
    rng = np.random.default_rng(0)
    try:
        started = time.perf_counter()
        for index in range(args.runs):
            write_run_folder(reports, index, args.recipes, rng)
        print(
            f"wrote {args.runs} runs of {args.recipes} recipes in {reports} "
            f"({time.perf_counter() - started:.1f} s)"
        )
        seconds, page = time_build(reports)
        size = page.stat().st_size
        print(
            f"aifactory index: {seconds:.2f} s (goal {GOAL_SECONDS:g} s), "
            f"page {size / 1e6:.1f} MB: {page}"
        )
        again, _ = time_build(reports)
        print(f"aifactory index again (verifications remembered): {again:.2f} s")
        if CHROMIUM.exists() and not args.no_browser:
            opened, drawn, charts = time_browser(page, workdir)
            print(
                f"chromium (headless, offline): {opened:.1f} s to load and draw "
                f"{drawn} of {charts} charts"
            )
        return 1 if args.check and seconds > GOAL_SECONDS else 0
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
