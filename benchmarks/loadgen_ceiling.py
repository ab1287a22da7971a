"""The load generator's own ceiling: how fast one client process can go against a server that
costs nothing, and how that compares with GuideLLM on the same server in the same run.

    python benchmarks/loadgen_ceiling.py [--guidellm /tmp/guidellm-venv/bin/guidellm]

Against the zero-delay token server (pytest_aifactory/testing/token_server.py) it runs the `openai`
client at rising Poisson rates and reports, per rate, the achieved request rate, content events
per second, queue_ms p99 and the client's CPU; the ceiling is the highest rate still achieved
within 1% with queue_ms p99 under 1 ms. Then the same with 2 processes. Then GuideLLM's
throughput profile (as many requests as it can, up to 128 in flight) with 1 and with 2 worker
processes against the same server, its achieved rate read from its JSON report, if it is
installed (`--guidellm`, or `$GUIDELLM`, or `guidellm` on PATH; install it in its own virtual
environment: `python -m venv /tmp/guidellm-venv && /tmp/guidellm-venv/bin/pip install
guidellm gguf`). GuideLLM 0.8 builds its synthetic prompts with a Hugging Face tokenizer; with no
hub to download one from, it reads SmolLM2's tokenizer out of the GGUF file (which needs the
`gguf` package in GuideLLM's environment). Then vLLM's own serving benchmark (`vllm bench
serve`, from the environment `scripts/install-vllm.sh` makes, with the converted SmolLM2's
tokenizer) at an unlimited rate. Prints numbers, asserts nothing: it is a measurement.
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
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pytest_aifactory import (  # noqa: E402
    DatasetSpec,
    LoadSpec,
    TokenServer,
    client_health,
    client_stats_path,
    hf_model_dir,
    installed_python,
    load_spec,
    measured,
    read_client_stats,
    read_records,
    resolve_gguf,
    run_load,
    summarize_llm,
)

OUTPUT_TOKENS = 32
INPUT_TOKENS = 16
GUIDELLM_CONCURRENCY = 128
"""In-flight cap of GuideLLM's throughput profile (0.8 requires one); far above what a
zero-delay server keeps in flight, so it does not limit the rate."""


# -- our client --------------------------------------------------------------------------------


def _spec(
    folder: Path,
    url: str,
    rate: float,
    process: int,
    processes: int,
    seconds: float,
    in_flight: int | None = None,
) -> LoadSpec:
    """A Poisson rate, or, with `in_flight`, a closed loop keeping that many requests in flight
    (as the peers' throughput modes do)."""
    return load_spec(
        folder,
        start_at=time.time() + 5.0 if processes > 1 else None,
        client="ceiling",
        level_label=f"rate={rate:g}" if in_flight is None else f"concurrency={in_flight}",
        mode="rate" if in_flight is None else "concurrency",
        level=rate / processes if in_flight is None else in_flight // processes,
        base_url=url,
        model="token-server",
        records_path=str(folder / f"p{process:04d}.jsonl"),
        progress_path=str(folder / f"p{process:04d}.progress.json"),
        duration_s=seconds,
        seed=process,
        process=process,
        processes=processes,
        timeout_s=30.0,
        warmup_requests=20,
        dataset=DatasetSpec(input_tokens=INPUT_TOKENS, output_tokens=OUTPUT_TOKENS),
    )


def ours(
    url: str, rate: float, processes: int, seconds: float, in_flight: int | None = None
) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="ceiling-"))
    specs = [_spec(folder, url, rate, p, processes, seconds, in_flight) for p in range(processes)]
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
    events = float(measured(records)["content_events"].sum())
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


def ceiling(url: str, processes: int, seconds: float, start: float) -> dict[str, Any]:
    """Rates rise by 1.5x while each is still achieved within 1% with nothing failed.

    Returns {"strict": the highest such rate whose queue_ms p99 also stayed under 1 ms,
    "kept_up": the highest such rate whatever its queue_ms, "broke": the first rate that was
    not achieved}; a value is None when no rate qualified. On a shared machine queue_ms p99
    passes 1 ms long before the client runs out of CPU (it is not scheduled in time), so the
    strict ceiling says how precise the schedule is and `kept_up` how fast the client can go.
    """
    out: dict[str, Any] = {"strict": None, "kept_up": None, "broke": None}
    rate = start
    while rate < 100_000:
        row = ours(url, rate, processes, seconds)
        print(f"  {processes} proc rate {rate:7.0f}: {json.dumps(row)}", flush=True)
        kept_up = (
            row["achieved"] is not None
            and abs(row["achieved"] - rate) <= 0.01 * rate
            and not row["failed"]
        )
        if not kept_up:
            out["broke"] = row
            return out
        out["kept_up"] = row
        if (row["queue_ms_p99"] or 0) < 1.0:
            out["strict"] = row
        rate *= 1.5
    return out


# -- GuideLLM ----------------------------------------------------------------------------------


def find_tool(option: str | None, env: str, name: str) -> str | None:
    return option or os.environ.get(env) or shutil.which(name)


def gguf_tokenizer(model: Path) -> dict[str, Any]:
    """GuideLLM's tokenizer setting that reads a GGUF file's own tokenizer (no hub needed)."""
    return {"kind": "hf_auto", "model": str(model.parent), "load_kwargs": {"gguf_file": model.name}}


def smollm2_model() -> Path:
    return resolve_gguf("smollm2-135m", "llamacpp")


def guidellm_unusable(tool: str) -> str | None:
    """Why GuideLLM cannot run here, or None: it must start, and its environment must read GGUF
    tokenizers (transformers needs the `gguf` package for that)."""
    if not Path(tool).exists() and shutil.which(tool) is None:
        return f"{tool} does not exist"
    python = Path(tool).resolve().parent / "python"
    if python.exists():
        check = subprocess.run(
            [str(python), "-c", "import gguf, transformers"], capture_output=True, text=True
        )
        if check.returncode != 0:
            last = (check.stderr.strip().splitlines() or ["?"])[-1]
            return (
                f"GuideLLM's environment cannot read the tokenizer out of a GGUF file ({last}); "
                f"install it there: {python.parent / 'pip'} install gguf"
            )
    return None


def run_guidellm(
    tool: str, spec: dict[str, Any], workers: int, timeout_s: float = 600.0
) -> tuple[dict[str, Any] | None, str]:
    """Run GuideLLM 0.8 on a scenario `spec` (its `spec` section, without outputs) with at most
    `workers` worker processes; (its JSON report, "") or (None, why it failed)."""
    folder = Path(tempfile.mkdtemp(prefix="guidellm-"))
    report = folder / "report.json"
    scenario = folder / "scenario.json"
    spec = {**spec, "outputs": [{"kind": "json", "path": str(report)}]}
    scenario.write_text(json.dumps({"spec": spec}), encoding="utf-8")
    env = {
        **os.environ,
        "GUIDELLM__MAX_WORKER_PROCESSES": str(workers),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    args = [tool, "run", "--scenario", str(scenario), "--disable-console-interactive"]
    try:
        done = subprocess.run(
            args, capture_output=True, text=True, timeout=timeout_s, cwd=folder, env=env
        )
    except subprocess.TimeoutExpired:
        shutil.rmtree(folder, ignore_errors=True)
        return None, f"guidellm did not finish within {timeout_s:g} s"
    try:
        if done.returncode != 0 or not report.exists():
            tail = (done.stderr or done.stdout)[-1500:]
            return None, f"guidellm exited {done.returncode}: {tail}"
        return json.loads(report.read_text(encoding="utf-8")), ""
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def guidellm_figures(report: dict[str, Any]) -> dict[str, Any]:
    """The figures of the first benchmark of a GuideLLM report. `achieved` is its successful
    requests over its measured window (the report's `duration`), the same kind of number as our
    completed/s; `rps_mean` is its own time-averaged requests/s."""
    bench = report["benchmarks"][0]
    metrics = bench["metrics"]
    made = bench["scheduler_metrics"]["requests_made"]
    duration = float(bench["duration"])

    def stat(name: str, key: str) -> float | None:
        value = metrics[name]["successful"].get(key)
        if value is None and key.startswith("p"):
            value = metrics[name]["successful"]["percentiles"].get(key)
        return None if value is None else float(value)

    output_tokens = metrics["output_token_count"]["successful"]["total_sum"]
    return {
        "successful": made["successful"],
        "errored": made["errored"],
        "incomplete": made["incomplete"],
        "duration_s": duration,
        "achieved": made["successful"] / duration if duration > 0 else None,
        "rps_mean": stat("requests_per_second", "mean"),
        "ttft_ms_p50": stat("time_to_first_token_ms", "median"),
        "itl_ms_p50": stat("inter_token_latency_ms", "median"),
        "output_tokens_per_s_mean": stat("output_tokens_per_second", "mean"),
        "output_tokens_per_s_window": output_tokens / duration if duration > 0 else None,
    }


def ceiling_scenario(url: str, seconds: float) -> dict[str, Any]:
    return {
        "backend": {
            "kind": "openai_http",
            "target": url,
            "request_format": "/v1/completions",
            "http2": False,
        },
        "profile": {"kind": "throughput", "max_concurrency": GUIDELLM_CONCURRENCY},
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


# -- vLLM's serving benchmark --------------------------------------------------------------------

VLLM_BENCH = """
import argparse, json, sys
from vllm.benchmarks.serve import add_cli_args, main
parser = argparse.ArgumentParser()
add_cli_args(parser)
result = main(parser.parse_args(sys.argv[1:]))
keep = ("completed", "failed", "duration", "request_throughput", "output_throughput",
        "median_ttft_ms", "p99_ttft_ms", "median_itl_ms")
print("AIFACTORY-RESULT " + json.dumps({k: result.get(k) for k in keep}), flush=True)
"""


def vllm_bench_python(option: str | None) -> str | None:
    """The Python of an environment with vLLM (its CPU build, as `scripts/install-vllm.sh`
    leaves it), or None."""
    if option:
        return option
    found = installed_python()
    return str(found) if found else None


def vllm_common_args(
    url: str, model: str, tokenizer: Path, prompts: int, in_flight: int
) -> list[str]:
    """`vllm bench serve` options every run here shares: the server's completions API,
    `prompts` requests at an unlimited request rate with at most `in_flight` in flight, each
    generating all the tokens it asks for (EOS ignored)."""
    return [
        *("--backend", "openai", "--base-url", url, "--endpoint", "/v1/completions"),
        *("--model", model, "--tokenizer", str(tokenizer)),
        *("--ignore-eos", "--num-prompts", str(prompts), "--request-rate", "inf"),
        *("--max-concurrency", str(in_flight), "--disable-tqdm"),
    ]


def vllm_bench_args(
    url: str, tokenizer: Path, input_len: int, output_len: int, prompts: int, in_flight: int
) -> list[str]:
    """`vllm bench serve` options for random prompts to the token server's completions API at
    an unlimited request rate with at most `in_flight` requests in flight."""
    return [
        *vllm_common_args(url, "token-server", tokenizer, prompts, in_flight),
        *("--dataset-name", "random", "--random-input-len", str(input_len)),
        *("--random-output-len", str(output_len)),
    ]


def vllm_sharegpt_args(
    url: str, model: str, tokenizer: Path, sample: Path, prompts: int, seed: int, in_flight: int
) -> list[str]:
    """`vllm bench serve` options for the conversations of a ShareGPT file, `prompts` of them
    shuffled by `seed`, each asking for its reply's token count."""
    return [
        *vllm_common_args(url, model, tokenizer, prompts, in_flight),
        *("--dataset-name", "sharegpt", "--dataset-path", str(sample), "--seed", str(seed)),
    ]


VLLM_SERVE = """
import argparse, sys
from vllm.benchmarks.serve import add_cli_args, main
parser = argparse.ArgumentParser()
add_cli_args(parser)
main(parser.parse_args(sys.argv[1:]))
"""


def run_vllm_saved(
    python: str, args: list[str], timeout_s: float = 900.0
) -> tuple[dict[str, Any] | None, str]:
    """vLLM's serving benchmark (what `vllm bench serve` runs) with `args`; (the result it saves
    with `--save-result --save-detailed`: totals, medians and per-request lists, "") or (None,
    why it failed)."""
    folder = Path(tempfile.mkdtemp(prefix="vllm-bench-"))
    saved = ["--save-result", "--save-detailed", "--result-dir", str(folder)]
    command = [python, "-c", VLLM_SERVE, *args, *saved, "--result-filename", "result.json"]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
    }
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=env)
        result = folder / "result.json"
        if done.returncode != 0 or not result.exists():
            tail = (done.stderr or done.stdout)[-1500:]
            return None, f"vLLM's benchmark exited {done.returncode}: {tail}"
        return json.loads(result.read_text(encoding="utf-8")), ""
    except subprocess.TimeoutExpired:
        return None, f"vLLM's benchmark did not finish within {timeout_s:g} s"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run_vllm_bench(
    python: str, url: str, prompts: int, timeout_s: float = 600.0
) -> tuple[dict[str, Any] | None, str]:
    """vLLM's serving benchmark (`vllm bench serve`) at an unlimited request rate with at most
    GUIDELLM_CONCURRENCY in flight: as many requests as one process of it can drive."""
    tokenizer = hf_model_dir("smollm2-135m")
    if tokenizer is None:
        return None, "no converted SmolLM2 tokenizer folder (run scripts/install-vllm.sh)"
    args = [
        python,
        "-c",
        VLLM_BENCH,
        *vllm_bench_args(
            url, tokenizer, INPUT_TOKENS, OUTPUT_TOKENS, prompts, GUIDELLM_CONCURRENCY
        ),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return None, f"vLLM's benchmark did not finish within {timeout_s:g} s"
    for line in done.stdout.splitlines():
        if line.startswith("AIFACTORY-RESULT "):
            result = json.loads(line.split(" ", 1)[1])
            result["achieved"] = result["request_throughput"]
            result["events_per_s"] = result["achieved"] * OUTPUT_TOKENS
            return result, ""
    tail = (done.stderr or done.stdout)[-1500:]
    return None, f"vLLM's benchmark exited {done.returncode}: {tail}"


# -- main --------------------------------------------------------------------------------------


def _fmt(value: Any, width: int = 9, digits: int = 1) -> str:
    if value is None:
        return f"{'-':>{width}}"
    return f"{value:>{width}.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--start-rate", type=float, default=100.0)
    parser.add_argument("--guidellm", default=None, help="the guidellm executable")
    parser.add_argument("--guidellm-seconds", type=float, default=10.0)
    parser.add_argument(
        "--vllm-python",
        default=None,
        help="Python of an environment with vLLM (default: the one scripts/install-vllm.sh made)",
    )
    parser.add_argument("--vllm-prompts", type=int, default=4000)
    args = parser.parse_args()
    rows: list[tuple[str, int, dict[str, Any]]] = []
    with TokenServer(tokens=OUTPUT_TOKENS) as server:
        print(f"token server at {server.url} (zero delay, {OUTPUT_TOKENS} events per answer)")
        for processes in (1, 2):
            server.reset()
            rows.append(
                ("ours", processes, ceiling(server.url, processes, args.seconds, args.start_rate))
            )
            print(f"  server self-check: {json.dumps(server.stats())}", flush=True)
        for processes in (1, 2):
            # the peers' way: as many requests as possible, GUIDELLM_CONCURRENCY in flight
            server.reset()
            flat_out = ours(server.url, 0.0, processes, 10.0, in_flight=GUIDELLM_CONCURRENCY)
            flat_out["achieved"] = flat_out["completed_per_s"]
            print(
                f"  ours {processes} proc, {GUIDELLM_CONCURRENCY} in flight: {json.dumps(flat_out)}"
            )
            rows.append(("ours-128", processes, flat_out))
        tool = find_tool(args.guidellm, "GUIDELLM", "guidellm")
        why = (
            "GuideLLM not found: pass --guidellm or set GUIDELLM (see the docstring)"
            if tool is None
            else guidellm_unusable(tool)
        )
        if why is None:
            assert tool is not None
            for workers in (1, 2):
                server.reset()
                scenario = ceiling_scenario(server.url, args.guidellm_seconds)
                report, why = run_guidellm(tool, scenario, workers)
                served = server.stats()
                if report is None:
                    print(f"  guidellm ({workers} worker(s)) failed: {why}")
                    continue
                figures = guidellm_figures(report)
                figures["events_per_s"] = (
                    figures["achieved"] * OUTPUT_TOKENS if figures["achieved"] else None
                )
                figures["server_requests"] = served["requests"]
                print(f"  guidellm {workers} worker(s): {json.dumps(figures)}", flush=True)
                rows.append(("guidellm", workers, figures))
        else:
            print(f"GuideLLM not run: {why}")
        python = vllm_bench_python(args.vllm_python)
        if python is None:
            print("vLLM's benchmark not run: no vLLM environment (scripts/install-vllm.sh)")
        else:
            server.reset()
            result, why = run_vllm_bench(python, server.url, args.vllm_prompts)
            if result is None:
                print(f"  vLLM's benchmark failed: {why}")
            else:
                result["server_requests"] = server.stats()["requests"]
                print(f"  vllm bench serve: {json.dumps(result)}", flush=True)
                rows.append(("vllm", 1, result))
    print()
    print("tool      procs  strict/s  kept_up/s  events/s  queue_ms_p99  cpu%max  per_proc/s")
    per_proc: dict[tuple[str, int], float] = {}
    for tool_name, procs, found in rows:
        if tool_name == "ours":
            strict = (found["strict"] or {}).get("achieved")
            best = found["kept_up"] or {}
            rate = best.get("achieved")
            events, queue, cpu = (
                best.get(k) for k in ("events_per_s", "queue_ms_p99", "cpu_percent_max")
            )
        elif tool_name == "ours-128":
            strict, rate, events = None, found["achieved"], found["events_per_s"]
            queue, cpu = None, found["cpu_percent_max"]
        else:
            strict, rate, queue, cpu = None, found["achieved"], None, None
            events = found["events_per_s"]
        if rate:
            per_proc[(tool_name, procs)] = rate / procs
        print(
            f"{tool_name:9} {procs:5d}  {_fmt(strict, 8)}  {_fmt(rate, 9)}  {_fmt(events, 8, 0)}  "
            f"{_fmt(queue, 12, 3)}  {_fmt(cpu, 7)}  {_fmt(rate / procs if rate else None, 10)}"
        )
    print(
        "ours: strict = highest Poisson rate achieved within 1% with queue_ms p99 < 1 ms;"
        " kept_up = highest rate achieved within 1% with no failure (its queue_ms p99 and CPU"
        " shown).\nguidellm: throughput profile (up to"
        f" {GUIDELLM_CONCURRENCY} in flight), successful requests / measured window; procs = its"
        " worker processes (it also runs a main process)."
    )
    print(
        f"vllm: `vllm bench serve`, unlimited rate with up to {GUIDELLM_CONCURRENCY} in flight,"
        " completed requests / its duration (one process)."
    )
    print(
        f"ours-128: closed loop with {GUIDELLM_CONCURRENCY} in flight for 10 s, completed"
        " requests / first send to last completion (the peers' way of measuring)."
    )
    for mine_name in ("ours", "ours-128"):
        for peer in ("guidellm", "vllm"):
            for procs in (1, 2):
                mine, theirs = per_proc.get((mine_name, procs)), per_proc.get((peer, procs))
                if mine and theirs:
                    print(
                        f"ratio {mine_name} / {peer} per process, {procs} process(es): "
                        f"{mine / theirs:.1f}x"
                    )


if __name__ == "__main__":
    main()
