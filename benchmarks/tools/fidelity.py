"""How far a client's timings are from the token server's truth, request by request; and, run as a
script, that error for three clients side by side against one server in one run.

    python benchmarks/tools/fidelity.py [--streams 32 64] [--requests 256] [--rounds 2]

The token server (`pytest_aifactory/testing/token_server.py`) keeps, for every request, the
instant its request arrived and the instant it handed each content event to the kernel, on the
machine's monotonic clock; each client keeps its own timings. Requests are matched by
`X-Request-Id` (the `openai` kind sends `<process>-<request_id>`, vLLM's benchmark
`<prefix><index>`, the plain client here `plain-<index>`). Per request:

- TTFT error: the client's TTFT minus the true one (first event sent - request arrived). It holds
  everything the client adds: building and writing the request, any connect, the server's wake-up
  on arrival, and the wait between the event reaching the socket and the client timing it;
- ITL error: each client gap minus the server's gap between the same two events;
- TPOT error: the client's TPOT minus (last send - first send) / (events - 1).

A positive error is time the client added; all are in milliseconds.

The script starts the token server (first event 80 ms after a request arrives, one event every
15 ms, 24 events: a small LLM's timing), then for each number of streams and round runs, one
after another: a plain aiohttp client (one shared session, pooled connections, lines read as
vLLM's benchmark reads them, on the same event loop kind as ours), vLLM's `bench serve` (from the
environment `scripts/install-vllm.sh` makes; skipped when it is not there) and the project's
`openai` client (`run_load`, records and progress written as in a run). Each runs in its own
process and warms up with one request per stream first (vLLM's benchmark sends only its single
test request, so its first requests connect inside their TTFT). Prints each client's errors and
ours against the plain client's; asserts nothing: it is a measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[2]

TTFT_MS = 80.0
GAP_MS = 15.0
TOKENS = 24
PROMPT_WORDS = 8


@dataclass
class Fidelity:
    ttft_ms: np.ndarray
    itl_ms: np.ndarray
    tpot_ms: np.ndarray
    matched: int
    unmatched: int

    def p99_abs(self) -> dict[str, float]:
        def p99(values: np.ndarray) -> float:
            return float(np.percentile(np.abs(values), 99)) if values.size else float("nan")

        return {name: p99(getattr(self, name)) for name in ("ttft_ms", "itl_ms", "tpot_ms")}

    def describe(self) -> dict[str, Any]:
        def stats(values: np.ndarray) -> dict[str, float]:
            if not values.size:
                return {}
            p50, p99 = np.percentile(values, [50, 99])
            return {
                "p50": float(p50),
                "p99": float(p99),
                "p99_abs": float(np.percentile(np.abs(values), 99)),
                "max_abs": float(np.abs(values).max()),
            }

        return {
            "matched": self.matched,
            "unmatched": self.unmatched,
            "ttft_ms": stats(self.ttft_ms),
            "itl_ms": stats(self.itl_ms),
            "tpot_ms": stats(self.tpot_ms),
        }


@dataclass
class Measured:
    """One request as a client timed it (milliseconds)."""

    request_id: str
    ttft_ms: float
    itl_ms: list[float]
    tpot_ms: float | None


def errors(measured: Iterable[Measured], truth: Mapping[str, Any]) -> Fidelity:
    """Each request's errors against what the server did for the same `X-Request-Id` (the
    last time it saw that id: a peer may send a test request under the id of its first)."""
    served = {t["request_id"]: t for t in truth["requests"]}
    ttft: list[float] = []
    itl: list[float] = []
    tpot: list[float] = []
    matched = unmatched = 0
    for row in measured:
        request = served.get(row.request_id)
        if request is None or not request["events_ns"]:
            unmatched += 1
            continue
        matched += 1
        sent_ns = np.asarray(request["events_ns"], dtype=np.int64)
        true_ttft = (int(sent_ns[0]) - int(request["received_ns"])) / 1e6
        ttft.append(row.ttft_ms - true_ttft)
        server_gaps = np.diff(sent_ns) / 1e6
        client_gaps = np.asarray(row.itl_ms, dtype=float)
        if len(client_gaps) == len(server_gaps):
            itl.extend((client_gaps - server_gaps).tolist())
        if len(sent_ns) > 1 and row.tpot_ms is not None and row.tpot_ms == row.tpot_ms:
            true_tpot = (int(sent_ns[-1]) - int(sent_ns[0])) / 1e6 / (len(sent_ns) - 1)
            tpot.append(row.tpot_ms - true_tpot)
    return Fidelity(
        ttft_ms=np.asarray(ttft),
        itl_ms=np.asarray(itl),
        tpot_ms=np.asarray(tpot),
        matched=matched,
        unmatched=unmatched,
    )


def measured_of(records: pd.DataFrame) -> list[Measured]:
    """The successful measured requests of the `openai` kind's records."""
    ok = records[(records["phase"] == "measure") & (records["error"] == "")]
    return [
        Measured(
            request_id=f"{row['process']}-{row['request_id']}",
            ttft_ms=float(row["ttft_ms"]),
            itl_ms=[float(gap) for gap in row["itl_ms"]],
            tpot_ms=float(row["tpot_ms"]),
        )
        for row in ok.to_dict("records")
    ]


def compare(records: pd.DataFrame, truth: Mapping[str, Any]) -> Fidelity:
    """Errors of every successful measured request of the `openai` kind's records."""
    return errors(measured_of(records), truth)


# -- a plain client ----------------------------------------------------------------------------


def _content(line: bytes) -> bool:
    """Whether an SSE line carries generated text (the check vLLM's benchmark makes)."""
    if not line.startswith(b"data:"):
        return False
    payload = line[5:].strip()
    if payload == b"[DONE]":
        return False
    try:
        choices = json.loads(payload).get("choices")
    except ValueError:
        return False
    return bool(choices) and bool(
        choices[0].get("text") or choices[0].get("delta", {}).get("content")
    )


async def plain_client(
    url: str, streams: int, requests: int, warmup: int = 0, tokens: int = TOKENS
) -> list[Measured]:
    """What anyone would write: one shared aiohttp session with pooled connections, `streams`
    workers each sending its next request when the last one ended, each response read line by
    line and timed with `perf_counter` as lines arrive."""
    import aiohttp

    body = json.dumps(
        {
            "model": "token-server",
            "prompt": " ".join(["hello"] * PROMPT_WORDS),
            "max_tokens": tokens,
            "stream": True,
            "ignore_eos": True,
        }
    ).encode()
    out: list[Measured] = []
    next_index = 0

    async def one(session: aiohttp.ClientSession, request_id: str) -> Measured | None:
        headers = {"Content-Type": "application/json", "X-Request-Id": request_id}
        events: list[int] = []
        start = time.perf_counter_ns()
        async with session.post(url + "/v1/completions", data=body, headers=headers) as response:
            async for line in response.content:
                if _content(line):
                    events.append(time.perf_counter_ns())
        if not events:
            return None
        ttft = (events[0] - start) / 1e6
        e2el = (events[-1] - start) / 1e6
        gaps = [(b - a) / 1e6 for a, b in itertools.pairwise(events)]
        tpot = (e2el - ttft) / (len(events) - 1) if len(events) > 1 else None
        return Measured(request_id, ttft, gaps, tpot)

    async def worker(session: aiohttp.ClientSession, last: int, keep: bool) -> None:
        nonlocal next_index
        while next_index < last:
            index = next_index
            next_index += 1
            done = await one(session, f"plain-{index}")
            if keep and done is not None:
                out.append(done)

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        if warmup:
            await asyncio.gather(*(worker(session, warmup, False) for _ in range(streams)))
        await asyncio.gather(*(worker(session, warmup + requests, True) for _ in range(streams)))
    return out


def run_plain_client(url: str, streams: int, requests: int, warmup: int = 0) -> list[Measured]:
    """The plain client on the event loop kind the project's client uses: uvloop where
    installed."""
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(plain_client(url, streams, requests, warmup))


# -- the project's client ----------------------------------------------------------------------


def run_ours(
    url: str, streams: int, requests: int, folder: Path, warmup: int = 0
) -> list[Measured]:
    """The `openai` kind as a run starts it (records and progress files written)."""
    from pytest_aifactory import DatasetSpec, LoadSpec, read_records, run_load

    spec = LoadSpec(
        client="fidelity",
        kind="openai",
        level_label=f"concurrency={streams}",
        mode="concurrency",
        level=streams,
        base_url=url,
        model="token-server",
        records_path=str(folder / "p0000.jsonl"),
        progress_path=str(folder / "p0000.progress.json"),
        requests=requests,
        warmup_requests=warmup,
        timeout_s=60.0,
        dataset=DatasetSpec(input_tokens=PROMPT_WORDS, output_tokens=TOKENS),
    )
    run_load(spec)
    return measured_of(read_records([spec.records_path]))


# -- vLLM's benchmark --------------------------------------------------------------------------

VLLM_BENCH = """
import argparse, sys
from vllm.benchmarks.serve import add_cli_args, main
parser = argparse.ArgumentParser()
add_cli_args(parser)
main(parser.parse_args(sys.argv[1:]))
"""
VLLM_PREFIX = "vllm-"


def run_vllm(python: str, url: str, streams: int, requests: int, folder: Path) -> list[Measured]:
    """`vllm bench serve` with `streams` in flight and its per-request detail saved."""
    from benchmarks.loadgen_ceiling import vllm_bench_args
    from pytest_aifactory import hf_model_dir

    tokenizer = hf_model_dir("smollm2-135m")
    if tokenizer is None:
        raise RuntimeError("no converted SmolLM2 tokenizer folder (run scripts/install-vllm.sh)")
    args = [
        python,
        "-c",
        VLLM_BENCH,
        *vllm_bench_args(url, tokenizer, PROMPT_WORDS, TOKENS, requests, streams),
        "--request-id-prefix",
        VLLM_PREFIX,
        "--save-result",
        "--save-detailed",
        "--result-dir",
        str(folder),
        "--result-filename",
        "vllm.json",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(args, capture_output=True, text=True, timeout=900, env=env)
    result_path = folder / "vllm.json"
    if done.returncode != 0 or not result_path.exists():
        raise RuntimeError(f"vLLM's benchmark exited {done.returncode}: {done.stderr[-1500:]}")
    result = json.loads(result_path.read_text())
    out: list[Measured] = []
    rows = zip(
        result["ttfts"], result["itls"], result["latencies"], result["output_lens"], strict=True
    )
    for index, (ttft, itl, latency, output_len) in enumerate(rows):
        if not ttft:
            continue
        tpot = (latency - ttft) * 1000 / (output_len - 1) if output_len and output_len > 1 else None
        out.append(Measured(f"{VLLM_PREFIX}{index}", ttft * 1000, [g * 1000 for g in itl], tpot))
    return out


# -- the side-by-side run ----------------------------------------------------------------------


def _child(args: argparse.Namespace) -> None:
    """One client in this process; its measurements as JSON on stdout's last line."""
    folder = Path(args.folder)
    streams = args.streams[0]
    if args.child == "plain":
        measured = run_plain_client(args.url, streams, args.requests, streams)
    else:
        measured = run_ours(args.url, streams, args.requests, folder, streams)
    print(json.dumps([m.__dict__ for m in measured]), flush=True)


def _in_child(which: str, url: str, streams: int, requests: int, folder: Path) -> list[Measured]:
    args = [sys.executable, str(Path(__file__).resolve()), "--child", which, "--url", url]
    args += ["--folder", str(folder), "--streams", str(streams), "--requests", str(requests)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=900, cwd=REPO)
    if done.returncode != 0:
        raise RuntimeError(f"{which} client exited {done.returncode}: {done.stderr[-1500:]}")
    return [Measured(**m) for m in json.loads(done.stdout.strip().splitlines()[-1])]


CLIENTS: tuple[str, ...] = ("plain", "vllm", "ours")
LABELS = {
    "plain": "plain aiohttp client (pooled)",
    "vllm": "vLLM `bench serve`",
    "ours": "pytest-aifactory `openai`",
}


def figures(fidelity: Fidelity) -> dict[str, float]:
    def pct(values: np.ndarray, q: float) -> float:
        return float(np.percentile(values, q)) if values.size else float("nan")

    return {
        "ttft_p50": pct(fidelity.ttft_ms, 50),
        "ttft_p99": pct(fidelity.ttft_ms, 99),
        "tpot_p50": pct(fidelity.tpot_ms, 50),
        "itl_p99": pct(fidelity.itl_ms, 99),
        "matched": fidelity.matched,
    }


def side_by_side(
    streams_list: list[int],
    requests: int,
    rounds: int,
    vllm: str | None,
    progress: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    from pytest_aifactory import TokenServer

    rows: list[dict[str, Any]] = []
    with (
        TokenServer(ttft_ms=TTFT_MS, gap_ms=GAP_MS, tokens=TOKENS) as server,
        tempfile.TemporaryDirectory(prefix="fidelity-") as scratch,
    ):
        progress(
            f"token server at {server.url}: first event {TTFT_MS:g} ms, then every "
            f"{GAP_MS:g} ms, {TOKENS} events"
        )
        for round_index in range(1, rounds + 1):
            for streams in streams_list:
                for client in CLIENTS:
                    if client == "vllm" and vllm is None:
                        continue
                    folder = Path(scratch) / f"{client}-{streams}-{round_index}"
                    folder.mkdir()
                    server.reset()
                    if client == "vllm":
                        assert vllm is not None
                        measured = run_vllm(vllm, server.url, streams, requests, folder)
                    else:
                        measured = _in_child(client, server.url, streams, requests, folder)
                    found = figures(errors(measured, server.truth()))
                    late = server.stats()["late_ms_p99"]
                    row = {"round": round_index, "streams": streams, "client": client, **found}
                    row["server_late_p99"] = late
                    rows.append(row)
                    progress(json.dumps(row))
    return rows


def _fmt(value: float) -> str:
    return f"{value:+.2f}" if value == value else "-"


def print_table(rows: list[dict[str, Any]]) -> None:
    print("\nms off the truth (round 1 / round 2 ...):")
    print("| streams | client | TTFT p50 | TTFT p99 | TPOT p50 | ITL p99 |")
    print("|---|---|---|---|---|---|")
    for streams in sorted({r["streams"] for r in rows}):
        for client in CLIENTS:
            mine = [r for r in rows if r["streams"] == streams and r["client"] == client]
            if not mine:
                continue
            cells = [
                " / ".join(_fmt(r[key]) for r in mine)
                for key in ("ttft_p50", "ttft_p99", "tpot_p50", "itl_p99")
            ]
            print(f"| {streams} | {LABELS[client]} | " + " | ".join(cells) + " |")
    print("\nours against the plain client in the same round (must: TTFT p50 within 1 ms, TTFT p99")
    print("at most 1.5x + 2 ms, TPOT p50 error under 0.1 ms):")
    for row in rows:
        if row["client"] != "ours":
            continue
        plain = next(
            r
            for r in rows
            if r["client"] == "plain"
            and r["round"] == row["round"]
            and r["streams"] == row["streams"]
        )
        p50_gap = row["ttft_p50"] - plain["ttft_p50"]
        p99_bound = 1.5 * plain["ttft_p99"] + 2.0
        print(
            f"  round {row['round']}, {row['streams']} streams: TTFT p50 {p50_gap:+.2f} ms "
            f"vs plain, TTFT p99 {row['ttft_p99']:.2f} ms (bound {p99_bound:.2f}), "
            f"TPOT p50 {row['tpot_p50']:+.3f} ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-vllm", action="store_true", help="leave vLLM's benchmark out")
    parser.add_argument("--child", choices=("plain", "ours"), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    from benchmarks.loadgen_ceiling import vllm_bench_python

    vllm = None if args.no_vllm else vllm_bench_python(None)
    if vllm is None and not args.no_vllm:
        print("vLLM's benchmark not run: no vLLM environment (scripts/install-vllm.sh)")
    rows = side_by_side(args.streams, args.requests, args.rounds, vllm)
    print_table(rows)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    with contextlib.suppress(KeyboardInterrupt):
        main()
