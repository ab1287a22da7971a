"""What uvloop and orjson buy the client: its CPU seconds per 1000 SSE events with uvloop or the
standard asyncio loop, and with orjson or the standard json parser, side by side in one run
against the same token server.

    python benchmarks/tools/client_overhead.py [--seconds 8] [--streams 16] [--gap-ms 2]

The client picks both by import (runner.py `_loop_factory`: uvloop when it imports; openai.py:
orjson when it imports), so each variant runs in a child process that blocks the import it must
not use (`sys.modules[name] = None` makes `import name` raise ImportError) before importing the
client. The CPU is the client's own self-measurement over its measured phase (`*.client.json`
from `pytest_aifactory.loadgen.selfcheck`: user + system seconds, content events). Variants are
interleaved and repeated so that drift of a shared machine hits them all alike; the median of
the repeats is reported. Prints numbers, asserts nothing: it is a measurement.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

VARIANTS: dict[str, tuple[str, ...]] = {
    "uvloop+orjson": (),
    "asyncio+orjson": ("uvloop",),
    "uvloop+json": ("orjson",),
    "asyncio+json": ("uvloop", "orjson"),
}
"""Variant -> the modules its child process blocks."""
BASELINE = "uvloop+orjson"


def child(url: str, block: list[str], streams: int, tokens: int, seconds: float) -> None:
    """One load in this process with `block` unimportable; prints its self-measurement."""
    for name in block:
        sys.modules[name] = None  # type: ignore[assignment]  # import raises ImportError
    # only now: the client must find the blocked modules unimportable
    from pytest_aifactory import (
        DatasetSpec,
        LoadSpec,
        client_stats_path,
        read_client_stats,
        run_load,
    )

    with tempfile.TemporaryDirectory(prefix="overhead-") as folder:
        spec = LoadSpec(
            client="overhead",
            kind="openai",
            level_label=f"concurrency={streams}",
            mode="concurrency",
            level=streams,
            base_url=url,
            model="token-server",
            records_path=str(Path(folder) / "p0000.jsonl"),
            progress_path=str(Path(folder) / "p0000.progress.json"),
            duration_s=seconds,
            warmup_requests=streams,
            timeout_s=60.0,
            dataset=DatasetSpec(input_tokens=16, output_tokens=tokens),
        )
        outcome = run_load(spec)
        stats = read_client_stats([client_stats_path(spec.records_path)])[0]
    # what the client parsed events with: orjson when it could import it, else the standard json
    stats["parser"] = "orjson.loads" if sys.modules.get("orjson") is not None else "json.loads"
    stats["failed"] = outcome["failed"]
    print(json.dumps(stats))


def measure(url: str, variant: str, streams: int, tokens: int, seconds: float) -> dict[str, Any]:
    args = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        url,
        "--block",
        ",".join(VARIANTS[variant]),
        "--streams",
        str(streams),
        "--tokens",
        str(tokens),
        "--seconds",
        str(seconds),
    ]
    done = subprocess.run(args, capture_output=True, text=True, timeout=seconds * 4 + 60)
    if done.returncode != 0:
        raise RuntimeError(f"{variant} failed: {done.stderr[-2000:]}")
    stats = json.loads(done.stdout.strip().splitlines()[-1])
    stats["cpu_ms_per_1000_events"] = 1e6 * stats["cpu_s"] / stats["events"]
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--gap-ms", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--block", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        block = [name for name in args.block.split(",") if name]
        child(args.child, block, args.streams, args.tokens, args.seconds)
        return

    from pytest_aifactory import TokenServer

    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in VARIANTS}
    with TokenServer(tokens=args.tokens, gap_ms=args.gap_ms) as server:
        print(
            f"token server at {server.url}: {args.tokens} events per answer, {args.gap_ms:g} ms "
            f"apart; {args.streams} streams, {args.seconds:g} s per run, {args.repeats} repeats"
        )
        for repeat in range(args.repeats):
            for name in VARIANTS:
                stats = measure(server.url, name, args.streams, args.tokens, args.seconds)
                runs[name].append(stats)
                print(
                    f"  #{repeat + 1} {name:15} {stats['event_loop']:28} {stats['parser']:14} "
                    f"{stats['cpu_ms_per_1000_events']:7.1f} ms CPU/1000 events, "
                    f"{stats['events_per_s']:7.0f} events/s, cpu {stats['cpu_percent']:5.1f}%, "
                    f"lag p99 {stats['loop_lag_ms']['p99']:.2f} ms, failed {stats['failed']}",
                    flush=True,
                )
    cost = {
        name: statistics.median(r["cpu_ms_per_1000_events"] for r in rows)
        for name, rows in runs.items()
    }
    rate = {name: statistics.median(r["events_per_s"] for r in rows) for name, rows in runs.items()}
    print()
    print(f"{'variant':16}{'CPU ms / 1000 events':>22}{'events/s':>10}{'vs ' + BASELINE:>20}")
    for name in VARIANTS:
        ratio = cost[name] / cost[BASELINE]
        print(f"{name:16}{cost[name]:22.1f}{rate[name]:10.0f}{ratio:19.2f}x")
    print(
        f"standard loop / uvloop (orjson): {cost['asyncio+orjson'] / cost['uvloop+orjson']:.2f}x;"
        f" json / orjson (uvloop): {cost['uvloop+json'] / cost['uvloop+orjson']:.2f}x;"
        f" both: {cost['asyncio+json'] / cost['uvloop+orjson']:.2f}x"
    )


if __name__ == "__main__":
    main()
