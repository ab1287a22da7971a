"""The `triton` client against a real Triton Inference Server (the nvidia-pytriton bundle on
CPU, serving the shipped `mlp` model).

The server is started from the kind's own plan (placeholders filled as a job fills them) and
stopped by its PID; the client runs in this process through `run_load`. Triton's own counter
of successful requests is read before and after each load: it must grow by exactly the
requests the client completed.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from pytest_aifactory.loadgen.records import read_records
from pytest_aifactory.loadgen.runner import run_load
from pytest_aifactory.loadgen.spec import LoadSpec
from pytest_aifactory.loadgen.triton import TritonSetupError
from pytest_aifactory.recipe import Recipe
from pytest_aifactory.services.base import ServicePlan, get_kind
from pytest_aifactory.services.kinds.triton import METRICS_PORT_OFFSET
from pytest_aifactory.testing.load_specs import load_spec
from tests.components import require_component
from tests.helpers import answers, running_plan

pytestmark = pytest.mark.slow

HOST = "127.0.0.1"


@dataclass
class Server:
    port: int
    pid: int
    client_env: dict[str, str]
    """What the run hands its clients: the key of the server's locked protocols."""

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def counter(self, name: str) -> float:
        """A Triton counter summed over its models, from its metrics port."""
        url = f"http://{HOST}:{self.port + METRICS_PORT_OFFSET}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name + "{")
        )


def _plan() -> ServicePlan:
    document = Recipe.model_validate(
        {
            "name": "triton-client-test",
            "services": {"infer": {"kind": "triton"}},
            "clients": {"c": {"kind": "triton", "service": "infer"}},
        }
    )
    return get_kind("triton").plan("infer", document.services["infer"], document)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    require_component("tritonserver")
    plan = _plan()
    with running_plan(plan, "tritonserver", host=HOST) as running:
        ready = f"http://{HOST}:{running.port}/v2/health/ready"
        running.wait_until(lambda: answers(ready), "tritonserver ready")
        yield Server(running.port, running.process.pid, dict(plan.client_env))


def spec_for(tmp_path: Path, server: Server, **changes: Any) -> LoadSpec:
    options = changes.pop("options", {})
    fields: dict[str, Any] = {
        "client": "c",
        "kind": "triton",
        "level": 4,
        "base_url": server.url,
        "model": "mlp",
        "requests": 40,
        "warmup_requests": 2,
        "timeout_s": 30,
        "options": {"batch_size": 4, **options},
        "service_env": server.client_env,
    }
    return load_spec(tmp_path, **{**fields, **changes})


def test_the_job_s_process_is_tritonserver_itself(server: Server) -> None:
    # the entry execs the server: stopping the job's child stops Triton, nothing is left
    assert Path(psutil.Process(server.pid).exe()).name == "tritonserver"


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_every_request_is_counted_by_the_server(
    tmp_path: Path, server: Server, protocol: str
) -> None:
    before = server.counter("nv_inference_request_success")
    spec = spec_for(tmp_path, server, options={"protocol": protocol})
    outcome = run_load(spec)
    after = server.counter("nv_inference_request_success")
    records = read_records([spec.records_path])
    assert outcome["completed"] == 40
    assert outcome["failed"] == 0
    assert (records["error"] == "").all(), records["error"].unique()
    # warmup requests reach the server too: 40 measured + 2 warmup, exactly
    assert len(records) == 42
    assert after - before == len(records)
    measured = records[records["phase"] == "measure"]
    assert (measured["op"] == "infer").all()
    assert (measured["items"] == 4).all()
    # 4 x 16 FP32 values out, 4 x 16 FP32 embedding values back
    assert (measured["bytes"] == 4 * 16 * 4 * 2).all()
    assert (measured["latency_ms"] > 0).all()
    spans = (measured["end_ts"] - measured["send_ts"]) * 1000
    assert np.allclose(spans, measured["latency_ms"], atol=0.05)
    expected_status = 200 if protocol == "http" else None
    assert measured["http_status"].isna().all() == (expected_status is None)


@pytest.mark.parametrize(
    ("protocol", "expected"),
    [
        ("http", "HTTPError: 400: "),
        ("grpc", "GRPCError: INVALID_ARGUMENT: "),
    ],
)
def test_what_the_server_refuses_becomes_error_records(
    tmp_path: Path, server: Server, protocol: str, expected: str
) -> None:
    successes_before = server.counter("nv_inference_request_success")
    spec = spec_for(
        tmp_path,
        server,
        requests=3,
        warmup_requests=0,
        options={"protocol": protocol, "dtype": "FP16"},
    )
    outcome = run_load(spec)
    assert outcome["failed"] == 3
    records = read_records([spec.records_path])
    for error in records["error"]:
        assert error.startswith(expected), error
        assert "FP16" in error
        assert "FP32" in error
    # refused on validation, before the model: not counted as answered (nor, by Triton 2.45,
    # as failed: its failure counter covers executions only)
    assert server.counter("nv_inference_request_success") == successes_before


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_unknown_model_is_refused_naming_what_is_served(
    tmp_path: Path, server: Server, protocol: str
) -> None:
    spec = spec_for(tmp_path, server, model="resnet", options={"protocol": protocol})
    with pytest.raises(TritonSetupError, match=r"model 'resnet' .*\(it serves: mlp;"):
        run_load(spec)


def test_the_model_computes_a_deterministic_embedding(server: Server) -> None:
    import tritonclient.http as api

    client = api.InferenceServerClient(f"{HOST}:{server.port}")
    rows = np.random.default_rng(0).standard_normal((3, 10)).astype(np.float32)

    def embed(batch: np.ndarray) -> np.ndarray:
        tensor = api.InferInput("INPUT0", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch)
        output = api.InferRequestedOutput("OUTPUT0", binary_data=True)
        return client.infer("mlp", [tensor], outputs=[output]).as_numpy("OUTPUT0")

    whole = embed(rows)
    assert whole.shape == (3, 16)
    # tanh of real work, not zeros
    assert np.all(np.abs(whole) < 1)
    assert np.any(whole != 0)
    # each row's embedding depends on that row only, batched or not
    assert np.allclose(embed(rows[1:2]), whole[1:2], atol=1e-6)
    client.close()
