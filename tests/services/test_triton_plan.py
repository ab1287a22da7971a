"""The `triton` service kind's plan, its entry's command line, the `triton:` recipe section and
how the client reads a model's configuration (no server needed)."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pytest_aifactory.cluster.rendezvous import free_port_block, port_is_free
from pytest_aifactory.loadgen.triton import (
    ModelInfo,
    TritonSetupError,
    make_payloads,
    split_url,
)
from pytest_aifactory.recipe import Recipe, RecipeError, load_recipe
from pytest_aifactory.services.base import ServiceConfigError, ServicePlan, get_kind
from pytest_aifactory.services.kinds import triton_entry
from pytest_aifactory.services.kinds.triton import (
    DEFAULT_REPOSITORY,
    METRIC_SERIES,
    SERVER_ENV,
    model_names,
)
from tests.helpers import REPO, write_recipe


def recipe(service: dict[str, Any] | None = None, client: dict[str, Any] | None = None) -> Recipe:
    return Recipe.model_validate(
        {
            "name": "triton-test",
            "services": {"infer": {"kind": "triton", **(service or {})}},
            "clients": {"c": {"kind": "triton", "service": "infer", **(client or {})}},
        }
    )


def plan_of(service: dict[str, Any] | None = None) -> ServicePlan:
    document = recipe(service)
    return get_kind("triton").plan("infer", document.services["infer"], document)


def option(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_default_plan_serves_the_shipped_repository_with_the_bundled_server() -> None:
    plan = plan_of()
    assert plan.argv[:3] == [sys.executable, "-m", "pytest_aifactory.services.kinds.triton_entry"]
    assert option(plan.argv, "--port") == "{port}"
    assert option(plan.argv, "--host") == "{host}"
    assert Path(option(plan.argv, "--model-repository")) == DEFAULT_REPOSITORY
    # nvidia-pytriton's server: its Python backend is linked into the job's scratch folder
    bundle = Path(option(plan.argv, "--bundle"))
    assert (bundle / "bin" / "tritonserver").is_file()
    assert option(plan.argv, "--backend-directory") == "{scratch}/backends"
    assert plan.served_model == "mlp"
    assert plan.health.http_path == "/v2/health/ready"
    assert plan.metrics_path == "/metrics"
    assert plan.metrics_port_offset == 2
    # HTTP, gRPC and metrics: chosen together, so none of them is taken by someone else
    assert plan.ports == 3


def test_shipped_repository_is_a_triton_repository() -> None:
    assert model_names(DEFAULT_REPOSITORY) == ["mlp"]
    config = (DEFAULT_REPOSITORY / "mlp" / "config.pbtxt").read_text()
    assert 'backend: "python"' in config
    assert "dynamic_batching" in config
    assert (DEFAULT_REPOSITORY / "mlp" / "1" / "model.py").is_file()


def test_recipe_args_and_env_reach_the_server(tmp_path: Path) -> None:
    plan = plan_of({"args": ["--log-verbose=1"], "env": {"OMP_NUM_THREADS": "1"}})
    assert plan.argv[-2:] == ["--", "--log-verbose=1"]
    key = plan.env.pop(triton_entry.KEY_ENV)
    assert plan.env == {"OMP_NUM_THREADS": "1"}
    # a key of its own for the administrative protocols, never on the plan's command line
    assert len(key) >= 32
    assert not any(key in arg for arg in plan.argv)
    assert plan_of({}).env[triton_entry.KEY_ENV] != key  # a fresh one per start


def test_the_administrative_protocols_are_locked_with_the_services_key() -> None:
    argv = triton_entry.command(entry_args(), None, "k" * 32)
    locked = f"{triton_entry.RESTRICTED}:x-aifactory-key={'k' * 32}"
    assert f"--http-restricted-api={locked}" in argv
    assert f"--grpc-restricted-protocol={locked}" in argv
    assert "model-repository" in triton_entry.RESTRICTED.split(",")
    assert "inference" not in triton_entry.RESTRICTED.split(",")
    # the recipe's own restriction wins; without a key nothing is added
    own = triton_entry.command(entry_args("--", "--http-restricted-api=trace:a=b"), None, "k" * 32)
    assert [a for a in own if "restricted-api" in a] == ["--http-restricted-api=trace:a=b"]
    assert not any("restricted" in a for a in triton_entry.command(entry_args(), None))


def test_own_repository_with_several_models_leaves_the_model_to_the_client(
    tmp_path: Path,
) -> None:
    for name in ("alpha", "beta"):
        (tmp_path / name / "1").mkdir(parents=True)
    (tmp_path / "not-a-model").mkdir()
    plan = plan_of({"model": str(tmp_path)})
    assert option(plan.argv, "--model-repository") == str(tmp_path)
    assert plan.served_model is None
    assert model_names(tmp_path) == ["alpha", "beta"]


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda p: p / "missing", "is not a folder"),
        (lambda p: p, "holds no model"),
    ],
)
def test_bad_repository_is_named(tmp_path: Path, make: Any, expected: str) -> None:
    with pytest.raises(ServiceConfigError, match=expected) as caught:
        plan_of({"model": str(make(tmp_path))})
    assert "service 'infer'" in str(caught.value)


def test_container_runs_the_entry_as_source_under_the_image_python() -> None:
    plan = plan_of(
        {
            "model": "/project/scratch/models",
            "container": {"image": "/project/scratch/tritonserver.sif", "runtime": "apptainer"},
        }
    )
    assert plan.argv[:2] == ["python3", "-c"]
    assert "def main(" in plan.argv[2]
    assert option(plan.argv, "--server") == "tritonserver"
    assert "--bundle" not in plan.argv
    # a repository only the node sees is taken on trust; the client names the model
    assert option(plan.argv, "--model-repository") == "/project/scratch/models"
    assert plan.served_model is None


def test_explicit_server_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    server = tmp_path / "opt" / "tritonserver" / "bin" / "tritonserver"
    server.parent.mkdir(parents=True)
    server.write_text("#!/bin/sh\n")
    monkeypatch.setenv(SERVER_ENV, str(server))
    plan = plan_of()
    assert option(plan.argv, "--server") == str(server)
    assert "--bundle" not in plan.argv  # a full install has its own backends


def test_metric_series_name_tritons_counters() -> None:
    by_name = {s.name: s for s in METRIC_SERIES}
    kind = get_kind("triton")
    assert kind.request_count_series in by_name
    assert by_name["triton_request_success"].metric == "nv_inference_request_success"
    assert by_name["triton_queue_duration_us"].metric == "nv_inference_queue_duration_us"
    assert by_name["triton_compute_infer_duration_us"].type == "counter"
    assert by_name["triton_pending_requests"].type == "gauge"


def test_server_figures_are_per_request() -> None:
    grown = {
        "triton_request_success": 100.0,
        "triton_request_failure": 0.0,
        "triton_request_duration_us": 500_000.0,
        "triton_queue_duration_us": 200_000.0,
        "triton_compute_input_duration_us": 10_000.0,
        "triton_compute_infer_duration_us": 250_000.0,
        "triton_compute_output_duration_us": 40_000.0,
        "triton_inference_count": 400.0,
        "triton_execution_count": 25.0,
    }
    figures = get_kind("triton").server_figures(grown.get)
    assert figures["requests"] == 100
    assert figures["request_ms"] == pytest.approx(5.0)
    assert figures["queue_ms"] == pytest.approx(2.0)
    assert figures["compute_ms"] == pytest.approx(3.0)
    assert figures["batch_size"] == pytest.approx(16.0)


def test_server_figures_without_coverage_or_requests_are_none() -> None:
    kind = get_kind("triton")
    uncovered = kind.server_figures(lambda _series: None)
    assert set(uncovered.values()) == {None}
    idle = kind.server_figures(lambda _series: 0.0)
    assert idle["requests"] == 0
    assert idle["queue_ms"] is None
    assert idle["batch_size"] is None


# -- the entry: ports, backend folder, command line ---------------------------------------------


def entry_args(*extra: str, port: int = 8000) -> Any:
    return triton_entry.parse(
        ["--host", "127.0.0.1", "--port", str(port), "--model-repository", "/m", *extra]
    )


def test_entry_command_puts_grpc_and_metrics_beside_http() -> None:
    argv = triton_entry.command(entry_args("--", "--log-verbose=1"), None)
    assert argv[0] == "tritonserver"
    assert "--http-port=8000" in argv
    assert "--grpc-port=8001" in argv
    assert "--metrics-port=8002" in argv
    assert "--metrics-address=127.0.0.1" in argv
    assert "--model-repository=/m" in argv
    assert f"--backend-config=python,shm-region-prefix-name=aifactory{os.getpid()}_" in argv
    assert "--exit-timeout-secs=5" in argv
    assert argv[-1] == "--log-verbose=1"


def test_entry_keeps_the_recipe_s_own_settings() -> None:
    argv = triton_entry.command(
        entry_args(
            "--",
            "--exit-timeout-secs=30",
            "--backend-config=python,shm-region-prefix-name=mine",
        ),
        None,
    )
    assert "--exit-timeout-secs=5" not in argv
    assert sum("shm-region-prefix-name" in a for a in argv) == 1


def test_entry_reports_a_taken_port() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(triton_entry.EntryError, match=f"port {port} .* is taken"):
            triton_entry.check_free("127.0.0.1", port)
        # as the gRPC port of a server on the port below: refused before anything starts
        argv = ["--host", "127.0.0.1", "--port", str(port - 1), "--model-repository", "/m"]
        assert triton_entry.main(argv) == 2


def test_entry_links_the_bundle_s_python_backend(tmp_path: Path) -> None:
    plan = plan_of()
    bundle = Path(option(plan.argv, "--bundle"))
    backends = triton_entry.link_backends(bundle, tmp_path / "backends")
    python = backends / "python"
    for name in (*triton_entry.PYTHON_BACKEND_FILES, triton_entry.STUB):
        assert (python / name).resolve().is_file()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert f"python_backend_stubs/{version}/" in str((python / triton_entry.STUB).resolve())
    env = triton_entry.bundle_env({"PATH": "/usr/bin", "LD_LIBRARY_PATH": ""})
    assert env["PATH"].split(":")[0] == str(Path(sys.executable).parent)
    assert (Path(env["LD_LIBRARY_PATH"].split(":")[0]) / "").is_dir()


# -- the triton: section and the model's description --------------------------------------------


def test_triton_section_defaults_and_values() -> None:
    client = recipe(client={"triton": {"protocol": "grpc", "batch_size": 8}}).clients["c"]
    assert client.options() == {
        "protocol": "grpc",
        "model_version": "",
        "batch_size": 8,
        "shape": None,
        "dtype": None,
    }
    assert recipe().clients["c"].options()["protocol"] == "http"


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"protocol": "websocket"}, "clients.c.triton.protocol"),
        ({"batch_size": 0}, "clients.c.triton.batch_size"),
        ({"dtype": "FP8"}, "clients.c.triton.dtype"),
        ({"shape": [16, 0]}, "clients.c.triton.shape"),
        ({"bogus": 1}, "clients.c.triton.bogus"),
    ],
)
def test_bad_triton_section_names_the_key(
    tmp_path: Path, section: dict[str, Any], key: str
) -> None:
    path = write_recipe(
        tmp_path / "r.yaml",
        {
            "name": "t",
            "services": {"infer": {"kind": "triton"}},
            "clients": {"c": {"kind": "triton", "service": "infer", "triton": section}},
        },
    )
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    assert key in str(caught.value)


def test_shipped_recipes_validate(monkeypatch: pytest.MonkeyPatch) -> None:
    local = load_recipe(REPO / "recipes" / "triton.yaml")
    assert {c.kind for c in local.clients.values()} == {"triton"}
    assert {c.options()["protocol"] for c in local.clients.values()} == {"http", "grpc"}
    monkeypatch.setenv("AIFACTORY_DATA", "/project/scratch/p1/me/aifactory")
    cluster = load_recipe(REPO / "recipes" / "meluxina" / "triton.yaml")
    service = cluster.services["triton"]
    assert service.container is not None
    assert service.gpus_per_node == 1
    plan = get_kind("triton").plan("triton", service, cluster)
    repository = option(plan.argv, "--model-repository")
    assert repository == "/project/scratch/p1/me/aifactory/triton-models"


HTTP_CONFIG = {
    "name": "mlp",
    "max_batch_size": 64,
    "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [-1]}],
    "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [16]}],
}
GRPC_CONFIG = {  # protobuf's JSON: 64-bit integers as strings, zero values left out
    "name": "fixed",
    "input": [
        {"name": "A", "data_type": "TYPE_INT32", "dims": ["3", "2"]},
        {"name": "B", "data_type": "TYPE_BOOL", "dims": ["4"]},
    ],
    "output": [{"name": "Y", "data_type": "TYPE_FP32", "dims": ["1"]}],
}


def test_model_info_reads_both_protocols_configs() -> None:
    http = ModelInfo.from_config(HTTP_CONFIG)
    assert http.max_batch_size == 64
    assert [(t.name, t.datatype, t.dims) for t in http.inputs] == [("INPUT0", "FP32", (-1,))]
    assert http.outputs == ("OUTPUT0",)
    grpc = ModelInfo.from_config(GRPC_CONFIG)
    assert grpc.max_batch_size == 0
    assert [(t.name, t.datatype, t.dims) for t in grpc.inputs] == [
        ("A", "INT32", (3, 2)),
        ("B", "BOOL", (4,)),
    ]


def test_payloads_follow_the_model_unless_the_recipe_says_otherwise() -> None:
    mlp = ModelInfo.from_config(HTTP_CONFIG)
    payloads = make_payloads(mlp, {"batch_size": 4}, seed=1)
    assert len(payloads) == 8
    assert payloads[0]["INPUT0"].shape == (4, 16)  # the variable dimension as 16
    assert payloads[0]["INPUT0"].dtype == np.float32
    assert not np.array_equal(payloads[0]["INPUT0"], payloads[1]["INPUT0"])
    again = make_payloads(mlp, {"batch_size": 4}, seed=1)
    assert np.array_equal(payloads[3]["INPUT0"], again[3]["INPUT0"])
    wide = make_payloads(mlp, {"batch_size": 2, "shape": [3, 5], "dtype": "FP16"}, seed=1)
    assert wide[0]["INPUT0"].shape == (2, 3, 5)
    assert wide[0]["INPUT0"].dtype == np.float16
    fixed = make_payloads(ModelInfo.from_config(GRPC_CONFIG), {"batch_size": 1}, seed=0)
    assert fixed[0]["A"].shape == (3, 2)  # no batch dimension: the model does not batch
    assert fixed[0]["A"].dtype == np.int32
    assert fixed[0]["B"].dtype == np.bool_


@pytest.mark.parametrize(
    ("config", "options", "message"),
    [
        (HTTP_CONFIG, {"batch_size": 65}, "more than model 'mlp' takes"),
        (GRPC_CONFIG, {"batch_size": 2}, "does not batch"),
        (
            {**HTTP_CONFIG, "input": [{"name": "T", "data_type": "TYPE_STRING", "dims": [1]}]},
            {},
            "set triton.dtype",
        ),
    ],
)
def test_payloads_refuse_what_the_model_cannot_take(
    config: dict[str, Any], options: dict[str, Any], message: str
) -> None:
    with pytest.raises(TritonSetupError, match=message):
        make_payloads(ModelInfo.from_config(config), options, seed=0)


def test_split_url() -> None:
    assert split_url("http://127.0.0.1:8000") == ("127.0.0.1", 8000)
    assert split_url("http://[::1]:8000") == ("[::1]", 8000)
    with pytest.raises(TritonSetupError):
        split_url("http://host-without-port")


def test_a_block_of_ports_is_free_together() -> None:
    first = free_port_block("127.0.0.1", 3)
    assert all(port_is_free("127.0.0.1", first + i) for i in range(3))
