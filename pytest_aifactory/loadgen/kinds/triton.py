"""Inference on Triton Inference Server over HTTP or gRPC, with random inputs shaped as the
model describes them; requests/s and latency, and the server's own queue and compute times."""

from __future__ import annotations

from typing import Literal

from pydantic import PositiveInt

from pytest_aifactory.loadgen.kind import ClientKind, KindOptions
from pytest_aifactory.metrics.catalog import Headline

TritonDatatype = Literal[
    "BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64",
    "FP16", "FP32", "FP64",
]  # fmt: skip


class TritonOptions(KindOptions):
    """How each inference is sent to the client's `model` (default: the one model the service
    serves). `protocol`: http, or grpc on the service's port + 1 (Triton's 8000/8001 layout).
    Each request carries `batch_size` items; every input of the model gets random values of
    `dtype` in `shape` per item (without the batch dimension). Left out, both come from the
    model's own description, a variable dimension taken as 16."""

    protocol: Literal["http", "grpc"] = "http"
    model_version: str = ""
    """A version number; empty: the server's choice (the latest)."""
    batch_size: PositiveInt = 1
    shape: list[PositiveInt] | None = None
    dtype: TritonDatatype | None = None


CLIENT_KIND = ClientKind(
    name="triton",
    description="sends inference requests to Triton Inference Server",
    load="pytest_aifactory.loadgen.triton:run_triton",
    summarize="pytest_aifactory.metrics.operations:summarize_operations",
    headline=Headline("request_throughput", "req/s", "latency_ms", "latency"),
    throughput_metric="request_throughput",
    options=TritonOptions,
)
