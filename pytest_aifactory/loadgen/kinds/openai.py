"""LLM serving over the OpenAI API (completions or chat, streamed): TTFT, TPOT, ITL and token
throughputs, as vLLM's serving benchmark defines them (docs/metrics.md)."""

from __future__ import annotations

from pytest_aifactory.loadgen.kind import ClientKind
from pytest_aifactory.metrics.catalog import Headline, metric

CLIENT_KIND = ClientKind(
    name="openai",
    description="streams completions or chat requests to an OpenAI-compatible server",
    load="pytest_aifactory.loadgen.openai:run_openai",
    summarize="pytest_aifactory.metrics.stats:summarize_llm",
    headline=Headline("output_throughput", "out tok/s", "ttft_ms", "TTFT"),
    throughput_metric="request_throughput",
    pooled_connections=True,
    closing_columns=(
        ("TTFT p50", "ttft_ms.p50"),
        ("TTFT p99", "ttft_ms.p99"),
        ("TPOT p50", "tpot_ms.p50"),
        ("out tok/s", "output_throughput"),
    ),
    metrics=(
        metric("ttft_ms", "ms", False, True, "llm", "time to first content event", "TTFT (ms)"),
        metric("tpot_ms", "ms", False, True, "llm", "(e2el - ttft) / (output_tokens - 1)",
               "TPOT (ms)"),
        metric("itl_ms", "ms", False, True, "llm", "gap between content events (pooled)",
               "ITL (ms, pooled)"),
        metric("e2el_ms", "ms", False, True, "llm", "start to last content event",
               "E2E latency (ms)"),
        metric("connect_ms", "ms", False, True, "llm", "getting a connection (0: reused)"),
        metric("output_tokens", "tokens", True, True, "llm", "generated tokens per request"),
        metric("input_tokens", "tokens", True, True, "llm", "prompt tokens per request"),
        metric("output_throughput", "tok/s", True, False, "llm", "generated tokens per second"),
        metric("total_token_throughput", "tok/s", True, False, "llm", "prompt + generated tok/s"),
    ),
)  # fmt: skip
