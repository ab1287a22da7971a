"""The regression gate measured: how often it cries wolf, and how small a slowdown it catches.

    python benchmarks/tools/gate_noise.py [--pairs 20] [--trials 10] [--requests 60]
                                          [--slowdowns 5 10 15 20 30 50] [--tolerance 10]

Against the token server (`pytest_aifactory/testing/token_server.py`: first event a set time
after each request arrives, moved by seeded jitter), the project's `openai` client runs pairs of
loads, one after another, each a fresh load as a run's test makes it:

- A/A pairs: both loads against the same timing. Every regression the gate reports is a false
  alarm. The same pairs are judged by the tolerance alone (what a gate without the noise test
  reports), side by side.
- A/B pairs: the second load against a server whose time to first event is slower by a given
  percentage. The share of pairs in which the gate reports the regression is its power at that
  slowdown.

Each pair is judged as `--fail-on-regression` judges two runs (`report.compare.judge_change`,
the rule of docs/metrics.md), on TTFT's p50 and p99. Prints both tables and, per statistic, the
smallest slowdown caught in at least 9 pairs of 10; asserts nothing: it is a measurement.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pytest_aifactory import (
    DatasetSpec,
    LoadSpec,
    TokenServer,
    change_interval,
    distribution,
    judge_change,
    measured,
    read_records,
    regressed,
    run_load,
    succeeded,
)

TTFT_MS = 40.0
JITTER_MS = 20.0
GAP_MS = 2.0
TOKENS = 8
CONCURRENCY = 4
METRICS = ("ttft_ms.p50", "ttft_ms.p99")
CAUGHT_SHARE = 0.9
CONFIDENCE = 0.95
"""As `regression.confidence` defaults to."""


@dataclass
class Tally:
    """Pairs judged and how many of them the gate (and the tolerance alone) called regressed."""

    pairs: int = 0
    gate: int = 0
    tolerance_alone: int = 0
    widths: list[float] = field(default_factory=list)
    """Each pair's interval width of the change, in percentage points."""


def one_load(url: str, folder: Path, index: int, requests: int) -> np.ndarray:
    """The completed requests' TTFTs of one fresh load."""
    spec = LoadSpec(
        client="gate",
        kind="openai",
        level_label=f"concurrency={CONCURRENCY}",
        mode="concurrency",
        level=CONCURRENCY,
        base_url=url,
        model="token-server",
        records_path=str(folder / f"load-{index:04d}.jsonl"),
        progress_path=str(folder / f"load-{index:04d}.progress.json"),
        requests=requests,
        warmup_requests=CONCURRENCY,
        timeout_s=60.0,
        dataset=DatasetSpec(input_tokens=8, output_tokens=TOKENS),
    )
    with contextlib.redirect_stderr(io.StringIO()):  # the note on estimated prompt lengths
        run_load(spec)
    rows = measured(read_records([spec.records_path]))
    done = rows[succeeded(rows).to_numpy()]
    values: np.ndarray = distribution(done, "ttft_ms")
    return values


def statistic(values: np.ndarray, metric: str) -> float:
    return float(np.percentile(values, {"p50": 50.0, "p99": 99.0}[metric.partition(".")[2]]))


def judge(tally: Tally, metric: str, tolerance: float, a: np.ndarray, b: np.ndarray) -> None:
    baseline, value = statistic(a, metric), statistic(b, metric)
    outcome, interval = judge_change(
        metric, tolerance, baseline, value, lambda: a, lambda: b, CONFIDENCE
    )
    tally.pairs += 1
    tally.gate += outcome in ("regressed", "tolerance alone")
    tally.tolerance_alone += regressed(metric, baseline, value, tolerance)
    spread = interval or change_interval(a, b, metric.partition(".")[2], CONFIDENCE)
    if spread is not None:
        tally.widths.append((spread.high - spread.low) * 100.0)


def measure(args: argparse.Namespace) -> tuple[dict[str, Tally], dict[float, dict[str, Tally]]]:
    tolerance = args.tolerance / 100.0
    same = {metric: Tally() for metric in METRICS}
    slower: dict[float, dict[str, Tally]] = {
        s: {metric: Tally() for metric in METRICS} for s in args.slowdowns
    }
    server = TokenServer(ttft_ms=TTFT_MS, jitter_ms=JITTER_MS, gap_ms=GAP_MS, tokens=TOKENS)
    with tempfile.TemporaryDirectory() as scratch, server:
        folder = Path(scratch)
        loads = 0

        def load() -> np.ndarray:
            nonlocal loads
            loads += 1
            return one_load(server.url, folder, loads, args.requests)

        for pair in range(args.pairs):
            a, b = load(), load()
            for metric in METRICS:
                judge(same[metric], metric, tolerance, a, b)
            print(f"A/A pair {pair + 1}/{args.pairs} done", flush=True)
        for slowdown in args.slowdowns:
            for _trial in range(args.trials):
                server.configure(ttft_ms=TTFT_MS)
                a = load()
                server.configure(ttft_ms=TTFT_MS * (1.0 + slowdown / 100.0))
                b = load()
                for metric in METRICS:
                    judge(slower[slowdown][metric], metric, tolerance, a, b)
            print(f"slowdown {slowdown:g}%: {args.trials} pairs done", flush=True)
    return same, slower


def report(
    args: argparse.Namespace, same: dict[str, Tally], slower: dict[float, dict[str, Tally]]
) -> None:
    print()
    print(
        f"token server: TTFT {TTFT_MS:g} ms ± {JITTER_MS:g} ms jitter; loads of {args.requests} "
        f"requests at concurrency {CONCURRENCY}; tolerance {args.tolerance:g}%, "
        f"{CONFIDENCE * 100:g}% intervals"
    )
    print()
    print("A/A pairs (same setup): false alarms")
    print(
        f"{'metric':<14}{'pairs':>6}{'gate':>8}{'tolerance alone':>18}{'median interval width':>24}"
    )
    for metric, tally in same.items():
        width = f"{np.median(tally.widths):.1f} pts" if tally.widths else "-"
        print(f"{metric:<14}{tally.pairs:>6}{tally.gate:>8}{tally.tolerance_alone:>18}{width:>24}")
    print()
    print(f"A/B pairs (TTFT slower by ...): regressions caught of {args.trials}")
    print(f"{'slowdown':<10}" + "".join(f"{m:>14}" for m in METRICS))
    for slowdown, tallies in slower.items():
        print(f"{slowdown:>7g}%  " + "".join(f"{tallies[m].gate:>14}" for m in METRICS))
    print()
    for metric in METRICS:
        caught = [
            s
            for s, tallies in slower.items()
            if tallies[metric].gate >= CAUGHT_SHARE * tallies[metric].pairs
        ]
        smallest = f"{min(caught):g}%" if caught else "none of those tried"
        print(f"{metric}: smallest slowdown caught in at least 9 of 10 pairs: {smallest}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--pairs", type=int, default=20, help="A/A pairs (default 20)")
    parser.add_argument("--trials", type=int, default=10, help="A/B pairs per slowdown (10)")
    parser.add_argument("--requests", type=int, default=60, help="requests per load (60)")
    parser.add_argument(
        "--slowdowns", type=float, nargs="+", default=[5.0, 10.0, 15.0, 20.0, 30.0, 50.0]
    )
    parser.add_argument("--tolerance", type=float, default=10.0, help="percent (10)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    same, slower = measure(args)
    report(args, same, slower)
    print(f"\n({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
