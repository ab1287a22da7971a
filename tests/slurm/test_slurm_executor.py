"""The Slurm executor: sbatch settings without a cluster, then jobs on a real Slurm.

Tests marked `slurm` need a running cluster with accounting (`bash scripts/slurm-up.sh` as
root: three nodes n1..n3 on this machine) and skip, saying so, when there is none.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import pytest
import yaml
from submitit.slurm.slurm import _make_sbatch_string

from pytest_aifactory.cluster.base import JobResources
from pytest_aifactory.cluster.local import LocalJobExecutor
from pytest_aifactory.cluster.node import node_address, node_name, parse_node_addr
from pytest_aifactory.cluster.rendezvous import Rendezvous, read_rendezvous, write_rendezvous
from pytest_aifactory.cluster.rundir import RunDir, make_run_id
from pytest_aifactory.cluster.slurm import (
    SlurmError,
    SlurmJobExecutor,
    effective_settings,
    for_cluster,
    sbatch_parameters,
    time_limit_minutes,
)
from pytest_aifactory.endpoints import Endpoint
from pytest_aifactory.job_resources import service_resources
from pytest_aifactory.recipe import Recipe
from pytest_aifactory.services.launch import (
    AUTO_HOST,
    ServiceLaunch,
    rank_path,
    resolve_host,
    run_service,
)
from pytest_aifactory.services.manager import ServiceManager, ServiceStartError
from tests.helpers import REPO, Session, run_benchmark, wait_for, write_recipe

if TYPE_CHECKING:
    from tests.conftest import SlurmCluster


def recipe_of(document: dict[str, Any]) -> Recipe:
    return Recipe.model_validate({"name": "slurm-test", **document})


def queued_names() -> list[str]:
    out = subprocess.run(
        ["squeue", "-h", "-o", "%j"], capture_output=True, text=True, check=True
    ).stdout
    return out.split()


def sacct_jobs(prefix: str) -> dict[str, str]:
    """Job name -> state of this run's jobs in Slurm's accounting."""
    out = subprocess.run(
        ["sacct", "-X", "-P", "-n", "-S", "now-1hours", "-o", "JobName,State"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    jobs = {}
    for line in out.splitlines():
        name, _, state = line.partition("|")
        if name.startswith(prefix):
            jobs[name] = state
    return jobs


def listens(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except OSError:
        return False


# -- settings: no cluster needed ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("limit", "minutes"),
    [("30", 30), ("01:00:00", 60), ("00:00:30", 1), ("01:30:01", 91), ("2-00:10:00", 2890)],
)
def test_time_limit_in_minutes(limit: str, minutes: int) -> None:
    assert time_limit_minutes(limit) == minutes


def test_recipe_settings_and_resources_become_sbatch_options(tmp_path: Path) -> None:
    recipe = recipe_of(
        {
            "platform": {
                "executor": "slurm",
                "slurm": {
                    "partition": "gpu",
                    "account": "p200981",
                    "qos": "default",
                    "time_limit": "01:30:00",
                    "setup": ["module load Apptainer"],
                    "additional": {"reservation": "cpudev", "exclusive": True, "requeue": False},
                },
            }
        }
    )
    resources = JobResources(
        nodes=2, tasks_per_node=1, gpus_per_node=4, cpus_per_task=8, memory="64G"
    )
    params = sbatch_parameters(effective_settings(recipe), resources, "aif-run-service-llm")
    script = _make_sbatch_string(command="true", folder=tmp_path, **params)
    lines = script.splitlines()
    for expected in (
        "#SBATCH --job-name=aif-run-service-llm",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=p200981",
        "#SBATCH --qos=default",
        "#SBATCH --time=90",
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=64G",
        "#SBATCH --reservation=cpudev",
        "#SBATCH --exclusive",
        "module load Apptainer",
    ):
        assert expected in lines, script
    # false means: leave the option out; jobs are never requeued unless the recipe says so
    assert "#SBATCH --requeue" not in lines
    assert "#SBATCH --no-requeue" in lines


def test_command_line_overrides_the_recipe(tmp_path: Path) -> None:
    recipe = recipe_of(
        {"platform": {"slurm": {"partition": "gpu", "setup": ["module load A"], "qos": "q"}}}
    )
    settings = effective_settings(
        recipe,
        {
            "partition": "debug",
            "time_limit": "00:10:00",
            "setup": ["export X=1"],
            "pending_timeout_s": 5.0,
            "account": None,
        },
    )
    assert settings.partition == "debug"
    assert settings.qos == "q"
    assert settings.time_limit == "00:10:00"
    assert settings.setup == ["module load A", "export X=1"]
    assert settings.pending_timeout_s == 5.0
    assert recipe.platform.slurm.partition == "gpu"
    with pytest.raises(SlurmError, match="time_limit"):
        effective_settings(recipe, {"time_limit": "1h"})


def test_node_address_comes_from_scontrol_output() -> None:
    line = "NodeName=n2 Arch=x86_64 NodeAddr=10.1.2.3 NodeHostName=vm OS=Linux 6.1 #1 SMP Port=1"
    assert parse_node_addr(line) == "10.1.2.3"
    assert parse_node_addr("NodeName=n2 NodeAddr=(null)") is None


def test_service_orders_for_a_cluster_node() -> None:
    recipe = recipe_of(
        {
            "services": {
                "auto": {"kind": "command", "command": "srv", "cpus_per_task": 4, "memory": "8G"},
                "pinned": {"kind": "command", "command": "srv", "host": "10.0.0.5"},
                "boxed": {
                    "kind": "command",
                    "command": "srv",
                    "gpus_per_node": 2,
                    "container": {"image": "/sif/srv.sif", "binds": ["/data"]},
                },
            }
        }
    )

    def launch(name: str, host: str = "127.0.0.1") -> ServiceLaunch:
        return ServiceLaunch(name=name, argv=["srv"], rendezvous_path="/r.json", host=host)

    (auto,), resources = for_cluster(
        recipe, (launch("auto"),), service_resources(recipe.services["auto"])
    )
    assert auto.host == AUTO_HOST
    assert (resources.cpus_per_task, resources.memory) == (4, "8G")
    (pinned,), _ = for_cluster(recipe, (launch("pinned", "10.0.0.5"),), JobResources())
    assert pinned.host == "10.0.0.5"
    (boxed,), _ = for_cluster(recipe, (launch("boxed"),), JobResources())
    assert boxed.container is not None
    assert boxed.container.image == "/sif/srv.sif"
    assert boxed.gpus
    other = ("not a launch", 3)
    assert for_cluster(recipe, other, JobResources())[0] == other


@pytest.mark.slow
def test_multi_node_service_ranks_on_the_local_executor(tmp_path: Path) -> None:
    """Every task runs the server; rank 0 announces once all ranks are up."""
    run = RunDir.create(tmp_path / "reports", make_run_id("ranks"))
    executor = LocalJobExecutor(run)
    launch = ServiceLaunch(
        name="web",
        argv=[sys.executable, "-m", "http.server", "{port}", "--bind", "{host}"],
        rendezvous_path=str(run.rendezvous_path("web")),
    )
    try:
        executor.submit(
            run_service, launch, name="service-web", role="service", resources=JobResources(3)
        )
        info = wait_for(
            lambda: read_rendezvous(run.rendezvous_path("web")), 30, "service rendezvous"
        )
        assert len(info.nodes) == 3
        assert len(set(info.nodes)) == 3
        assert info.nodes[0] == info.address
        ranks = [read_rendezvous(rank_path(run.rendezvous_path("web"), r)) for r in range(3)]
        assert all(rank is not None for rank in ranks)
        launched = [rank.launched_at for rank in ranks if rank and rank.launched_at]
        assert len(launched) == 3
        # the service counts as launched once its last rank is
        assert info.launched_at == max(launched)
        assert ranks[0] is not None
        assert info.job_started_at == ranks[0].job_started_at
        wait_for(lambda: all(listens(a) for a in info.nodes), 15, "every rank to listen")
    finally:
        executor.cancel_all()


# -- service start timings ---------------------------------------------------------------------


def assert_start_timings(endpoint: Endpoint, before: float, after: float) -> None:
    """The four instants of a started service are in order within the start, and the spans
    are their differences."""
    timings = endpoint.timings()
    instants = [
        timings[key] for key in ("submitted_at", "job_started_at", "launched_at", "healthy_at")
    ]
    assert all(isinstance(t, float) for t in instants), timings
    assert before <= instants[0] <= instants[1] <= instants[2] <= instants[3] <= after, timings
    submitted, job_started, launched, healthy = (float(t) for t in instants if t is not None)
    assert timings["queue_s"] == pytest.approx(job_started - submitted)
    assert timings["startup_s"] == pytest.approx(launched - job_started)
    assert timings["health_wait_s"] == pytest.approx(healthy - launched)


def test_a_started_service_says_where_its_start_time_went(tmp_path: Path) -> None:
    recipe = recipe_of(
        {
            "services": {
                "web": {
                    "kind": "command",
                    "command": f"{sys.executable} -m http.server {{port}} --bind {{host}}",
                    "health": {"tcp": True},
                    "health_timeout_s": 30,
                }
            }
        }
    )
    run = RunDir.create(tmp_path / "reports", make_run_id("timings"))
    run.start_heartbeat()
    executor = LocalJobExecutor(run)
    before = time.time()
    try:
        endpoint = ServiceManager(recipe, run, executor).endpoint("web")
        after = time.time()
    finally:
        executor.cancel_all()
        run.stop_heartbeat()
    assert_start_timings(endpoint, before, after)
    info = read_rendezvous(run.rendezvous_path("web"))
    assert info is not None
    assert (info.job_started_at, info.launched_at) == (
        endpoint.job_started_at,
        endpoint.launched_at,
    )
    # the health check cannot pass before the server process exists
    assert endpoint.timings()["health_wait_s"] > 0


def test_an_external_service_has_only_a_health_time(tmp_path: Path) -> None:
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", "0", "--bind", "127.0.0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline().split(" port ")[1].split()[0])
        recipe = recipe_of(
            {"services": {"ext": {"kind": "external", "url": f"http://127.0.0.1:{port}"}}}
        )
        run = RunDir.create(tmp_path / "reports", make_run_id("external"))
        before = time.time()
        endpoint = ServiceManager(recipe, run, LocalJobExecutor(run)).endpoint("ext")
    finally:
        server.terminate()
        server.wait(timeout=10)
    timings = endpoint.timings()
    assert timings["healthy_at"] is not None
    assert before <= timings["healthy_at"] <= time.time()
    assert {key: value for key, value in timings.items() if value is not None} == {
        "healthy_at": timings["healthy_at"]
    }


def test_rendezvous_files_without_timings_or_with_unknown_keys_are_read(tmp_path: Path) -> None:
    older = tmp_path / "older.json"
    older.write_text(
        json.dumps({"service": "llm", "host": "10.0.0.2", "port": 8080, "node": "n1", "pid": 7})
    )
    info = read_rendezvous(older)
    assert info is not None
    assert (info.address, info.nodes, info.job_started_at, info.launched_at) == (
        "10.0.0.2:8080",
        [],
        None,
        None,
    )
    newer = tmp_path / "newer.json"
    written = Rendezvous("llm", "10.0.0.2", 8080, "n1", 7, job_started_at=1.5, launched_at=2.5)
    write_rendezvous(newer, written)
    newer.write_text(json.dumps({**json.loads(newer.read_text()), "gpu_uuids": ["GPU-0"]}))
    assert read_rendezvous(newer) == written


# -- on a real Slurm ---------------------------------------------------------------------------


def small_llamacpp_recipe() -> dict[str, Any]:
    """The default recipe, cut down: one level, 6 requests of 16 output tokens."""
    document = yaml.safe_load((REPO / "recipes" / "llamacpp-smollm2.yaml").read_text())
    chat = document["clients"]["chat"]
    chat["load"].update(levels=[2], requests=6, warmup_requests=0)
    chat["dataset"]["output_tokens"] = 16
    # a shared 2-core machine: the numbers vary, the run must not
    document["slo"] = {"chat": {"error_rate": {"max": 0.0}}}
    return document


def shape(value: Any) -> Any:
    """The keys of a JSON document, recursively, without its values."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        # lists of messages (notes, warnings) may be empty in one run and not in another
        if all(isinstance(item, str) for item in value):
            return ["text"]
        return [shape(item) for item in value[:1]]
    return "value"


@pytest.fixture(scope="module")
def slurm_run(
    slurm_cluster: SlurmCluster, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Session, Session]:
    """The cut-down default recipe through the benchmark suite on Slurm, and locally."""
    runs = []
    for executor in ("slurm", "local"):
        tmp = tmp_path_factory.mktemp(f"llm-{executor}")
        recipe = write_recipe(tmp / "llamacpp.yaml", small_llamacpp_recipe())
        runs.append(run_benchmark(tmp, recipe, "--executor", executor, "-v", timeout=300))
    return runs[0], runs[1]


def run_id_of(session: Session) -> str:
    (run,) = session.run_dirs()
    return run.name


@pytest.mark.requires("llama-server")
@pytest.mark.slurm
def test_default_recipe_runs_on_slurm(slurm_run: tuple[Session, Session]) -> None:
    on_slurm, local = slurm_run
    assert on_slurm.returncode == 0, on_slurm.output
    assert "test_serving[chat-concurrency-2] PASSED" in on_slurm.stdout
    summary = on_slurm.summary()
    assert summary["status"] == "complete"
    (test,) = summary["tests"]
    assert test["counts"]["completed"] == 6
    assert local.returncode == 0, local.output
    assert shape(summary) == shape(local.summary())


@pytest.mark.requires("llama-server")
@pytest.mark.slurm
def test_run_jobs_are_in_accounting_and_gone_from_the_queue(
    slurm_run: tuple[Session, Session],
) -> None:
    on_slurm, _ = slurm_run
    prefix = f"aif-{run_id_of(on_slurm)}-"
    assert not [name for name in queued_names() if name.startswith(prefix)]
    jobs = wait_for(
        lambda: (found := sacct_jobs(prefix)) and len(found) >= 2 and found,
        15,
        "the run's jobs in sacct",
    )
    service = jobs.get(f"{prefix}service-llm", "")
    clients = [state for name, state in jobs.items() if name.startswith(f"{prefix}client-")]
    assert service.startswith("CANCELLED"), jobs
    assert clients == ["COMPLETED"], jobs
    (run,) = on_slurm.run_dirs()
    rendezvous = json.loads((run / "rendezvous" / "llm.json").read_text())
    assert rendezvous["node"].startswith("n"), "the Slurm node name, not the hostname"


@pytest.fixture
def slurm_executor(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> Iterator[Callable[[Recipe | None], SlurmJobExecutor]]:
    """Executors on the cluster for one test; their jobs are cancelled whatever happens."""
    executors: list[SlurmJobExecutor] = []
    runs: list[RunDir] = []

    def make(recipe: Recipe | None = None) -> SlurmJobExecutor:
        run = RunDir.create(tmp_path / "reports", make_run_id("slurm-test"))
        run.start_heartbeat()
        runs.append(run)
        executors.append(SlurmJobExecutor(run, recipe))
        return executors[-1]

    yield make
    for executor in executors:
        executor.cancel_all()
    for run in runs:
        run.stop_heartbeat()


@pytest.mark.slurm
def test_three_node_service_runs_one_rank_per_node(
    slurm_executor: Callable[[Recipe | None], SlurmJobExecutor], tmp_path: Path
) -> None:
    env_dir = tmp_path / "env"
    env_dir.mkdir()
    command = (
        f"sh -c 'env | grep ^AIFACTORY_ > {env_dir}/rank-$AIFACTORY_RANK.env; "
        f"exec {sys.executable} -m http.server {{port}} --bind {{host}}'"
    )
    recipe = recipe_of(
        {
            "services": {
                "web": {
                    "kind": "command",
                    "command": command,
                    "nodes": 3,
                    "health": {"tcp": True},
                    "health_timeout_s": 60,
                }
            }
        }
    )
    executor = slurm_executor(recipe)
    before = time.time()
    endpoint = ServiceManager(recipe, executor.run, executor).endpoint("web")
    after = time.time()
    ranks = [read_rendezvous(rank_path(executor.run.rendezvous_path("web"), r)) for r in range(3)]
    assert all(rank is not None for rank in ranks)
    assert sorted(rank.node for rank in ranks if rank) == ["n1", "n2", "n3"]
    assert ranks[0] is not None
    assert endpoint.node == ranks[0].node
    assert_start_timings(endpoint, before, after)
    assert len(endpoint.nodes) == 3
    assert len(set(endpoint.nodes)) == 3
    # the health check is the head's: the other ranks may still be binding their ports
    wait_for(lambda: all(listens(a) for a in endpoint.nodes), 15, "every rank to listen")
    env_files = [env_dir / f"rank-{rank}.env" for rank in range(3)]
    wait_for(lambda: all(f.exists() and f.stat().st_size for f in env_files), 15, "rank envs")
    envs = {}
    for rank in range(3):
        text = (env_dir / f"rank-{rank}.env").read_text()
        envs[rank] = dict(line.split("=", 1) for line in text.splitlines())
    assert {e["AIFACTORY_WORLD_SIZE"] for e in envs.values()} == {"3"}
    assert {e["AIFACTORY_HEAD_HOST"] for e in envs.values()} == {endpoint.host}
    assert [envs[r]["AIFACTORY_ROLE"] for r in range(3)] == ["head", "worker", "worker"]
    assert sorted(e["AIFACTORY_NODE"] for e in envs.values()) == ["n1", "n2", "n3"]
    pids = [rank.pid for rank in ranks if rank]
    assert endpoint.job is not None
    executor.cancel(endpoint.job)
    assert (
        endpoint.job.job_id
        not in subprocess.run(
            ["squeue", "-h", "-o", "%i"], capture_output=True, text=True, check=True
        ).stdout.split()
    )
    wait_for(lambda: not any(psutil.pid_exists(pid) for pid in pids), 10, "servers to stop")


@pytest.mark.slurm
def test_cancel_removes_a_running_job(
    slurm_executor: Callable[[Recipe | None], SlurmJobExecutor],
) -> None:
    executor = slurm_executor(None)
    launch = ServiceLaunch(
        name="sleeper",
        argv=["sleep", "600"],
        rendezvous_path=str(executor.run.rendezvous_path("sleeper")),
        heartbeat_path=str(executor.run.heartbeat_path),
    )
    handle = executor.submit(run_service, launch, name="service-sleeper", role="service")
    info = wait_for(
        lambda: read_rendezvous(executor.run.rendezvous_path("sleeper")), 30, "job to start"
    )
    assert handle.state() == "RUNNING"
    assert f"aif-{executor.run.run_id}-service-sleeper" in queued_names()
    start = time.monotonic()
    executor.cancel(handle)
    elapsed = time.monotonic() - start
    assert elapsed < 30
    assert f"aif-{executor.run.run_id}-service-sleeper" not in queued_names()
    assert handle.finished()
    wait_for(lambda: not psutil.pid_exists(info.pid), 10, "the server to stop")


@pytest.mark.slurm
def test_a_nodes_address_is_slurms_node_addr(
    slurm_cluster: SlurmCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = slurm_cluster.nodes[-1]
    monkeypatch.setenv("SLURMD_NODENAME", node)
    monkeypatch.setenv("SLURM_JOB_ID", "1")
    addr = subprocess.run(
        ["scontrol", "-o", "show", "node", node], capture_output=True, text=True, check=True
    ).stdout
    expected = parse_node_addr(addr)
    assert expected is not None
    assert node_name() == node
    assert node_address() == socket.gethostbyname(expected)
    assert resolve_host(AUTO_HOST) == node_address()
    assert resolve_host("0.0.0.0") == "0.0.0.0"


@pytest.mark.slurm
def test_unknown_partition_is_refused_before_any_job(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    run = RunDir.create(tmp_path / "reports", make_run_id("partition"))
    with pytest.raises(SlurmError, match=r"no partition 'nosuch' \(partitions: .*debug"):
        SlurmJobExecutor(run, None, {"partition": "nosuch"})


@pytest.mark.slurm
def test_job_that_never_starts_fails_with_slurms_reason(
    slurm_executor: Callable[[Recipe | None], SlurmJobExecutor],
) -> None:
    recipe = recipe_of(
        {
            "platform": {"slurm": {"additional": {"begin": "now+1hour"}, "pending_timeout_s": 2}},
            "services": {
                "web": {
                    "kind": "command",
                    "command": "sleep 600",
                    "health": {"tcp": True},
                    "health_timeout_s": 60,
                }
            },
        }
    )
    executor = slurm_executor(recipe)
    start = time.monotonic()
    with pytest.raises(ServiceStartError) as failure:
        ServiceManager(recipe, executor.run, executor).endpoint("web")
    message = str(failure.value)
    assert "BeginTime" in message, message
    assert "pending_timeout_s" in message
    assert time.monotonic() - start < 20
    assert f"aif-{executor.run.run_id}-service-web" not in queued_names()


@pytest.mark.requires("llama-server")
@pytest.mark.slurm
def test_pending_timeout_from_the_command_line(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    document = small_llamacpp_recipe()
    document["platform"] = {"executor": "slurm", "slurm": {"additional": {"begin": "now+1hour"}}}
    recipe = write_recipe(tmp_path / "pending.yaml", document)
    session = run_benchmark(tmp_path, recipe, "--slurm-pending-timeout", "2", timeout=120)
    assert session.returncode == 1, session.output
    assert "BeginTime" in session.stdout, session.output
    assert "Traceback" not in session.output
    prefix = f"aif-{run_id_of(session)}-"
    assert not [name for name in queued_names() if name.startswith(prefix)]
