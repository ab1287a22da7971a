"""`kind: triton`: NVIDIA Triton Inference Server over a model repository.

`model` is the model repository (a folder of model folders); without one the kind serves the
repository shipped in this package, a small Python-backend model (`mlp`) that runs on any CPU.
The job runs `triton_entry`, which becomes `tritonserver` with HTTP on the service's port, gRPC
on the next one and metrics on the one after (Triton's 8000/8001/8002 layout): clients of kind
`triton` find gRPC there, and monitoring scrapes the metrics port.

Which `tritonserver`: `AIFACTORY_TRITONSERVER` (the recipe's `env`, then the environment), else
inside a container the image's own, else the one `nvidia-pytriton` bundles (CPU-capable, with
the Python backend), else PATH's.

Its administrative protocols take a key of the service's own (`triton_entry` says which and
why not the run's); it is made per start unless the service's `env` sets
`AIFACTORY_TRITON_KEY`. Inference, health and metadata take none, so the service is open to
whoever reaches its ports: on a cluster node only with `exclusive: true` (services/exposure.py).

Triton counts each request's queue and compute time; `server_figures` turns the counters'
growth over a test into per-request milliseconds, and the successful-request counter is
cross-checked against the clients' count.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_aifactory.monitor.series import Series
from pytest_aifactory.services.base import (
    HealthCheck,
    ServiceConfigError,
    ServiceKind,
    ServicePlan,
    service_kind,
)
from pytest_aifactory.services.kinds import triton_entry
from pytest_aifactory.services.models import package_dir

if TYPE_CHECKING:
    from pytest_aifactory.recipe import Recipe, Service

SERVER_ENV = "AIFACTORY_TRITONSERVER"
DEFAULT_REPOSITORY = Path(__file__).resolve().parent / "triton_models"
GRPC_PORT_OFFSET = triton_entry.GRPC_OFFSET
METRICS_PORT_OFFSET = triton_entry.METRICS_OFFSET

METRIC_SERIES = (
    Series(
        "triton_request_success",
        "nv_inference_request_success",
        "counter",
        "service",
        "requests",
        "inference requests answered successfully",
    ),
    Series(
        "triton_request_failure",
        "nv_inference_request_failure",
        "counter",
        "service",
        "requests",
        "inference requests that failed",
    ),
    Series(
        "triton_inference_count",
        "nv_inference_count",
        "counter",
        "service",
        "items",
        "inferences performed (a request of batch 8 counts 8)",
    ),
    Series(
        "triton_execution_count",
        "nv_inference_exec_count",
        "counter",
        "service",
        "batches",
        "model executions (dynamic batching runs several requests in one)",
    ),
    Series(
        "triton_request_duration_us",
        "nv_inference_request_duration_us",
        "counter",
        "service",
        "us",
        "time requests spent in the server, end to end",
    ),
    Series(
        "triton_queue_duration_us",
        "nv_inference_queue_duration_us",
        "counter",
        "service",
        "us",
        "time requests waited in the scheduler's queue",
    ),
    Series(
        "triton_compute_input_duration_us",
        "nv_inference_compute_input_duration_us",
        "counter",
        "service",
        "us",
        "time spent preparing inputs for the model",
    ),
    Series(
        "triton_compute_infer_duration_us",
        "nv_inference_compute_infer_duration_us",
        "counter",
        "service",
        "us",
        "time spent running the model",
    ),
    Series(
        "triton_compute_output_duration_us",
        "nv_inference_compute_output_duration_us",
        "counter",
        "service",
        "us",
        "time spent handing outputs back",
    ),
    Series(
        "triton_pending_requests",
        "nv_inference_pending_request_count",
        "gauge",
        "service",
        "requests",
        "requests received and not yet executed",
    ),
)
COMPUTE_SERIES = (
    "triton_compute_input_duration_us",
    "triton_compute_infer_duration_us",
    "triton_compute_output_duration_us",
)


def model_names(repository: Path) -> list[str]:
    """The models of a repository: its folders that hold a `config.pbtxt` or a version folder."""
    found = []
    for folder in sorted(p for p in repository.iterdir() if p.is_dir()):
        versions = [p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()]
        if (folder / "config.pbtxt").is_file() or versions:
            found.append(folder.name)
    return found


def repository_for(name: str, service: Service) -> tuple[Path, list[str]]:
    """The model repository and its models; in a container a folder this machine cannot see
    is taken on trust (it may be inside the image), its models unknown."""
    path = Path(service.model) if service.model else DEFAULT_REPOSITORY
    if not path.is_dir():
        if service.container is not None and not path.exists():
            return path, []
        raise ServiceConfigError(
            f"service '{name}': model {str(path)!r} is not a folder: give a Triton model "
            "repository (a folder with one folder per model), or leave `model` out for the "
            "repository this package ships"
        )
    models = model_names(path)
    if not models:
        raise ServiceConfigError(
            f"service '{name}': model repository {str(path)!r} holds no model (expected "
            "folders with a config.pbtxt or numbered version folders)"
        )
    return path, models


def find_server(service: Service) -> tuple[str, Path | None]:
    """The `tritonserver` to run, and nvidia-pytriton's bundle folder when it is that one."""
    explicit = service.env.get(SERVER_ENV) or os.environ.get(SERVER_ENV)
    if service.container is not None:
        return explicit or "tritonserver", None
    if explicit:
        return explicit, bundle_of(Path(explicit))
    pytriton = package_dir("pytriton")
    server = pytriton / "tritonserver" / "bin" / "tritonserver" if pytriton else None
    if server is not None and server.is_file():
        return str(server), bundle_of(server)
    found = shutil.which("tritonserver")
    if found:
        return found, bundle_of(Path(found))
    raise ServiceConfigError(
        "tritonserver not found: install it with `pip install nvidia-pytriton` (the triton "
        f"extra of this package), or set {SERVER_ENV} to its path"
    )


def bundle_of(server: Path) -> Path | None:
    """nvidia-pytriton's folder around its `bin/tritonserver` (recognised by the per-Python
    backend stubs it keeps apart); None for a full Triton install."""
    folder = server.resolve().parent.parent
    return folder if (folder / "python_backend_stubs").is_dir() else None


def entry_command(in_container: bool) -> list[str]:
    """How the job starts `triton_entry`. In a container the package is not installed, so the
    module (standard library only) is handed to the image's Python as source text."""
    if in_container:
        return ["python3", "-c", Path(triton_entry.__file__).read_text(encoding="utf-8")]
    return [sys.executable, "-m", triton_entry.__name__]


@service_kind("triton")
class TritonService(ServiceKind):
    default_health = HealthCheck(http_path="/v2/health/ready")
    default_metrics_path = "/metrics"
    metric_series = METRIC_SERIES
    request_count_series = "triton_request_success"
    unauthenticated = (
        "Triton's inference, health and metadata protocols take no key: whoever reaches its "
        "ports runs its models"
    )

    def plan(self, name: str, service: Service, recipe: Recipe) -> ServicePlan:
        repository, models = repository_for(name, service)
        server, bundle = find_server(service)
        argv = [
            *entry_command(service.container is not None),
            "--host",
            "{host}",
            "--port",
            "{port}",
            "--model-repository",
            str(repository),
            "--server",
            server,
        ]
        if bundle is not None:
            argv += ["--bundle", str(bundle), "--backend-directory", "{scratch}/backends"]
        if service.args:
            argv += ["--", *service.args]
        env = {k: v for k, v in service.env.items() if k != SERVER_ENV}
        # its own key, not the run's: tritonserver shows it on its command line
        env.setdefault(triton_entry.KEY_ENV, secrets.token_urlsafe(32))
        return self.plan_for(
            name,
            service,
            argv,
            env=env,
            # the run's clients list the served models (restricted) to name them in an error
            client_env={triton_entry.KEY_ENV: env[triton_entry.KEY_ENV]},
            metrics_port_offset=METRICS_PORT_OFFSET,
            ports=METRICS_PORT_OFFSET + 1,
            served_model=models[0] if len(models) == 1 else None,
        )

    def server_figures(self, increase: Callable[[str], float | None]) -> dict[str, float | None]:
        """Per-request server times over the test (ms; the warmup's requests included), and
        the mean batch a model execution ran (dynamic batching at work when above the
        clients' batch size)."""
        requests = increase("triton_request_success")

        def per_request_ms(*series: str) -> float | None:
            totals = [increase(s) for s in series]
            if not requests or any(t is None for t in totals):
                return None
            return sum(t for t in totals if t is not None) / requests / 1000.0

        inferences = increase("triton_inference_count")
        executions = increase("triton_execution_count")
        return {
            "requests": requests,
            "failed_requests": increase("triton_request_failure"),
            "request_ms": per_request_ms("triton_request_duration_us"),
            "queue_ms": per_request_ms("triton_queue_duration_us"),
            "compute_ms": per_request_ms(*COMPUTE_SERIES),
            "batch_size": (
                inferences / executions if inferences is not None and executions else None
            ),
        }
