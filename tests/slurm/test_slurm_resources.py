"""What each job asks Slurm for, checked in what Slurm recorded (`scontrol show job`, `sacct`):
the recipe's resource keys, the time limit from the job's own duration, `--no-requeue`, GPUs as
a GRES; and what happens when Slurm requeues a job anyway (`scontrol requeue`): a restarted
client writes nothing into its first run's records, and the driver gives a requeued service up.

Needs the dev cluster (`bash scripts/slurm-up.sh` as root); the GPU test needs its nodes to
declare GPUs as a GRES (`Gres=gpu:N`, fake device files) and a `gpu` partition.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_aifactory.cases import cases_for
from pytest_aifactory.cluster.rendezvous import read_rendezvous
from pytest_aifactory.cluster.rundir import RunDir, make_run_id
from pytest_aifactory.cluster.slurm import SlurmJobExecutor, SlurmJobHandle
from pytest_aifactory.job_resources import client_resources
from pytest_aifactory.job_time import client_job_minutes, minutes, session_seconds
from pytest_aifactory.loadgen.runner import run_load_task
from pytest_aifactory.loadgen.spec import DatasetSpec
from pytest_aifactory.recipe import Recipe
from pytest_aifactory.services.manager import ServiceManager, ServiceStartError
from pytest_aifactory.testing.load_specs import load_spec
from tests.components import missing_component
from tests.helpers import run_benchmark, wait_for, write_recipe

if TYPE_CHECKING:
    from tests.conftest import SlurmCluster

pytestmark = pytest.mark.slurm

TOKEN_SERVER = (
    f"{sys.executable} -m pytest_aifactory.testing.token_server --host {{host}} --port {{port}} "
    "--ttft-ms 20 --gap-ms 5"
)
HTTP_SERVER = f"{sys.executable} -m http.server {{port}} --bind {{host}}"


def recipe_of(document: dict[str, Any]) -> Recipe:
    return Recipe.model_validate({"name": "slurm-resources", **document})


def job_fields(job_id: str) -> dict[str, str]:
    """`scontrol show job` of one job as key -> value."""
    text = subprocess.run(
        ["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, check=True
    ).stdout
    return dict(token.split("=", 1) for token in text.split() if "=" in token)


def queued(job_id: str) -> bool:
    out = subprocess.run(
        ["squeue", "-h", "-j", job_id, "-o", "%i"], capture_output=True, text=True, check=False
    ).stdout
    return job_id in out.split()


def slurm_minutes(limit: str) -> int:
    """`00:07:00` or `1-00:00:00` as minutes."""
    days, _, clock = limit.rpartition("-")
    hours, mins, _ = (int(part) for part in clock.split(":"))
    return (int(days or 0) * 24 + hours) * 60 + mins


@pytest.fixture
def executors(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> Iterator[Callable[[Recipe], SlurmJobExecutor]]:
    """Executors on the cluster for one test; their jobs are cancelled whatever happens."""
    made: list[SlurmJobExecutor] = []

    def make(recipe: Recipe) -> SlurmJobExecutor:
        run = RunDir.create(tmp_path / "reports", make_run_id("resources"))
        run.start_heartbeat()
        made.append(SlurmJobExecutor(run, recipe))
        return made[-1]

    yield make
    for executor in made:
        executor.cancel_all()
        executor.run.stop_heartbeat()
    submitted = [job for executor in made for job in executor.job_ids]
    wait_for(lambda: not [job for job in submitted if queued(job)], 30, "no job left behind")


def test_a_services_resources_reach_slurm_and_a_job_that_never_starts_says_when(
    executors: Callable[[Recipe], SlurmJobExecutor],
) -> None:
    recipe = recipe_of(
        {
            "platform": {
                "slurm": {
                    "time_limit": "1-00:00:00",
                    "additional": {"begin": "now+1hour"},
                    "pending_timeout_s": 8,
                }
            },
            "services": {
                "web": {
                    "kind": "command",
                    "command": HTTP_SERVER,
                    "partition": "debug",
                    "cpus_per_task": 1,
                    "memory": "100M",
                    "exclusive": True,
                    "health_timeout_s": 60,
                }
            },
        }
    )
    executor = executors(recipe)
    failure: list[BaseException] = []

    def start() -> None:
        try:
            ServiceManager(recipe, executor.run, executor).endpoint("web")
        except BaseException as err:
            failure.append(err)

    starting = threading.Thread(target=start)
    starting.start()
    job_id = wait_for(lambda: executor.job_ids and executor.job_ids[0], 30, "the job id")
    fields = job_fields(job_id)
    starting.join(timeout=60)
    assert fields["JobState"] == "PENDING", fields
    assert fields["Partition"] == "debug"
    assert fields["MinMemoryNode"] == "100M"
    assert fields["OverSubscribe"] == "NO", "exclusive"
    assert fields["Requeue"] == "0", "--no-requeue"
    assert "TresPerNode" not in fields, "no GPUs asked for"
    # the whole session's bound, not the day of platform.slurm.time_limit
    assert slurm_minutes(fields["TimeLimit"]) == minutes(session_seconds(recipe, 8)) < 24 * 60
    (error,) = failure
    assert isinstance(error, ServiceStartError)
    message = str(error)
    assert f"job {job_id} never started: still queued after" in message, message
    assert "Slurm's reason: BeginTime (its start time has not come)" in message
    # squeue's estimated start: the begin time, an hour away
    assert re.search(
        r"estimated start: \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d \(in (1 h|59 min)\)", message
    )
    assert "Raise pending_timeout_s" in message
    wait_for(lambda: not queued(job_id), 30, "the job to leave the queue")


def requeue(job_id: str) -> None:
    """Slurm's requeue, then its start brought forward: a requeued job waits two minutes."""
    subprocess.run(["scontrol", "requeue", job_id], check=True, capture_output=True)
    wait_for(lambda: job_fields(job_id)["JobState"] == "PENDING", 60, "the job to be requeued")
    subprocess.run(
        ["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True, capture_output=True
    )


def records_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_a_requeued_client_job_does_not_write_its_records_twice(
    executors: Callable[[Recipe], SlurmJobExecutor], tmp_path: Path
) -> None:
    recipe = recipe_of(
        {
            # requeueing allowed, as a site may: the job itself must refuse to run twice
            "platform": {"slurm": {"additional": {"requeue": True}, "time_limit": "00:30:00"}},
            "services": {
                "llm": {"kind": "command", "command": TOKEN_SERVER, "health_timeout_s": 60}
            },
            "clients": {
                "chat": {
                    "kind": "openai",
                    "service": "llm",
                    "partition": "cpu",
                    "cpus_per_task": 1,
                    "memory": "300M",
                    "load": {"levels": [1], "requests": 400, "duration_s": 60, "timeout_s": 30},
                }
            },
        }
    )
    executor = executors(recipe)
    endpoint = ServiceManager(recipe, executor.run, executor).endpoint("llm")
    client = recipe.clients["chat"]
    spec = load_spec(
        tmp_path / "load",
        base_url=endpoint.url,
        model="token-server",
        requests=400,
        duration_s=60,
        timeout_s=30.0,
        dataset=DatasetSpec(input_tokens=8, output_tokens=32),
    )
    Path(spec.records_path).parent.mkdir(parents=True)
    Path(spec.progress_path).parent.mkdir(parents=True)
    handle = executor.submit(
        run_load_task,
        [spec],
        name="client-chat",
        role="client",
        resources=client_resources(client, cases_for(recipe)),
    )
    fields = job_fields(handle.job_id)
    assert fields["Partition"] == "cpu"
    assert fields["MinMemoryNode"] == "300M"
    assert fields["Requeue"] == "1"
    # 5 minutes' start-up, 60 s of load and one 30 s timeout: 7 minutes, not the recipe's 30
    assert slurm_minutes(fields["TimeLimit"]) == client_job_minutes(client, cases_for(recipe)) == 7
    records = Path(spec.records_path)
    wait_for(lambda: records.exists() and len(records_of(records)) >= 5, 60, "some records")
    requeue(handle.job_id)
    wait_for(lambda: not queued(handle.job_id), 180, "the restarted job to end")
    restarted = job_fields(handle.job_id)
    assert restarted["Restarts"] == "1", restarted
    assert restarted["JobState"] == "FAILED", restarted
    # the second run refused before writing anything: every record is the first run's, once
    written = records_of(records)
    ids = [r["request_id"] for r in written]
    assert len(ids) == len(set(ids)) < 400
    assert sorted(ids) == list(range(len(ids)))
    second_start = time.mktime(time.strptime(restarted["StartTime"], "%Y-%m-%dT%H:%M:%S"))
    assert max(r["send_ts"] for r in written) < second_start
    progress = json.loads(Path(spec.progress_path).read_text())
    # what the first run finished (a request in flight when it was stopped left no record)
    assert progress["completed"] + progress["failed"] == len(written), progress
    # and says why, in the job's log and to the driver
    log = handle.stderr_path.read_text()
    assert "client job refuses to run again: Slurm restarted job" in log
    assert "SLURM_RESTART_COUNT=1" in log
    assert handle.exception_text() is not None
    assert "JobRestartError: client job refuses to run again" in str(handle.exception_text())


def test_the_driver_gives_up_a_service_job_slurm_requeued(
    executors: Callable[[Recipe], SlurmJobExecutor],
) -> None:
    recipe = recipe_of(
        {
            "platform": {"slurm": {"additional": {"requeue": True}}},
            "services": {
                "web": {
                    "kind": "command",
                    "command": HTTP_SERVER,
                    "health": {"tcp": True},
                    "health_timeout_s": 60,
                }
            },
        }
    )
    executor = executors(recipe)
    endpoint = ServiceManager(recipe, executor.run, executor).endpoint("web")
    job = endpoint.job
    assert isinstance(job, SlurmJobHandle)
    before = read_rendezvous(executor.run.rendezvous_path("web"))
    subprocess.run(["scontrol", "requeue", job.job_id], check=True, capture_output=True)
    wait_for(job.finished, 30, "the driver to see the requeue")
    assert job.gave_up is not None
    assert job.gave_up.startswith(f"job {job.job_id} was requeued by Slurm after it had started")
    assert job.state() == "CANCELLED (requeued)"
    assert not endpoint.alive()
    wait_for(lambda: not queued(job.job_id), 30, "the job to leave the queue")
    # it never came back: the address the driver read is still the only one
    assert read_rendezvous(executor.run.rendezvous_path("web")) == before


def gpu_partition(cluster: SlurmCluster) -> None:
    """Skip (fail under CI) unless the cluster declares GPUs as a GRES in a `gpu` partition."""
    nodes = subprocess.run(
        ["scontrol", "-o", "show", "node"], capture_output=True, text=True, check=True
    ).stdout
    if "gpu" not in cluster.partitions or not re.search(r"\bGres=gpu:\d", nodes):
        missing_component("slurm", "the cluster declares no GPUs (no Gres=gpu:N, no gpu partition)")


@pytest.mark.parametrize(
    ("request_keys", "tres", "visible", "gpus"),
    [
        ({"gpus_per_node": 1}, "gres:gpu:1", "0", "1"),
        ({"gres": "gpu:2"}, "gres:gpu:2", "0,1", "2"),
    ],
)
def test_a_service_gets_the_gpus_it_asked_for_and_sees_them(
    slurm_cluster: SlurmCluster,
    executors: Callable[[Recipe], SlurmJobExecutor],
    tmp_path: Path,
    request_keys: dict[str, Any],
    tres: str,
    visible: str,
    gpus: str,
) -> None:
    gpu_partition(slurm_cluster)
    seen = tmp_path / "seen.txt"
    line = f'echo "{{gpus}} $CUDA_VISIBLE_DEVICES" > {seen}; exec {HTTP_SERVER}'
    recipe = recipe_of(
        {
            "services": {
                "web": {
                    "kind": "command",
                    "command": f"sh -c '{line}'",
                    "partition": "gpu",
                    # Slurm's devices win over the recipe's (the log says so)
                    "env": {"CUDA_VISIBLE_DEVICES": "7"},
                    "health": {"tcp": True},
                    "health_timeout_s": 60,
                    **request_keys,
                }
            }
        }
    )
    executor = executors(recipe)
    endpoint = ServiceManager(recipe, executor.run, executor).endpoint("web")
    assert endpoint.job is not None
    fields = job_fields(endpoint.job.job_id)
    assert fields["TresPerNode"] == tres, fields
    assert fields["Partition"] == "gpu"
    wait_for(lambda: seen.exists() and seen.read_text().strip(), 30, "the server's line")
    assert seen.read_text().split() == [gpus, visible]
    log = endpoint.job.stderr_path.read_text()
    assert "CUDA_VISIBLE_DEVICES=7 from the recipe ignored: Slurm granted this job " in log


def test_a_benchmarks_client_job_asks_for_its_levels_time_and_resources(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    """Through the whole session: the driver submits each client job with its own keys."""
    load = {"levels": [1], "requests": 6, "duration_s": 30, "timeout_s": 20}
    document = {
        "name": "slurm-client-resources",
        "platform": {"executor": "slurm", "slurm": {"time_limit": "02:00:00"}},
        "services": {"llm": {"kind": "command", "command": TOKEN_SERVER, "health_timeout_s": 60}},
        "clients": {
            "chat": {
                "kind": "openai",
                "service": "llm",
                "model": "token-server",
                "partition": "cpu",
                "memory": "300M",
                "cpus_per_task": 1,
                "dataset": {"input_tokens": 8, "output_tokens": 8},
                "load": load,
            }
        },
        "slo": {"chat": {"error_rate": {"max": 0.0}}},
        "monitor": {"prometheus": False},
    }
    session = run_benchmark(tmp_path, write_recipe(tmp_path / "r.yaml", document), timeout=300)
    assert session.returncode == 0, session.output
    (run,) = session.run_dirs()
    prefix = f"aif-{run.name}-"

    def accounted() -> dict[str, list[str]]:
        out = subprocess.run(
            ["sacct", "-X", "-P", "-n", "-S", "now-1hours", "-o", "JobName,Partition,Timelimit"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        rows = [line.split("|") for line in out.splitlines()]
        return {row[0]: row[1:] for row in rows if row[0].startswith(prefix)}

    jobs = wait_for(lambda: len(found := accounted()) >= 2 and found, 30, "the run's jobs")
    (client,) = [fields for name, fields in jobs.items() if name.startswith(f"{prefix}client-")]
    assert client[0] == "cpu"
    assert slurm_minutes(client[1]) == 6  # 5 minutes' start-up, 30 s and one 20 s timeout
    service = jobs[f"{prefix}service-llm"]
    assert slurm_minutes(service[1]) == minutes(
        session_seconds(recipe_of({k: v for k, v in document.items() if k != "name"}), 300)
    )
