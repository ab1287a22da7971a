"""Allocation mode: every job a step (`srun`) of the allocation the session runs in, and
`aifactory submit`, which runs a whole session as one batch job.

The first tests need no cluster: the placement of jobs on an allocation's nodes, the srun
command line built from a job's resources, and the batch script `aifactory submit` writes.
Tests marked `slurm` run on the dev cluster (`bash scripts/slurm-up.sh` as root) and skip,
saying so, without it; each cancels the allocations it made.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cloudpickle
import psutil
import pytest
import yaml

from pytest_aifactory.cli import main as aifactory
from pytest_aifactory.cluster.base import JobResources
from pytest_aifactory.cluster.rundir import RunDir, make_run_id
from pytest_aifactory.cluster.slurm import SlurmError
from pytest_aifactory.cluster.slurm_commands import job_states
from pytest_aifactory.cluster.slurm_steps import (
    STEP_MODULE,
    AllocationNeeds,
    SlurmStepExecutor,
    StepJob,
    StepRequest,
    allocation_id,
    allocation_needs,
    plan_allocation,
    srun_command,
    step_environment,
)
from pytest_aifactory.recipe import Recipe
from pytest_aifactory.services.launch import ServiceLaunch
from tests.factories import recipe_document
from tests.helpers import (
    BENCHMARK,
    REPO,
    benchmark_env,
    run_benchmark_in_allocation,
    wait_for,
    write_recipe,
)

if TYPE_CHECKING:
    from tests.conftest import SlurmCluster

# the functions steps run below are sent whole: a step imports nothing from the tests
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def recipe_of(document: dict[str, Any]) -> Recipe:
    return Recipe.model_validate(document)


# -- placement: no cluster needed ---------------------------------------------------------------


def test_services_clients_and_monitoring_get_nodes_of_their_own() -> None:
    recipe = recipe_of(
        recipe_document(
            services={"llm": {"kind": "llamacpp", "nodes": 2}, "db": {"kind": "postgres"}},
            clients={
                "chat": {"kind": "openai", "service": "llm", "nodes": 2},
                "bank": {"kind": "sql", "service": "db"},
            },
        )
    )
    needs = allocation_needs(recipe)
    assert needs == AllocationNeeds(services={"llm": 2, "db": 1}, client_nodes=2, monitor=True)
    nodes = ["n1", "n2", "n3", "n4", "n5", "n6"]
    plan = plan_allocation("7", needs, nodes, first="n4")
    assert plan.monitor == ["n4"], "monitoring beside the driver, on its own node"
    assert plan.services == {"llm": ["n1", "n2"], "db": ["n3"]}
    assert plan.clients == ["n5", "n6"], "clients share nodes no service uses"
    llm = ServiceLaunch(name="llm", argv=["x"], rendezvous_path="r")
    assert plan.nodes_for("service", (llm,), 2) == ["n1", "n2"]
    assert plan.nodes_for("client", ([],), 1) == ["n5"]
    assert plan.nodes_for("monitor", (), 1) == ["n4"]
    with pytest.raises(SlurmError, match=r"the clients: 3 nodes asked for, allocation 7 keeps 2"):
        plan.nodes_for("client", (), 3)


def test_without_a_node_to_spare_monitoring_goes_beside_the_clients() -> None:
    needs = allocation_needs(recipe_of(recipe_document()))
    plan = plan_allocation("7", needs, ["n1", "n2"])
    assert plan.services == {"llm": ["n1"]}
    assert plan.clients == ["n2"]
    assert plan.monitor == ["n2"]


def test_an_external_service_and_no_monitoring_need_no_node() -> None:
    recipe = recipe_of(
        recipe_document(
            service={"kind": "external", "url": "http://10.0.0.1:8000"},
            monitor={"prometheus": False},
        )
    )
    needs = allocation_needs(recipe)
    assert needs.preferred_nodes == 1
    plan = plan_allocation("7", needs, ["n1"])
    assert (plan.services, plan.clients, plan.monitor) == ({}, ["n1"], [])


def test_too_small_an_allocation_says_what_the_recipe_needs() -> None:
    recipe = recipe_of(recipe_document(client={"nodes": 2}))
    with pytest.raises(SlurmError) as err:
        plan_allocation("7", allocation_needs(recipe), ["n1", "n2"])
    message = str(err.value)
    assert "allocation 7 has 2 node(s) (n1, n2), the recipe needs 3" in message
    assert "service 'llm': 1, clients: 2" in message
    assert "--nodes=4" in message, "with a node for monitoring"


@pytest.mark.parametrize(
    ("mode", "environ", "expected"),
    [
        ("auto", {"SLURM_JOB_ID": "42"}, "42"),
        ("auto", {}, None),
        ("jobs", {"SLURM_JOB_ID": "42"}, None),
        ("allocation", {"SLURM_JOB_ID": "42"}, "42"),
    ],
)
def test_mode_decides_steps_or_jobs(mode: str, environ: dict[str, str], expected: str) -> None:
    assert allocation_id(mode, environ) == expected


def test_allocation_mode_outside_an_allocation_is_refused() -> None:
    with pytest.raises(SlurmError, match="runs in no Slurm allocation"):
        allocation_id("allocation", {})


# -- the srun command line: no cluster needed -------------------------------------------------


def test_srun_command_from_a_jobs_resources(tmp_path: Path) -> None:
    resources = JobResources(
        nodes=2,
        tasks_per_node=4,
        cpus_per_task=2,
        memory="8G",
        gpus_per_node=1,
        partition="gpu",
        constraint="a100",
        exclusive=True,
        time_limit_min=30,
    )
    request = StepRequest.of("42", "aif-run-client-x", ["n2", "n3"], resources, tmp_path, "tok")
    argv = srun_command(request)
    assert argv[0] == "srun"
    options, command = argv[: argv.index(sys.executable)], argv[argv.index(sys.executable) :]
    assert set(options[1:]) == {
        "--jobid=42",
        "--job-name=aif-run-client-x",
        "--nodes=2",
        "--nodelist=n2,n3",
        "--ntasks=8",
        "--ntasks-per-node=4",
        "--distribution=block",
        "--overlap",
        "--kill-on-bad-exit=0",
        "--input=none",
        "--export=ALL",
        f"--output={tmp_path}/%j.%s_%t_log.out",
        f"--error={tmp_path}/%j.%s_%t_log.err",
        "--cpus-per-task=2",
        "--mem=8G",
        "--gpus-per-node=1",
    }, "partition, constraint, exclusive and time limit are the allocation's"
    assert command == [sys.executable, "-u", "-m", STEP_MODULE, str(tmp_path), "tok"]


def test_srun_asks_only_for_what_the_job_gives(tmp_path: Path) -> None:
    request = StepRequest.of("42", "s", ["n1"], JobResources(gres="gpu:a100:2"), tmp_path, "t")
    options = " ".join(srun_command(request))
    assert "--gres=gpu:a100:2" in options
    for absent in ("--cpus-per-task", "--mem", "--gpus-per-node"):
        assert absent not in options


def test_setup_lines_run_in_each_tasks_shell(tmp_path: Path) -> None:
    request = StepRequest.of(
        "42", "s", ["n1"], JobResources(), tmp_path, "t", ["module load Apptainer", "export A=1"]
    )
    argv = srun_command(request)
    at = argv.index("/bin/bash")
    assert argv[at : at + 4] == [
        "/bin/bash",
        "-c",
        'module load Apptainer\nexport A=1\nexec "$@"',
        "aifactory-step",
    ]
    assert argv[at + 4 :] == [sys.executable, "-u", "-m", STEP_MODULE, str(tmp_path), "t"]


def test_steps_inherit_no_resource_defaults_of_the_allocation() -> None:
    env = step_environment(
        {
            "PATH": "/bin",
            "SLURM_JOB_ID": "42",
            "SLURM_NTASKS": "3",
            "SLURM_NTASKS_PER_NODE": "1",
            "SRUN_CPUS_PER_TASK": "4",
            "SLURM_MEM_PER_CPU": "100",
        }
    )
    assert env == {"PATH": "/bin", "SLURM_JOB_ID": "42", "SUBMITIT_EXECUTOR": "slurm"}


# -- aifactory submit without a cluster ---------------------------------------------------------


def submit_recipe(tmp_path: Path, **changes: Any) -> Path:
    document = recipe_document(
        name="submitted",
        service={"cpus_per_task": 6, "memory": "2G", "gpus_per_node": 2, "partition": "gpu"},
        client={"nodes": 2, "processes_per_node": 3, "memory": "3000"},
        platform={"slurm": {"account": "p1", "partition": "cpu", "time_limit": "00:20:00"}},
        **changes,
    )
    return write_recipe(tmp_path / "recipe.yaml", document)


def run_cli(*argv: str) -> tuple[int, str, str]:
    """`aifactory ARGV` in this process, with its exit status, stdout and stderr."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = aifactory(list(argv))
    return code, out.getvalue(), err.getvalue()


def sbatch_options(script: str) -> dict[str, str]:
    options = {}
    for line in script.splitlines():
        if line.startswith("#SBATCH --"):
            key, _, value = line.removeprefix("#SBATCH --").partition("=")
            options[key] = value
    return options


def test_submit_sizes_the_allocation_from_the_recipe(tmp_path: Path) -> None:
    recipe = submit_recipe(tmp_path)
    code, out, err = run_cli(
        "submit",
        str(recipe),
        "--benchmarks",
        str(BENCHMARK),
        "--report-dir",
        str(tmp_path / "reports"),
        "--qos",
        "short",
        "--dry-run",
        "--",
        "-k",
        "concurrency-1",
        "-x",
    )
    assert code == 0, err
    options = sbatch_options(out)
    assert options["nodes"] == "4", "1 service node, 2 client nodes, 1 for monitoring"
    assert options["mincpus"] == "6", "the service's 6 CPUs (clients: 3 processes x 1)"
    assert options["mem"] == "3000", "the largest memory asked for (3000 MB > 2G)"
    assert options["gpus-per-node"] == "2"
    assert options["time"] == "20", "never above platform.slurm.time_limit"
    assert (options["account"], options["partition"], options["qos"]) == ("p1", "cpu", "short")
    assert "no-requeue" in options
    assert options["signal"] == "B:TERM@120", "SIGTERM to the session before the time limit"
    run_dir = tmp_path / "reports"
    assert options["output"].startswith(f"{run_dir}/")
    assert options["output"].endswith("-submitted/jobs/session/%j_0_log.out")
    command = out.strip().splitlines()[-1]
    assert command.startswith(f"exec {sys.executable} -m pytest {BENCHMARK} --recipe {recipe}")
    assert "--executor slurm --slurm-mode allocation" in command
    assert command.endswith(f"--report-dir {run_dir} -k concurrency-1 -x")
    assert "export AIFACTORY_RUN_DIR=" in out
    assert "note: not used" not in err, "nothing printed but the script on a dry run"
    assert not run_dir.exists(), "a dry run makes no run folder"


@pytest.fixture
def sbatch_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An `sbatch` first on PATH that records its calls and submits nothing."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "sbatch.log"
    shim = bin_dir / "sbatch"
    shim.write_text(f'#!/bin/sh\necho "$*" >> {log}\necho 987654\n')
    shim.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return log


def test_submit_refuses_a_bad_recipe_before_sbatch(tmp_path: Path, sbatch_log: Path) -> None:
    missing = run_cli("submit", str(tmp_path / "nowhere.yaml"))
    assert missing[0] == 2
    assert "nowhere.yaml: no such recipe file" in missing[2]
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nservices:\n  llm: {kind: llamacpp, nodes: 0}\n")
    code, _, err = run_cli("submit", str(bad), "--benchmarks", str(BENCHMARK))
    assert code == 1
    assert "services.llm.nodes" in err
    assert "Traceback" not in err
    nowhere = run_cli("submit", str(submit_recipe(tmp_path)), "--benchmarks", "nowhere/")
    assert nowhere[0] == 2
    assert "nowhere/: no such benchmark folder" in nowhere[2]
    assert not sbatch_log.exists(), "no sbatch for a refused recipe"
    # the same call with the recipe right does reach sbatch (the shim answers as it does)
    good = run_cli("submit", str(submit_recipe(tmp_path)), "--benchmarks", str(BENCHMARK))
    assert good[0] == 0, good[2]
    assert sbatch_log.read_text().startswith("--parsable ")


def test_submit_records_the_run_before_it_starts(tmp_path: Path, sbatch_log: Path) -> None:
    recipe = submit_recipe(tmp_path)
    reports = tmp_path / "reports"
    code, out, err = run_cli(
        "submit", str(recipe), "--benchmarks", str(BENCHMARK), "--report-dir", str(reports)
    )
    assert code == 0, err
    assert out == "987654\n", "the job id alone on stdout"
    (run,) = [p for p in reports.iterdir() if p.is_dir()]
    assert f"run {run.name} ({run})" in err
    assert "services.llm.partition" in err, "a key the allocation decides instead is named"
    record = json.loads((run / "jobs.json").read_text())
    assert record["status"] == "submitted"
    (job,) = record["jobs"]
    assert (job["name"], job["role"], job["job_id"]) == ("session", "session", "987654")
    assert job["stdout"] == str(run / "jobs" / "session" / "987654_0_log.out")
    script = (run / "jobs" / "session" / "submission.sh").read_text()
    assert f"export AIFACTORY_RUN_DIR={run}" in script
    code, status, _ = run_cli("status", run.name)
    assert code == 0
    assert "status   submitted" in status
    assert re.search(r"session\s+session\s+987654\s", status), status


# -- steps on the dev cluster -------------------------------------------------------------------


def salloc(nodes: int, name: str) -> str:
    """A new allocation of `nodes` nodes (no shell), its job id."""
    done = subprocess.run(
        ["salloc", "--no-shell", f"--nodes={nodes}", "--mincpus=2", f"--job-name={name}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    found = re.search(r"Granted job allocation (\d+)", done.stderr)
    assert found, f"salloc failed: {done.stderr}"
    return found.group(1)


def scancel_and_wait(job_id: str) -> None:
    subprocess.run(["scancel", job_id], check=False, timeout=30)
    wait_for(lambda: job_id not in queued_ids(), 60, f"allocation {job_id} gone from squeue")


def queued_ids() -> list[str]:
    out = subprocess.run(
        ["squeue", "-h", "-o", "%i"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    return out.split()


def queued_steps(allocation: str) -> list[str]:
    out = subprocess.run(
        ["squeue", "-h", "-s", "-j", allocation, "-o", "%i"],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    ).stdout
    return [step for step in out.split() if step.startswith(f"{allocation}.")]


@pytest.fixture(scope="module")
def allocation(slurm_cluster: SlurmCluster) -> Iterator[str]:
    """Two nodes of the cluster, held for this module's step tests and given back after them
    (each test stops the steps it started)."""
    job_id = salloc(2, f"aif-test-{uuid.uuid4().hex[:8]}")
    try:
        yield job_id
    finally:
        scancel_and_wait(job_id)


@pytest.fixture
def step_executor(allocation: str, tmp_path: Path) -> Iterator[Callable[..., SlurmStepExecutor]]:
    """Executors whose jobs are steps of `allocation`, for a recipe of clients only; every
    step they started is stopped after the test."""
    made: list[SlurmStepExecutor] = []

    def make(**client: Any) -> SlurmStepExecutor:
        recipe = recipe_of(
            {
                "name": "steps",
                "clients": {"disk": {"kind": "fio", "nodes": 2, **client}},
                "monitor": {"prometheus": False},
            }
        )
        run = RunDir.create(tmp_path / "reports", make_run_id("steps"))
        made.append(SlurmStepExecutor(run, recipe, None, allocation))
        return made[-1]

    yield make
    for executor in made:
        executor.cancel_all()


def where_am_i() -> dict[str, Any]:
    import os

    import submitit

    env = submitit.JobEnvironment()
    return {
        "rank": env.global_rank,
        "tasks": env.num_tasks,
        "node": os.environ["SLURMD_NODENAME"],
        "step": os.environ["SLURM_STEP_ID"],
    }


def fails() -> None:
    raise ValueError("the load went wrong")


def waits_for_sigterm(flag: str) -> str:
    import signal
    import time
    from pathlib import Path

    stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: stop.append(signum))
    Path(flag).with_suffix(".started").touch()
    while not stop:
        time.sleep(0.05)
    Path(flag).write_text("stopped by SIGTERM")
    return "stopped"


@pytest.mark.slurm
def test_a_step_runs_every_task_on_the_clients_nodes(
    step_executor: Callable[..., SlurmStepExecutor],
) -> None:
    from submitit.core.utils import pickle_load

    executor = step_executor()
    handle = executor.submit(
        where_am_i, name="client-a", role="client", resources=JobResources(2, 2)
    )
    assert re.fullmatch(rf"{executor.allocation}\.\d+", handle.job_id)
    wait_for(handle.finished, 60, "the step's end")
    assert handle.state() == "COMPLETED"
    assert handle.task_errors() == {}
    assert isinstance(handle.job, StepJob)
    step = handle.job_id
    results = [pickle_load(p) for p in sorted(handle.stdout_path.parent.glob("*_result.pkl"))]
    nodes = executor.plan.clients
    assert [outcome for outcome, _ in results] == ["success"] * 4
    assert [(r["rank"], r["tasks"], r["node"]) for _, r in results] == [
        (0, 4, nodes[0]),
        (1, 4, nodes[0]),
        (2, 4, nodes[1]),
        (3, 4, nodes[1]),
    ], "ranks node by node, as in a batch job"
    assert {r["step"] for _, r in results} == {step.split(".")[1]}
    assert handle.stdout_path == handle.stdout_path.parent / f"{step}_0_log.out"
    assert handle.stdout_path.exists()
    states = job_states([step])
    assert states is not None
    assert states[step].state == "COMPLETED"


@pytest.mark.slurm
def test_a_failed_task_says_why(step_executor: Callable[..., SlurmStepExecutor]) -> None:
    handle = step_executor().submit(fails, name="client-b", role="client")
    wait_for(handle.finished, 60, "the step's end")
    assert handle.state() == "FAILED"
    assert handle.exception_text() == "ValueError: the load went wrong"
    assert handle.task_errors() == {0: "ValueError: the load went wrong"}
    assert "Traceback" not in handle.log_tail(), "the report of the exception is left out"
    assert "ValueError: the load went wrong" in handle.stderr_path.read_text()
    states = job_states([handle.job_id])
    assert states is not None
    assert states[handle.job_id].state == "FAILED"


@pytest.mark.slurm
def test_a_cancelled_step_stops_by_sigterm(
    step_executor: Callable[..., SlurmStepExecutor], allocation: str, tmp_path: Path
) -> None:
    flag = tmp_path / "flag"
    executor = step_executor()
    handle = executor.submit(waits_for_sigterm, str(flag), name="client-c", role="client")
    wait_for(flag.with_suffix(".started").exists, 60, "the step's start")
    assert queued_steps(allocation) == [handle.job_id]
    states = job_states([handle.job_id])
    assert states is not None
    assert states[handle.job_id].state == "RUNNING"
    assert executor.cancel_all() == [handle]
    assert flag.read_text() == "stopped by SIGTERM", "stopped, not killed"
    assert handle.state() == "CANCELLED"
    assert queued_steps(allocation) == []


@pytest.mark.slurm
def test_srun_refusing_a_step_is_a_clear_error(
    step_executor: Callable[..., SlurmStepExecutor], allocation: str
) -> None:
    executor = step_executor(cpus_per_task=512)
    with pytest.raises(SlurmError) as err:
        executor.submit(
            where_am_i, name="client-d", role="client", resources=JobResources(cpus_per_task=512)
        )
    message = str(err.value)
    assert re.search(r"srun did not start step aif-.*-client-d: .*More processors", message)
    assert "1 task(s) x 512 CPU(s)" in message
    assert "salloc --mincpus=512" in message
    assert executor.handles == []
    assert queued_steps(allocation) == []


ORPHAN = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from pytest_aifactory.cluster.base import JobResources
    from pytest_aifactory.cluster.rundir import RunDir
    from pytest_aifactory.cluster.slurm_steps import SlurmStepExecutor
    from pytest_aifactory.recipe import Recipe

    def forever():
        import time
        while True:
            time.sleep(1)

    recipe = Recipe.model_validate(
        {"name": "orphan", "clients": {"disk": {"kind": "fio", "nodes": 2}},
         "monitor": {"prometheus": False}}
    )
    run = RunDir.create(Path(sys.argv[2]), "orphan")
    executor = SlurmStepExecutor(run, recipe, None, sys.argv[1])
    handle = executor.submit(forever, name="client", role="client", resources=JobResources(2))
    print(handle.job_id, flush=True)
    time.sleep(600)
    """
)


@pytest.mark.slurm
def test_steps_end_when_the_driver_is_killed(allocation: str, tmp_path: Path) -> None:
    driver = subprocess.Popen(
        [sys.executable, "-c", ORPHAN, allocation, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert driver.stdout is not None
        step = driver.stdout.readline().strip()
        assert queued_steps(allocation) == [step]
    finally:
        driver.kill()
        driver.wait()
    wait_for(lambda: not queued_steps(allocation), 30, "the step ending with its driver")


# -- whole sessions on the dev cluster ----------------------------------------------------------


def small_default_recipe() -> dict[str, Any]:
    """The default recipe cut down: two levels of 6 requests of 16 output tokens."""
    document = yaml.safe_load((REPO / "recipes" / "llamacpp-smollm2.yaml").read_text())
    chat = document["clients"]["chat"]
    chat["load"].update(levels=[1, 2], requests=6, warmup_requests=1)
    chat["dataset"]["output_tokens"] = 16
    # a shared 2-core machine: the numbers vary, the run must not
    document["slo"] = {"chat": {"error_rate": {"max": 0.0}}}
    return document


def sbatch_spy(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """An environment whose `sbatch` records each call before submitting for real."""
    real = subprocess.run(["which", "sbatch"], capture_output=True, text=True).stdout.strip()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "sbatch.log"
    log.touch()
    spy = bin_dir / "sbatch"
    spy.write_text(f'#!/bin/sh\necho "$*" >> {log}\nexec {real} "$@"\n')
    spy.chmod(0o755)
    env = benchmark_env(tmp_path, {"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    return env, log


def sacct_steps(job_id: str) -> dict[str, tuple[str, str]]:
    """Every job and step of allocation `job_id` in Slurm's accounting: id -> (name, state)."""
    out = subprocess.run(
        ["sacct", "-n", "-P", "-j", job_id, "-o", "JobID,JobName,State"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    rows = {}
    for line in out.splitlines():
        job, name, state = line.split("|")
        rows[job] = (name, state.split()[0])
    return rows


@pytest.mark.requires("llama-server")
@pytest.mark.slurm
def test_default_recipe_inside_salloc_runs_as_steps(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    recipe = write_recipe(tmp_path / "recipe.yaml", small_default_recipe())
    env, calls = sbatch_spy(tmp_path)
    session = run_benchmark_in_allocation(
        tmp_path,
        recipe,
        # steps cannot outlive the session: asked to keep services, it says so and keeps none
        "--keep-services",
        timeout=420,
        env=env,
    )
    output = session.output
    assert session.returncode == 0, output
    granted = re.search(r"Granted job allocation (\d+)", output)
    assert granted, output
    job = granted.group(1)
    assert calls.read_text() == "", "no sbatch call inside an allocation"
    assert "--keep-services keeps nothing here" in output
    assert re.search(rf"allocation {job} \(n\S+\): service llm on n\S+; clients on", output)
    (run,) = [p for p in (tmp_path / "reports").iterdir() if p.is_dir()]
    rows = wait_for(
        lambda: (found := sacct_steps(job)) and len(found) >= 5 and found, 30, "sacct's steps"
    )
    jobs = [row for row in rows if "." not in row]
    assert jobs == [job], f"one job, the allocation: {rows}"
    prefix = f"aif-{run.name}-"
    steps = [name for step, (name, _) in rows.items() if step.startswith(f"{job}.")]
    assert all(name.startswith(prefix) for name in steps), rows
    roles = sorted(name.removeprefix(prefix) for name in steps)
    clients = [name for name in roles if name.startswith("client-")]
    assert clients, rows
    assert roles == sorted(
        ["service-llm", "monitor-prometheus", "monitor-pushgateway", *clients]
    ), rows
    assert all(state in ("COMPLETED", "CANCELLED") for _, state in rows.values()), rows
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "complete"
    assert [t["counts"]["completed"] for t in summary["tests"]] == [6, 6]
    assert (run / "records.parquet").is_file()
    assert (run / "report.html").is_file()
    record = json.loads((run / "jobs.json").read_text())
    assert {j["job_id"].split(".")[0] for j in record["jobs"]} == {job}
    assert job not in queued_ids()


@pytest.mark.requires("llama-server")
@pytest.mark.slurm
def test_too_small_an_allocation_fails_the_tests_saying_why(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    recipe = write_recipe(tmp_path / "recipe.yaml", small_default_recipe())
    name = f"aif-test-{uuid.uuid4().hex[:8]}"
    try:
        session = subprocess.run(
            [
                *("salloc", "--nodes=1", f"--job-name={name}", sys.executable, "-m", "pytest"),
                *(str(BENCHMARK), "--recipe", str(recipe), "--executor", "slurm"),
                *("--report-dir", str(tmp_path / "reports"), "-p", "no:cacheprovider"),
            ],
            capture_output=True,
            text=True,
            timeout=180,
            cwd=tmp_path,
            env=benchmark_env(tmp_path),
        )
    finally:
        subprocess.run(["scancel", f"--name={name}"], check=False, timeout=30)
    assert session.returncode == 1, session.stdout + session.stderr
    assert "has 1 node(s)" in session.stdout
    assert "the recipe needs 2" in session.stdout
    assert "Traceback" not in session.stdout


@pytest.mark.requires("llama-server")
@pytest.mark.slurm
def test_submit_runs_a_recipe_to_a_finished_report(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    recipe = write_recipe(tmp_path / "recipe.yaml", small_default_recipe())
    reports = tmp_path / "reports"
    done = subprocess.run(
        [
            *(sys.executable, "-m", "pytest_aifactory.cli", "submit", str(recipe)),
            *("--benchmarks", str(BENCHMARK), "--report-dir", str(reports)),
            *("--", "-p", "no:cacheprovider", "-k", "concurrency-1 or concurrency-2"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=benchmark_env(tmp_path),
    )
    assert done.returncode == 0, done.stderr
    job = done.stdout.strip()
    assert job.isdigit(), done.stdout
    try:
        (run,) = [p for p in reports.iterdir() if p.is_dir()]
        status = subprocess.run(
            [sys.executable, "-m", "pytest_aifactory.cli", "status", str(run)],
            capture_output=True,
            text=True,
            timeout=60,
            env=benchmark_env(tmp_path),
        ).stdout
        assert re.search(rf"session\s+session\s+{job}\s+(PENDING|RUNNING)", status), status
        wait_for(lambda: job not in queued_ids(), 420, f"batch job {job} to end", poll_s=2)
    finally:
        subprocess.run(["scancel", job], check=False, timeout=30)
    log = (run / "jobs" / "session" / f"{job}_0_log.out").read_text()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "complete", log
    assert [t["passed"] for t in summary["tests"]] == [True, True], log
    assert (run / "report.html").is_file(), log
    assert "2 passed" in log
    record = json.loads((run / "jobs.json").read_text())
    roles = {j["name"]: j["role"] for j in record["jobs"]}
    assert roles["session"] == "session"
    assert roles["service-llm"] == "service"
    steps = sacct_steps(job)
    assert [row for row in steps if "." not in row] == [job], steps
    assert f"{job}.batch" in steps
    assert any(name.endswith("-service-llm") for name, _ in steps.values())
    shown = subprocess.run(
        [sys.executable, "-m", "pytest_aifactory.cli", "logs", run.name, "session"],
        capture_output=True,
        text=True,
        timeout=60,
        env=benchmark_env(tmp_path),
    ).stdout
    assert "2 passed" in shown


@pytest.mark.requires("llama-server")
@pytest.mark.slurm
def test_ctrl_c_ends_every_step_of_the_session(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    document = small_default_recipe()
    document["clients"]["chat"]["load"].update(levels=[1], requests=500)
    recipe = write_recipe(tmp_path / "recipe.yaml", document)
    name = f"aif-test-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "session.log"
    with log.open("w") as sink:
        session = subprocess.Popen(
            [
                *("salloc", "--nodes=3", f"--job-name={name}", sys.executable, "-m", "pytest"),
                *(str(BENCHMARK), "--recipe", str(recipe), "--executor", "slurm"),
                *("--report-dir", str(tmp_path / "reports"), "-p", "no:cacheprovider"),
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env=benchmark_env(tmp_path),
        )
    try:
        granted = wait_for(
            lambda: re.search(r"Granted job allocation (\d+)", log.read_text()), 120, "salloc"
        )
        job = granted.group(1)

        def client_running() -> bool:
            out = subprocess.run(
                ["squeue", "-h", "-s", "-j", job, "-o", "%j"],
                capture_output=True,
                text=True,
                check=False,
                timeout=30,
            ).stdout
            return "-client-" in out

        wait_for(client_running, 180, "the client's step", poll_s=0.5)
        # a terminal's Ctrl-C reaches the command salloc runs (salloc gives it the terminal)
        (driver,) = psutil.Process(session.pid).children()
        driver.send_signal(signal.SIGINT)
        session.wait(timeout=120)
    finally:
        if session.poll() is None:
            session.kill()
            session.wait()
        subprocess.run(["scancel", f"--name={name}"], check=False, timeout=30)
    output = log.read_text()
    (run,) = [p for p in (tmp_path / "reports").iterdir() if p.is_dir()]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted", output
    record = json.loads((run / "jobs.json").read_text())
    states = {j["name"]: j["state"] for j in record["jobs"]}
    assert states["service-llm"] == "CANCELLED", states
    assert all(state in ("CANCELLED", "COMPLETED") for state in states.values()), states
    assert queued_steps(job) == []
    assert job not in queued_ids()
    rows = sacct_steps(job)
    assert [row for row in rows if "." not in row] == [job], rows
