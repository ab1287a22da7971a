"""How long a report of a million requests takes to build, and how much memory it needs.

    python benchmarks/tools/report_scale.py                 # 1,000,000 records, 5 levels
    python benchmarks/tools/report_scale.py --records 200000 --keep /tmp/scale-run

Writes a synthetic run folder the way a session leaves one (records.parquet in the records'
schema with every request's inter-token gaps, summary.json with each level's statistics and SLO
outcomes, metrics.parquet with llama.cpp's raw counters and the node's CPU counters scraped
every few seconds), then runs `build_report` on it in a child process and prints its wall time
and peak resident memory beside the goals (30 s, 2 GB). Load grows with the level so latency
climbs and throughput flattens (a knee), and the busiest level has failed requests. The numbers
are printed, not asserted (the machine is shared); `--check` makes a missed goal exit 1.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pytest_aifactory import SloObjective, describe, evaluate, json_safe, normalize

GOAL_SECONDS = 30.0
GOAL_BYTES = 2 * 1024**3
START = 1_795_000_000.0
CLIENT = "chat"
SLO = [
    SloObjective(CLIENT, "ttft_ms", "p99", "max", 2000.0),
    SloObjective(CLIENT, "tpot_ms", "p50", "max", 60.0),
    SloObjective(CLIENT, "error_rate", None, "max", 0.01),
]
SCRAPE_S = 5.0

SCHEMA = pa.schema(
    [
        ("client", pa.large_string()),
        ("level_label", pa.large_string()),
        ("node", pa.large_string()),
        ("process", pa.int64()),
        ("request_id", pa.int64()),
        ("phase", pa.large_string()),
        ("scheduled_ts", pa.float64()),
        ("send_ts", pa.float64()),
        ("first_token_ts", pa.float64()),
        ("end_ts", pa.float64()),
        ("queue_ms", pa.float64()),
        ("ttft_ms", pa.float64()),
        ("e2el_ms", pa.float64()),
        ("tpot_ms", pa.float64()),
        ("itl_ms", pa.list_(pa.float64())),
        ("output_tokens", pa.int64()),
        ("input_tokens", pa.int64()),
        ("tokens_estimated", pa.bool_()),
        ("content_events", pa.int64()),
        ("http_status", pa.int64()),
        ("error", pa.large_string()),
        ("test_id", pa.large_string()),
    ]
)
"""What `loadgen.records.write_parquet` writes."""


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat()


def level_table(
    level: int, count: int, start: float, rng: np.random.Generator, test_id: str
) -> tuple[pa.Table, dict[str, Any], float]:
    """One level's requests, its summary entry, and when it ended."""
    pressure = level / 64
    tokens = rng.integers(64, 193, count)
    ttft = 60.0 * (1 + pressure**2) * rng.lognormal(0, 0.35, count)
    gap_scale = 18.0 * (1 + pressure / 2)
    lengths = tokens - 1
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    gaps = gap_scale * rng.lognormal(0, 0.3, int(offsets[-1]))
    sums = np.add.reduceat(gaps, offsets[:-1])
    e2el = ttft + sums
    rate = level / (float(e2el.mean()) / 1000)
    send = start + np.cumsum(rng.exponential(1 / rate, count))
    warmup = min(level, count // 10)
    failed = np.zeros(count, dtype=bool)
    kinds = np.ones(count, dtype=bool)  # which failures are HTTP errors (the rest time out)
    errors = np.full(count, "", dtype=object)
    if level >= 256:
        failed = rng.random(count) < 0.02
        kinds = rng.random(count) < 0.8
        errors[failed & kinds] = "HTTPError: 503 Service Unavailable"
        errors[failed & ~kinds] = "TimeoutError: no content for 60 s"
    ok = ~failed
    end = send + np.where(ok, e2el, 50.0) / 1000
    tpot = (e2el - ttft) / (tokens - 1)
    nan = np.full(count, np.nan)
    label = f"concurrency={level}"
    # a failed request has no gaps: its list is empty
    kept = np.repeat(ok, lengths)
    kept_offsets = np.concatenate([[0], np.cumsum(np.where(ok, lengths, 0))]).astype(np.int32)
    itl = pa.ListArray.from_arrays(pa.array(kept_offsets), pa.array(gaps[kept]))
    measured_gaps = gaps[np.repeat(ok & (np.arange(count) >= warmup), lengths)]
    columns = {
        "client": pa.array([CLIENT] * count, pa.large_string()),
        "level_label": pa.array([label] * count, pa.large_string()),
        "node": pa.array(np.where(np.arange(count) % 2, "n1", "n0"), pa.large_string()),
        "process": pa.array(np.arange(count) % 8),
        "request_id": pa.array(np.arange(count)),
        "phase": pa.array(
            np.where(np.arange(count) < warmup, "warmup", "measure"), pa.large_string()
        ),
        "scheduled_ts": pa.array(send),
        "send_ts": pa.array(send + 0.0002),
        "first_token_ts": pa.array(np.where(ok, send + ttft / 1000, nan)),
        "end_ts": pa.array(end),
        "queue_ms": pa.array(0.2 + rng.exponential(0.3, count)),
        "ttft_ms": pa.array(np.where(ok, ttft, nan)),
        "e2el_ms": pa.array(np.where(ok, e2el, nan)),
        "tpot_ms": pa.array(np.where(ok, tpot, nan)),
        "itl_ms": itl,
        "output_tokens": pa.array(np.where(ok, tokens, 0), mask=failed),
        "input_tokens": pa.array(np.full(count, 128), mask=failed),
        "tokens_estimated": pa.array(np.zeros(count, dtype=bool)),
        "content_events": pa.array(np.where(ok, tokens, 0)),
        "http_status": pa.array(np.where(ok, 200, 503), mask=failed & ~kinds),
        "error": pa.array(errors.astype(str), pa.large_string()),
        "test_id": pa.array([test_id] * count, pa.large_string()),
    }
    table = pa.table(columns, schema=SCHEMA)
    entry = summary_entry(test_id, level, label, table, measured_gaps, ok, warmup)
    return table, entry, float(end.max())


def summary_entry(
    test_id: str,
    level: int,
    label: str,
    table: pa.Table,
    measured_gaps: np.ndarray,
    ok: np.ndarray,
    warmup: int,
) -> dict[str, Any]:
    """What `run_store.test_entry` writes, from the level's arrays (statistics as
    `metrics.stats.describe` computes them)."""
    measure = np.arange(table.num_rows) >= warmup
    done = measure & ok

    def col(name: str) -> np.ndarray:
        return table.column(name).to_numpy(zero_copy_only=False).astype(float)

    per_request = {
        "ttft_ms": describe(col("ttft_ms")[done]),
        "tpot_ms": describe(col("tpot_ms")[done]),
        "itl_ms": describe(measured_gaps),
        "e2el_ms": describe(col("e2el_ms")[done]),
        "queue_ms": describe(col("queue_ms")[measure]),
        "output_tokens": describe(col("output_tokens")[done]),
        "input_tokens": describe(col("input_tokens")[done]),
    }
    send = col("send_ts")[measure]
    end = col("end_ts")[done]
    duration = float(end.max() - send.min())
    sent, completed = int(measure.sum()), int(done.sum())
    tokens = float(np.nansum(col("output_tokens")[done]))
    errors = pd.Series(table.column("error").to_numpy(zero_copy_only=False)[measure & ~ok])
    per_level = {
        "duration_s": duration,
        "request_throughput": completed / duration,
        "output_throughput": tokens / duration,
        "total_token_throughput": (tokens + 128 * completed) / duration,
        "error_rate": (sent - completed) / sent,
        "goodput": completed / duration,
        "achieved_rate": (sent - 1) / float(send.max() - send.min()),
        "requested_rate": None,
    }
    summary = {
        "counts": {
            "sent": sent,
            "completed": completed,
            "failed": sent - completed,
            "good": completed,
        },
        "per_request": per_request,
        "per_level": per_level,
        "errors": errors.str.split(":").str[0].value_counts().to_dict(),
        "tokens_estimated": False,
    }
    outcomes = evaluate(json_safe(summary), SLO)
    return json_safe(
        {
            "test_id": test_id,
            "name": test_id.split("::")[-1],
            "client": CLIENT,
            "kind": "openai",
            "mode": "concurrency",
            "level": float(level),
            "level_label": label,
            "passed": all(o.passed for o in outcomes),
            "notes": [],
            "warnings": [],
            "started_at": iso(float(col("scheduled_ts").min()) - 1),
            "ended_at": iso(float(col("end_ts").max()) + 1),
            "slo": [o.to_dict() for o in outcomes],
            **summary,
            "server": {"llm": {"output_tokens": tokens, "series": "llamacpp_generated_tokens"}},
            "cross_checks": [],
        }
    )


def level_samples(test_id: str, table: pa.Table, start: float, end: float) -> pd.DataFrame:
    """llama.cpp's token counter (raw, cumulative), its busy slots, and the node's CPU
    seconds per CPU and mode, every SCRAPE_S seconds over the window."""
    times = np.arange(start, end + SCRAPE_S, SCRAPE_S)
    ends = table.column("end_ts").to_numpy()
    tokens = np.nan_to_num(
        table.column("output_tokens").to_numpy(zero_copy_only=False).astype(float)
    )
    order = np.argsort(ends)
    cumulative = np.concatenate([[0.0], np.cumsum(tokens[order])])
    counter = cumulative[np.searchsorted(ends[order], times, side="right")]
    frames = []

    def frame(
        series: str, metric: str, source: str, values: np.ndarray, labels: str = "{}"
    ) -> None:
        frames.append(
            pd.DataFrame(
                {
                    "series": series,
                    "metric": metric,
                    "source": source,
                    "service": "llm" if source == "service" else "",
                    "node": "n0",
                    "instance": "10.0.0.1:8080" if source == "service" else "10.0.0.1:9100",
                    "labels": labels,
                    "timestamp": times,
                    "value": values,
                }
            )
        )

    frame("llamacpp_generated_tokens", "llamacpp:tokens_predicted_total", "service", counter)
    frame(
        "llamacpp_requests_processing",
        "llamacpp:requests_processing",
        "service",
        np.full(len(times), 8.0),
    )
    frame(
        "llamacpp_requests_deferred",
        "llamacpp:requests_deferred",
        "service",
        np.full(len(times), 1.0),
    )
    for cpu in range(4):
        for mode, share in (("user", 0.7), ("system", 0.1), ("idle", 0.2)):
            labels = json.dumps({"cpu": str(cpu), "mode": mode}, sort_keys=True)
            frame(
                "node_cpu_seconds",
                "node_cpu_seconds_total",
                "node",
                share * (times - start),
                labels,
            )
    out = pd.concat(frames, ignore_index=True)
    out["test_id"] = test_id
    out["origin"] = "prometheus"
    return normalize(out)


def write_run(root: Path, records: int, levels: list[int], seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    tests, samples = [], []
    start = START
    per_level = records // len(levels)
    with pq.ParquetWriter(root / "records.parquet", SCHEMA) as writer:
        for level in levels:
            test_id = f"benchmarks/test_inference.py::test_serving[{CLIENT}-concurrency-{level}]"
            table, entry, end = level_table(level, per_level, start, rng, test_id)
            writer.write_table(table)
            tests.append(entry)
            samples.append(level_samples(test_id, table, start - 2, end + 2))
            start = end + 10
    pd.concat(samples, ignore_index=True).to_parquet(root / "metrics.parquet", index=False)
    summary = {
        "format": 1,
        "run_id": "20261127-000000-report-scale",
        "recipe": {
            "name": "report-scale",
            "description": f"{records:,} synthetic requests",
            "path": "synthetic",
            "document": {"name": "report-scale"},
        },
        "status": "complete",
        "verdict": "pass" if all(t["passed"] for t in tests) else "fail",
        "started_at": iso(START),
        "written_at": iso(start),
        "aifactory_version": "0.1.0",
        "environment": {"hostname": "synthetic"},
        "services": {"llm": {"kind": "llamacpp", "url": "http://10.0.0.1:8080", "node": "n0"}},
        "monitoring": {"mode": "prometheus", "scrape_interval_s": SCRAPE_S, "warnings": []},
        "tests": tests,
    }
    (root / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def rows(root: Path) -> int:
    return pq.ParquetFile(root / "records.parquet").metadata.num_rows


CHILD = """
import resource, sys, time
from pathlib import Path
from pytest_aifactory import build_report
began = time.perf_counter()
page = build_report(Path(sys.argv[1]))
seconds = time.perf_counter() - began
# VmHWM is this program's own peak; ru_maxrss would also count the parent's memory, inherited
# through fork before exec
try:
    status = Path("/proc/self/status").read_text()
    peak = int(next(l for l in status.splitlines() if l.startswith("VmHWM:")).split()[1])
except (OSError, StopIteration):
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(f"{seconds:.2f} {peak * 1024} {page}")
"""


def measure(root: Path) -> tuple[float, float, int, str]:
    """(build seconds, child wall seconds with imports, peak RSS bytes, page) of one build."""
    began = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(root)], capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - began
    if done.returncode != 0:
        sys.exit(f"build failed:\n{done.stderr[-3000:]}")
    seconds, peak, page = done.stdout.strip().splitlines()[-1].split(" ", 2)
    return float(seconds), wall, int(peak), page


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--levels", default="16,64,128,256,512", help="concurrency levels")
    parser.add_argument("--keep", type=Path, help="write the run here and keep it")
    parser.add_argument("--run", type=Path, help="measure a run written before with --keep")
    parser.add_argument("--check", action="store_true", help="exit 1 when a goal is missed")
    args = parser.parse_args(argv)
    levels = [int(v) for v in args.levels.split(",")]

    from pytest_aifactory import vega_bundle

    vega_bundle()  # one-time bundling is not what this measures: cached for the child
    with tempfile.TemporaryDirectory(prefix="report-scale-") as scratch:
        root = args.run or args.keep or Path(scratch) / "run"
        began = time.perf_counter()
        if args.run is None:
            write_run(root, args.records, levels)
        written = f"written in {time.perf_counter() - began:.1f} s" if args.run is None else "kept"
        tests = json.loads((root / "summary.json").read_text())["tests"]
        size = (root / "records.parquet").stat().st_size
        print(
            f"synthetic run: {rows(root):,} records in {len(tests)} levels, records.parquet "
            f"{size / 1e6:.0f} MB, metrics.parquet "
            f"{(root / 'metrics.parquet').stat().st_size / 1e6:.1f} MB "
            f"({written})"
        )
        seconds, wall, peak, page = measure(root)
    met_time, met_memory = seconds < GOAL_SECONDS, peak < GOAL_BYTES
    verdict = {True: "met", False: "MISSED"}
    print(
        f"build_report: {seconds:.1f} s (goal < {GOAL_SECONDS:.0f} s: {verdict[met_time]}); "
        f"{wall:.1f} s with the interpreter's start"
    )
    print(
        f"peak memory:  {peak / 2**20:.0f} MiB (goal < {GOAL_BYTES / 2**30:.0f} GiB: "
        f"{verdict[met_memory]})"
    )
    print(f"page: {page}" + ("" if args.keep or args.run else " (removed)"))
    return 1 if args.check and not (met_time and met_memory) else 0


if __name__ == "__main__":
    sys.exit(main())
