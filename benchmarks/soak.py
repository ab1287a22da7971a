"""Soak: a long steady load from one client process, to show that the client's memory does not
grow and its achieved rate does not drift over time.

    python benchmarks/soak.py [--minutes 10] [--rate 50] [--ttft-ms 20 --gap-ms 5]

The client (`run_load`, the same code a client job runs) sends Poisson arrivals at a fixed
rate to the project's token-timing server for the whole duration, in its own process; this
script samples that process's resident memory every few seconds. At the end it prints, minute
by minute, the achieved rate and the client's memory, then the two verdicts: memory growth
from the second minute (after warm-up: caches, connection pool, allocator arenas) to the last,
and the drift of the achieved rate (first minute vs last, and the slope of a straight-line fit
over all minutes). It asserts nothing (a measurement, on a shared machine); the numbers are the
result. `pytest -m soak tests/e2e/test_soak.py` runs a short version of it.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pytest_aifactory import (  # noqa: E402
    DatasetSpec,
    LoadSpec,
    TokenServer,
    load_spec,
    read_records,
    run_load,
)

SAMPLE_EVERY_S = 2.0


def soak_spec(folder: Path, url: str, rate: float, seconds: float) -> LoadSpec:
    return load_spec(
        folder,
        client="soak",
        mode="rate",
        level=rate,
        base_url=url,
        model="token-server",
        records_path=str(folder / "p0000.jsonl"),
        progress_path=str(folder / "p0000.progress.json"),
        duration_s=seconds,
        requests=None,
        timeout_s=30.0,
        warmup_requests=10,
        dataset=DatasetSpec(input_tokens=16, output_tokens=16),
    )


def soak(minutes: float, rate: float, timing: dict[str, Any]) -> dict[str, Any]:
    """Run the load, sampling the client's RSS; returns per-minute rates and memory."""
    seconds = minutes * 60.0
    folder = Path(tempfile.mkdtemp(prefix="aifactory-soak-"))
    with TokenServer(**timing) as server:
        spec = soak_spec(folder, server.url, rate, seconds)
        client = multiprocessing.get_context("spawn").Process(target=run_load, args=(spec,))
        client.start()
        assert client.pid is not None
        proc = psutil.Process(client.pid)
        started = time.monotonic()
        memory: list[tuple[float, float]] = []
        while client.is_alive():
            try:
                memory.append((time.monotonic() - started, proc.memory_info().rss / 2**20))
            except psutil.Error:
                break
            time.sleep(SAMPLE_EVERY_S)
        client.join()
    records = read_records([spec.records_path])
    rows = records[records["phase"] == "measure"]
    t0 = float(rows["send_ts"].min())
    minute = ((rows["send_ts"] - t0) // 60).astype(int)
    whole = int(seconds // 60)
    sent = minute.value_counts().reindex(range(whole), fill_value=0)
    mem = np.array(memory)
    per_minute = []
    for m in range(whole):
        in_minute = mem[(mem[:, 0] >= m * 60) & (mem[:, 0] < (m + 1) * 60), 1] if len(mem) else []
        per_minute.append(
            {
                "minute": m + 1,
                "achieved_rate": float(sent[m]) / 60.0,
                "rss_mib": float(np.median(in_minute)) if len(in_minute) else float("nan"),
            }
        )
    failed = int((rows["error"] != "").sum())
    return {"per_minute": per_minute, "sent": len(rows), "failed": failed, "folder": folder}


def verdicts(per_minute: list[dict[str, Any]], rate: float) -> dict[str, float]:
    rates = np.array([m["achieved_rate"] for m in per_minute])
    rss = np.array([m["rss_mib"] for m in per_minute])
    settled = rss[1:] if len(rss) > 2 else rss  # the first minute warms up
    slope = float(np.polyfit(np.arange(len(rates)), rates, 1)[0]) if len(rates) > 1 else 0.0
    return {
        "rss_first_mib": float(settled[0]),
        "rss_last_mib": float(settled[-1]),
        "rss_growth_percent": float((settled[-1] - settled[0]) / settled[0] * 100),
        "rate_first": float(rates[0]),
        "rate_last": float(rates[-1]),
        "rate_drift_percent": float((rates[-1] - rates[0]) / rate * 100),
        "rate_slope_per_minute": slope,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=50.0, help="requests per second")
    parser.add_argument("--ttft-ms", type=float, default=20.0)
    parser.add_argument("--gap-ms", type=float, default=5.0)
    args = parser.parse_args(argv)
    if args.minutes < 1:
        parser.error("--minutes must be at least 1 (rates are counted per minute)")
    print(
        f"soak: {args.minutes:g} min of Poisson arrivals at {args.rate:g} req/s, "
        f"token server TTFT {args.ttft_ms:g} ms, gap {args.gap_ms:g} ms",
        flush=True,
    )
    result = soak(args.minutes, args.rate, {"ttft_ms": args.ttft_ms, "gap_ms": args.gap_ms})
    print(f"{'minute':>6}  {'achieved req/s':>14}  {'client RSS (MiB)':>16}")
    for row in result["per_minute"]:
        print(f"{row['minute']:>6}  {row['achieved_rate']:>14.2f}  {row['rss_mib']:>16.1f}")
    v = verdicts(result["per_minute"], args.rate)
    print(f"requests: {result['sent']} sent, {result['failed']} failed")
    print(
        f"client memory: {v['rss_first_mib']:.1f} MiB (minute 2) -> {v['rss_last_mib']:.1f} MiB "
        f"(last minute): {v['rss_growth_percent']:+.1f}%"
    )
    print(
        f"achieved rate: {v['rate_first']:.2f} -> {v['rate_last']:.2f} req/s "
        f"({v['rate_drift_percent']:+.1f}% of the requested rate; "
        f"fitted slope {v['rate_slope_per_minute']:+.3f} req/s per minute)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
