"""The load generator's own ceiling: how fast one client process can go against a server that
costs nothing, and how that compares with GuideLLM on the same server in the same run.

    python benchmarks/loadgen_ceiling.py [--guidellm /tmp/guidellm-venv/bin/guidellm]

Against the zero-delay token server (benchmarks/tools/token_server.py) it runs the `openai`
client at rising Poisson rates and reports, per rate, the achieved request rate, content events
per second, queue_ms p99 and the client's CPU; the ceiling is the highest rate still achieved
within 1% with queue_ms p99 under 1 ms. Then the same with 2 processes. Then GuideLLM's
throughput profile (as many requests as it can) against the same server, if it is installed
(`--guidellm`, or `$GUIDELLM`, or `guidellm` on PATH; install it in its own virtual
environment: `python -m venv /tmp/guidellm-venv && /tmp/guidellm-venv/bin/pip install
guidellm`). vLLM's serving benchmark needs the vllm package (and torch); it is run when
`--vllm-bench` names a `vllm` executable. Prints numbers, asserts nothing: it is a measurement.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.tools.token_server import TokenServer  # noqa: E402
from pytest_aifactory.loadgen.records import read_records  # noqa: E402
from pytest_aifactory.loadgen.runner import run_load  # noqa: E402
from pytest_aifactory.loadgen.selfcheck import client_stats_path, read_client_stats  # noqa: E402
from pytest_aifactory.loadgen.spec import DatasetSpec, LoadSpec  # noqa: E402
from pytest_aifactory.metrics.stats import client_health, summarize_llm  # noqa: E402

OUTPUT_TOKENS = 32


def _spec(
    folder: Path, url: str, rate: float, process: int, processes: int, seconds: float
) -> LoadSpec:
    import time

    import pytest_aifactory.loadgen.openai  # noqa: F401

    return LoadSpec(
        start_at=time.time() + 5.0 if processes > 1 else None,
        client="ceiling",
        kind="openai",
        level_label=f"rate={rate:g}",
        mode="rate",
        level=rate / processes,
        base_url=url,
        model="token-server",
        records_path=str(folder / f"p{process:04d}.jsonl"),
        progress_path=str(folder / f"p{process:04d}.progress.json"),
        duration_s=seconds,
        seed=process,
        timeout_s=30.0,
        warmup_requests=20,
        dataset=DatasetSpec(input_tokens=16, output_tokens=OUTPUT_TOKENS),
    )


def ours(url: str, rate: float, processes: int, seconds: float) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="ceiling-"))
    specs = [_spec(folder, url, rate, p, processes, seconds) for p in range(processes)]
    start = specs[0].start_at
    specs = [dataclasses.replace(s, start_at=start) for s in specs]
    if processes == 1:
        run_load(specs[0])
    else:
        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            pool.map(run_load, specs)
    records = read_records(Path(s.records_path) for s in specs)
    summary = summarize_llm(records)
    stats = read_client_stats([client_stats_path(s.records_path) for s in specs])
    health = client_health(records, stats)
    span = summary["per_level"]["duration_s"] or float("nan")
    events = float(records["content_events"].sum())
    shutil.rmtree(folder, ignore_errors=True)
    return {
        "requested": rate,
        "achieved": summary["per_level"]["achieved_rate"],
        "completed_per_s": summary["per_level"]["request_throughput"],
        "events_per_s": events / span,
        "queue_ms_p99": health["queue_ms_p99"],
        "cpu_percent_max": health["cpu_percent"]["max"],
        "failed": summary["counts"]["failed"],
    }


def ceiling(url: str, processes: int, seconds: float, start: float) -> dict[str, Any] | None:
    best = None
    rate = start
    while rate < 100_000:
        row = ours(url, rate, processes, seconds)
        print(f"  {processes} proc rate {rate:7.0f}: {json.dumps(row)}", flush=True)
        ok = (
            row["achieved"] is not None
            and abs(row["achieved"] - rate) <= 0.01 * rate
            and (row["queue_ms_p99"] or 0) < 1.0
            and not row["failed"]
        )
        if not ok:
            break
        best = row
        rate *= 1.5
    return best


def find_tool(option: str | None, env: str, name: str) -> str | None:
    return option or os.environ.get(env) or shutil.which(name)


def guidellm(tool: str, url: str, seconds: float) -> dict[str, Any] | None:
    """GuideLLM's throughput profile against the same server (its own report, parsed)."""
    out = Path(tempfile.mkdtemp(prefix="guidellm-")) / "report.json"
    data = f"prompt_tokens=16,output_tokens={OUTPUT_TOKENS}"
    args = [
        tool,
        "run",
        "--target",
        url,
        "--profile",
        "throughput",
        "--max-seconds",
        str(seconds),
        "--data",
        data,
        "--output-path",
        str(out),
    ]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    if done.returncode != 0 or not out.exists():
        print(f"  guidellm failed ({done.returncode}): {done.stderr[-2000:]}")
        return None
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--start-rate", type=float, default=100.0)
    parser.add_argument("--guidellm", default=None, help="the guidellm executable")
    parser.add_argument("--vllm-bench", default=None, help="the vllm executable")
    args = parser.parse_args()
    with TokenServer(tokens=OUTPUT_TOKENS) as server:
        print(f"token server at {server.url} (zero delay)")
        results: dict[str, Any] = {}
        for processes in (1, 2):
            server.reset()
            results[f"ours_{processes}"] = ceiling(
                server.url, processes, args.seconds, args.start_rate
            )
            print(f"server self-check: {json.dumps(server.stats())}")
        print("ceiling:", json.dumps(results, indent=1))
        tool = find_tool(args.guidellm, "GUIDELLM", "guidellm")
        if tool is None:
            print("GuideLLM not found: pass --guidellm or set GUIDELLM (see the docstring)")
        else:
            server.reset()
            report = guidellm(tool, server.url, args.seconds)
            served = server.stats()
            if report is not None:
                rate = served["requests"] / served["wall_s"]
                print(f"guidellm: server saw {served['requests']} requests, {rate:.0f}/s overall")
                ours_1 = results.get("ours_1") or {}
                if ours_1.get("achieved"):
                    print(f"ratio ours/guidellm (1 process): {ours_1['achieved'] / rate:.1f}x")
        vllm = find_tool(args.vllm_bench, "VLLM", "vllm")
        if vllm is None:
            print("vLLM not found: its serving benchmark needs `pip install vllm` (with torch)")


if __name__ == "__main__":
    main()
