"""`kind: vllm`: vLLM's OpenAI-compatible API server, on one node or over several with Ray.

The server is started as `python -m vllm.entrypoints.openai.api_server` rather than with the
`vllm` command: the module works in every build (the CPU build's `vllm` command does not). The
Python that runs it is `AIFACTORY_VLLM_PYTHON` (the recipe's `env`, then the environment),
else `python3` inside a container (the driver's own interpreter is not in the image), else the
environment `scripts/install-vllm.sh` made in the cache (vLLM's CPU build, kept apart because
it pins its own torch and transformers), else the driver's interpreter when it has vLLM.

A catalogue key as `model` (`smollm2-135m`) is served from the Hugging Face folder the install
script converted from the key's GGUF file (vLLM's CPU build reads no GGUF), under the key's name.
Without GPUs (`gpus_per_node: 0`) the kind adds what the CPU build needs unless the recipe says
otherwise: bfloat16 weights on CPUs that compute bfloat16 natively and float32 on the others
(where emulated bfloat16 is about half as fast), a 2048-token context, a 2 GiB KV cache
(`VLLM_CPU_KVCACHE_SPACE`; the CPU build reserves memory from that, not from a GPU fraction)
and eager mode: compiling the model takes minutes at every start on a small machine (the
compiled artefacts are not reused) and, for a small model, serves no faster.

Parallelism comes from the recipe's `tensor_parallel_size` / `pipeline_parallel_size`, else
from `--tensor-parallel-size` / `--pipeline-parallel-size` in `args`, else from the
allocation: tensor parallel over the GPUs of a node, pipeline parallel over the nodes. The GPUs
of a node are those the job was granted (`CUDA_VISIBLE_DEVICES`, which the job passes on to the
server untouched), counted inside the job; the recipe's `gpus_per_node` (or `gres`) where the
job is not told.

Over several nodes vLLM needs a Ray cluster spanning them: rank 0 runs `vllm_head` (Ray head,
wait for every node, then the API server), the other ranks run it as a Ray worker that joins the
head. The cluster requires the run's token (`vllm_head` says how), and Ray listens on the port
after the API server's, which the head's job picks free on its node like the API port (the
workers learn both from its rendezvous); the service's `env` may fix it with
`AIFACTORY_RAY_PORT`. By default never Ray's usual 6379, where another user's Ray could be
waiting for our workers.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_aifactory.monitor.series import Series
from pytest_aifactory.services.base import (
    GPUS,
    HealthCheck,
    ServiceConfigError,
    ServiceKind,
    ServicePlan,
    has_flag,
    service_kind,
)
from pytest_aifactory.services.kinds import vllm_head
from pytest_aifactory.services.models import CATALOGUE, cache_dir, hf_model_dir, package_dir

VLLM_PARALLEL_FLAGS: dict[str, tuple[str, ...]] = {
    "tensor_parallel_size": ("--tensor-parallel-size", "-tp"),
    "pipeline_parallel_size": ("--pipeline-parallel-size", "-pp"),
}
"""The vLLM flags a service's parallelism keys stand for; a key and its flag in `args` would
say the same thing twice, possibly differently (the recipe refuses both)."""

if TYPE_CHECKING:
    from pytest_aifactory.recipe import Recipe, Service

API_SERVER_MODULE = "vllm.entrypoints.openai.api_server"
PYTHON_ENV = "AIFACTORY_VLLM_PYTHON"
RAY_PORT_ENV = "AIFACTORY_RAY_PORT"
RAY_PORT_OFFSET = 1
"""Without `AIFACTORY_RAY_PORT`, Ray listens on the API server's port plus this (both chosen
free together on the head's node)."""
SERVED_NAME_FLAG = "--served-model-name"
EXECUTOR_FLAG = "--distributed-executor-backend"
INSTALL_SCRIPT = "scripts/install-vllm.sh"
CPU_VENV = "vllm-cpu-venv"
CPU_VENV_STAMP = ".aifactory-vllm"
"""Written by the install script once the environment is complete."""
DTYPE_FLAG = "--dtype"
CPU_DEFAULT_ARGS = (("--max-model-len", "2048"),)
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
"""/proc/cpuinfo flags of CPUs that compute bfloat16 natively (x86 AVX-512/AMX, Arm)."""
CPU_DEFAULT_ENV = {"VLLM_CPU_KVCACHE_SPACE": "2"}
PRIVATE_ENV = {"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
"""Nothing leaves the node or lands outside the job's folders: no model hub (compute nodes
have no internet), and no usage report, which vLLM would otherwise send out and also write to
`~/.config/vllm` (a recipe's `env` may still set any of these)."""
EAGER_FLAG = "--enforce-eager"
COMPILE_FLAGS = (EAGER_FLAG, "--no-enforce-eager", "--compilation-config", "-cc", "-O")
"""Flags by which a recipe chooses for itself whether the model is compiled."""


@dataclass(frozen=True)
class Parallelism:
    """Tensor x pipeline parallel sizes, and which of them the kind must put on the command
    line (a size already in the recipe's `args` is not repeated)."""

    tensor: int
    pipeline: int
    tensor_flag: bool
    pipeline_flag: bool
    tensor_from_gpus: bool = False
    """The tensor size is the node's GPUs: written `{gpus}`, the count the job was granted."""


def flag_value(args: list[str], flags: tuple[str, ...]) -> str | None:
    """The value of the last `--flag value` or `--flag=value` in `args` (argparse's rule)."""
    found = None
    for index, arg in enumerate(args):
        name, sep, value = arg.partition("=")
        if name in flags and sep:
            found = value
        elif arg in flags and index + 1 < len(args):
            found = args[index + 1]
    return found


def _size_from_args(name: str, args: list[str], key: str) -> int | None:
    flags = VLLM_PARALLEL_FLAGS[key]
    if not has_flag(args, flags):
        return None
    value = flag_value(args, flags)
    if value is None or not value.isdigit() or int(value) < 1:
        raise ServiceConfigError(
            f"service '{name}': {flags[0]} in args needs a whole number of at least 1, "
            f"got {value!r}"
        )
    return int(value)


def parallelism(name: str, service: Service) -> Parallelism:
    """The sizes the service runs with; raises when they do not use exactly the GPUs the
    service is given (vLLM would fail or leave GPUs idle, after a long queue and load)."""
    args = list(service.args)
    tensor_arg = _size_from_args(name, args, "tensor_parallel_size")
    pipeline_arg = _size_from_args(name, args, "pipeline_parallel_size")
    gpus = service.gpu_count
    tensor = service.tensor_parallel_size or tensor_arg or max(gpus, 1)
    pipeline = service.pipeline_parallel_size or pipeline_arg or service.nodes
    from_gpus = gpus > 0 and service.tensor_parallel_size is None and tensor_arg is None
    # a size from a key is always written out, a derived one when it is not vLLM's default of 1
    # or when the service spans nodes (the command line then says how it is split)
    multi_node = service.nodes > 1
    tensor_flag = tensor_arg is None and (
        service.tensor_parallel_size is not None or tensor > 1 or multi_node
    )
    pipeline_flag = pipeline_arg is None and (
        service.pipeline_parallel_size is not None or pipeline > 1 or multi_node
    )
    total = service.nodes * gpus
    if gpus > 0 and tensor * pipeline != total:
        raise ServiceConfigError(
            f"service '{name}': tensor parallel {tensor} x pipeline parallel {pipeline} = "
            f"{tensor * pipeline} GPUs, but the service has {service.nodes} node(s) x "
            f"{gpus} GPU(s) = {total}: change tensor_parallel_size, "
            "pipeline_parallel_size, nodes or gpus_per_node (gres) so that they match"
        )
    return Parallelism(tensor, pipeline, tensor_flag, pipeline_flag, from_gpus)


def served_name(model: str, args: list[str]) -> str:
    """The name clients send: `--served-model-name` from args (its first value), else the last
    part of the hub id or path (`meta-llama/Llama-3.1-8B-Instruct` -> `Llama-3.1-8B-Instruct`)."""
    given = flag_value(args, (SERVED_NAME_FLAG,))
    if given:
        return given
    return Path(model.rstrip("/")).name or model


def cpu_venv() -> Path:
    """Where `scripts/install-vllm.sh` puts vLLM's CPU build (outside any clone)."""
    return cache_dir() / CPU_VENV


def installed_python() -> Path | None:
    """The Python of the install script's environment, once the script has completed."""
    venv = cpu_venv()
    python = venv / "bin" / "python"
    return python if (venv / CPU_VENV_STAMP).is_file() and python.is_file() else None


def vllm_python(name: str, service: Service) -> str:
    explicit = service.env.get(PYTHON_ENV) or os.environ.get(PYTHON_ENV)
    if explicit:
        return explicit
    if service.container is not None:
        return "python3"
    installed = installed_python()
    if installed is not None:
        return str(installed)
    if package_dir("vllm") is not None:
        return sys.executable
    raise ServiceConfigError(
        f"service '{name}': vLLM is not installed: run {INSTALL_SCRIPT} (vLLM's CPU build, "
        f"into {cpu_venv()}) or set {PYTHON_ENV} to the Python of an environment with vLLM"
    )


def model_source(name: str, model: str) -> str:
    """What vLLM loads for the recipe's `model`: the converted folder of a catalogue key, else
    the hub id or path as given."""
    if model not in CATALOGUE:
        return model
    folder = hf_model_dir(model)
    if folder is None:
        raise ServiceConfigError(
            f"service '{name}': model '{model}' has no Hugging Face folder for vLLM yet (vLLM "
            f"cannot load its GGUF file): run {INSTALL_SCRIPT}, which converts smollm2-135m"
        )
    return str(folder)


def chooses_compilation(args: list[str]) -> bool:
    return has_flag(args, COMPILE_FLAGS) or any(
        arg.startswith("-O") and arg[2:].lstrip("=.").isdigit() for arg in args
    )


def cpu_dtype(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """bfloat16 where the CPU computes it natively, else float32: emulated bfloat16 served
    SmolLM2 at half float32's speed with 4 streams (AVX-512 without BF16, 2 cores)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "bfloat16"
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):
            return "bfloat16" if BF16_CPU_FLAGS & set(value.split()) else "float32"
    return "bfloat16"  # vLLM's own choice for CPUs when nothing is known


def cpu_defaults(args: list[str]) -> list[str]:
    """The CPU build's settings the recipe's `args` do not give themselves."""
    added: list[str] = []
    if not has_flag(args, (DTYPE_FLAG,)):
        added += [DTYPE_FLAG, cpu_dtype()]
    for flag, value in CPU_DEFAULT_ARGS:
        if not has_flag(args, (flag,)):
            added += [flag, value]
    if not chooses_compilation(args):
        added.append(EAGER_FLAG)
    return added


def ray_executable(python: str, service: Service) -> str:
    """Ray's command beside the Python that runs vLLM (a virtual environment that is not
    activated), else `ray` from PATH (always inside a container)."""
    if service.container is None:
        beside = Path(python).parent / "ray"
        if beside.is_file() and os.access(beside, os.X_OK):
            return str(beside)
    return "ray"


def ray_port(name: str, service: Service) -> int | None:
    """The recipe's fixed Ray port; None: the one after the API server's."""
    text = service.env.get(RAY_PORT_ENV)
    if text is None:
        return None
    if not text.strip().isdigit() or not 1 <= int(text) <= 65535:
        raise ServiceConfigError(
            f"service '{name}': env {RAY_PORT_ENV} must be a port number 1-65535, got {text!r}"
        )
    port = int(text)
    if service.port == port:
        raise ServiceConfigError(
            f"service '{name}': the API server's port {port} is also the Ray port "
            f"({RAY_PORT_ENV}): use another for one of them"
        )
    return port


def head_launcher(python: str, in_container: bool) -> list[str]:
    """How each rank starts `vllm_head`. In a container the package is not installed, so the
    launcher (standard library only) is handed to the image's Python as source text."""
    if in_container:
        return [python, "-c", Path(vllm_head.__file__).read_text(encoding="utf-8")]
    return [sys.executable, "-m", vllm_head.__name__]


METRIC_SERIES = (
    Series(
        "vllm_prompt_tokens",
        "vllm:prompt_tokens_total",
        "counter",
        "service",
        "tokens",
        "prompt tokens processed",
    ),
    Series(
        "vllm_generated_tokens",
        "vllm:generation_tokens_total",
        "counter",
        "service",
        "tokens",
        "tokens generated",
    ),
    Series(
        "vllm_requests_running",
        "vllm:num_requests_running",
        "gauge",
        "service",
        "requests",
        "requests in the running batch",
    ),
    Series(
        "vllm_requests_waiting",
        "vllm:num_requests_waiting",
        "gauge",
        "service",
        "requests",
        "requests queued for the batch",
    ),
    Series(
        "vllm_kv_cache_usage",
        "vllm:kv_cache_usage_perc",
        "gauge",
        "service",
        "ratio",
        "KV-cache blocks in use (0-1)",
    ),
    Series(
        "vllm_preemptions",
        "vllm:num_preemptions_total",
        "counter",
        "service",
        "requests",
        "requests preempted for lack of KV cache",
    ),
    Series(
        "vllm_prefix_cache_queries",
        "vllm:prefix_cache_queries_total",
        "counter",
        "service",
        "tokens",
        "prompt tokens looked up in the prefix cache",
    ),
    Series(
        "vllm_prefix_cache_hits",
        "vllm:prefix_cache_hits_total",
        "counter",
        "service",
        "tokens",
        "prompt tokens found in the prefix cache",
    ),
)


@service_kind("vllm")
class VllmService(ServiceKind):
    default_health = HealthCheck(http_path="/health")
    default_metrics_path = "/metrics"
    metric_series = METRIC_SERIES
    generated_tokens_series = "vllm_generated_tokens"
    api_key_env = "VLLM_API_KEY"

    def server_figures(self, increase: Callable[[str], float | None]) -> dict[str, float | None]:
        """The share of prompt tokens the prefix cache held over the test, by vLLM's own
        counters of tokens looked up and found."""
        hits, queries = increase("vllm_prefix_cache_hits"), increase("vllm_prefix_cache_queries")
        if hits is None or queries is None:
            return {}
        return {
            "prefix_cache_hit_rate": hits / queries if queries else None,
            "prefix_cache_hit_tokens": hits,
            "prefix_cache_query_tokens": queries,
        }

    def plan(self, name: str, service: Service, recipe: Recipe) -> ServicePlan:
        if not service.model:
            raise ServiceConfigError(
                f"service '{name}': kind vllm needs 'model': a catalogue key (smollm2-135m), "
                "a hub id (org/name) or the path of a model folder"
            )
        args = list(service.args)
        sizes = parallelism(name, service)
        source = model_source(name, service.model)
        served = served_name(service.model, args)  # a catalogue key keeps its name
        python = vllm_python(name, service)
        on_cpu = service.gpu_count == 0
        server = [
            python,
            "-m",
            API_SERVER_MODULE,
            "--model",
            source,
            "--host",
            "{host}",
            "--port",
            "{port}",
        ]
        if not has_flag(args, (SERVED_NAME_FLAG,)):
            server += [SERVED_NAME_FLAG, served]
        multi_node = service.nodes > 1
        if multi_node and not has_flag(args, (EXECUTOR_FLAG,)):
            server += [EXECUTOR_FLAG, "ray"]
        if sizes.tensor_flag:
            tensor = GPUS if sizes.tensor_from_gpus else str(sizes.tensor)
            server += ["--tensor-parallel-size", tensor]
        if sizes.pipeline_flag:
            server += ["--pipeline-parallel-size", str(sizes.pipeline)]
        if on_cpu:
            server += cpu_defaults(args)
        server += args
        env = {**PRIVATE_ENV, **(CPU_DEFAULT_ENV if on_cpu else {}), **service.env}
        argv, worker_argv, ports = server, None, 1
        if multi_node:
            fixed = ray_port(name, service)
            ray = ray_executable(python, service)
            gpus = GPUS if service.gpu_count else "0"
            launcher = head_launcher(python, service.container is not None)
            # the head's own API port, or the fixed one: workers count from the head's
            if fixed is None:
                head_port, worker_port = "{port}", "{head_port}"
                offset, ports = str(RAY_PORT_OFFSET), RAY_PORT_OFFSET + 1
            else:
                head_port, worker_port, offset = str(fixed), str(fixed), "0"
            node = ["--node-ip", "{host}", "--num-gpus", gpus]
            argv = [
                *launcher,
                "--ray",
                ray,
                "--ray-port",
                head_port,
                "--ray-port-offset",
                offset,
                *node,
                "--expect-nodes",
                str(service.nodes),
                "--timeout",
                f"{service.health_timeout_s:g}",
                "--",
                *server,
            ]
            worker_argv = [
                *launcher,
                "--ray",
                ray,
                "--worker",
                "--head-host",
                "{head_host}",
                "--ray-port",
                worker_port,
                "--ray-port-offset",
                offset,
                *node,
            ]
        return self.plan_for(
            name,
            service,
            argv,
            worker_argv=worker_argv,
            env=env,
            served_model=served,
            ports=ports,
        )
