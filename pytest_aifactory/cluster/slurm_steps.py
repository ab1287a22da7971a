"""Jobs as steps of the Slurm allocation the session runs in (`salloc`, a batch job).

On a busy cluster every sbatch job waits in the queue, and a benchmark of many levels would wait
once per level. Inside an allocation the nodes are already the session's: each service, client
and monitoring server starts at once as an `srun` step on nodes chosen from the recipe, and no
job is ever queued. Which nodes do what follows the recipe (`plan_allocation`): every service on
nodes of its own, the clients on nodes no service uses (one client runs at a time, so they
share them), and monitoring on a node to spare, else beside the clients.

A step runs the same pickled call as a submitit job (`submitit`'s `DelayedSubmission`), through
this module's `run_step` on every task, which writes the task's outcome where `StepJob` reads
it. srun is a child of the driver: when the step ends, srun exits; if the driver dies, srun
gets SIGTERM from the kernel and Slurm kills the step.

Steps are started with `--overlap`: on Slurm 22.05 a step otherwise holds its CPUs (and, where
memory is tracked, all the job's memory on its nodes) until it ends, and a long-lived service or
Prometheus would block every later step on the same node ("Requested nodes are busy"). The
placement, not Slurm, keeps a service's nodes free of load. A step is stopped by SIGTERM to its
tasks (`scancel --signal=TERM`: services stop their servers, clients save their records), and
killed (`scancel`, which sends SIGKILL to a step) only when it has not ended within the grace.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_aifactory.atomic import replacing, write_text_atomic
from pytest_aifactory.cluster.base import JobExecutor, JobHandle, JobResources
from pytest_aifactory.cluster.child import dying_with_parent
from pytest_aifactory.cluster.local import JOB_STOP_GRACE_S
from pytest_aifactory.cluster.slurm import (
    SlurmError,
    SlurmJobExecutor,
    effective_settings,
    for_cluster,
)
from pytest_aifactory.cluster.slurm_commands import (
    SlurmCommandError,
    expand_nodelist,
    run_slurm,
    squeue,
)
from pytest_aifactory.services.launch import ServiceLaunch
from pytest_aifactory.services.replicas import replica_instance

if TYPE_CHECKING:
    import submitit

    from pytest_aifactory.cluster.rundir import RunDir
    from pytest_aifactory.recipe import Recipe

ALLOCATION_ENV = "SLURM_JOB_ID"
"""Set by Slurm in `salloc`, in a batch job and in a step: the allocation the session runs in."""
STEP_MODULE = "pytest_aifactory.cluster.slurm_steps"
STEP_EXECUTOR_ENV = {"SUBMITIT_EXECUTOR": "slurm"}
"""Job functions find their rank with `submitit.JobEnvironment()`, which reads Slurm's task
variables (`SLURM_PROCID`, `SLURM_NTASKS`) once told it runs under Slurm."""
RESOURCE_VARIABLES = frozenset(
    {
        "SLURM_CPUS_PER_GPU",
        "SLURM_DISTRIBUTION",
        "SLURM_EXACT",
        "SLURM_EXCLUSIVE",
        "SLURM_GPUS",
        "SLURM_GPUS_PER_NODE",
        "SLURM_GPUS_PER_TASK",
        "SLURM_MEM_PER_CPU",
        "SLURM_MEM_PER_GPU",
        "SLURM_MEM_PER_NODE",
        "SLURM_NNODES",
        "SLURM_NPROCS",
        "SLURM_NTASKS",
        "SLURM_NTASKS_PER_CORE",
        "SLURM_NTASKS_PER_GPU",
        "SLURM_NTASKS_PER_NODE",
        "SLURM_NTASKS_PER_SOCKET",
        "SLURM_OVERCOMMIT",
        "SRUN_CPUS_PER_TASK",
    }
)
"""What srun takes as the defaults of its options, and salloc or sbatch leave set from the
allocation's own request: a step asks for exactly what its job needs, nothing inherited."""
_RESOURCES_REFUSED = re.compile(r"requested|not available", re.IGNORECASE)
"""srun's words when the allocation lacks what a step asks for (CPUs, memory, GPUs)."""
STEP_POLL_S = 0.05
CANCEL_WAIT_S = JOB_STOP_GRACE_S
"""From SIGTERM to a step's tasks to killing it: they stop their servers (each within its own
grace) and save what they measured."""
KILL_WAIT_S = 10.0
RESULT_WAIT_S = 5.0
"""A task's result file, written on a node just before it exits, may take a moment to show on
a shared file system."""


# -- where each job runs ----------------------------------------------------------------------


@dataclass(frozen=True)
class AllocationNeeds:
    """The nodes a recipe's session needs in an allocation."""

    services: dict[str, int]
    """Nodes of each service that runs as a job (an `external` one does not), each replica of
    a service of several its own (`<service>.replica<N>`): replicas run on nodes apart."""
    client_nodes: int
    """The widest client's nodes: clients run one at a time and share them."""
    monitor: bool
    """Prometheus and the pushgateway run as steps (they take a node of their own when one is
    to spare, else they share the clients' first node)."""

    @property
    def exclusive_nodes(self) -> int:
        """Nodes without which services and clients would share a node."""
        return sum(self.services.values()) + self.client_nodes

    @property
    def preferred_nodes(self) -> int:
        return self.exclusive_nodes + (1 if self.monitor else 0)

    def describe(self) -> str:
        parts = [f"service '{name}': {count}" for name, count in self.services.items()]
        parts.append(f"clients: {self.client_nodes}")
        if self.monitor:
            parts.append("monitoring: 1, or beside the clients")
        return ", ".join(parts)


def allocation_needs(recipe: Recipe) -> AllocationNeeds:
    return AllocationNeeds(
        services={
            replica_instance(name, replica): service.nodes
            for name, service in recipe.services.items()
            if service.kind != "external"
            for replica in range(service.replicas)
        },
        client_nodes=max((client.nodes for client in recipe.clients.values()), default=0),
        monitor=recipe.monitor.prometheus,
    )


@dataclass(frozen=True)
class AllocationPlan:
    """Which of the allocation's nodes each job of the session runs on."""

    allocation: str
    nodes: list[str]
    services: dict[str, list[str]]
    clients: list[str]
    monitor: list[str]

    def nodes_for(self, role: str, args: Sequence[Any], count: int) -> list[str]:
        """The nodes of a job of `role` (`service`, `monitor`, `client`) asking for `count`;
        a service is named by its orders (`ServiceLaunch`) among the job's arguments."""
        if role == "service":
            launch = next((a for a in args if isinstance(a, ServiceLaunch)), None)
            name = launch.name if launch is not None else "?"
            pool = self.services.get(name)
            if pool is None:
                raise SlurmError(f"allocation {self.allocation} has no nodes for service '{name}'")
            what = f"service '{name}'"
        elif role == "monitor":
            pool, what = self.monitor, "monitoring"
        else:
            pool, what = self.clients, "the clients"
        if count > len(pool):
            raise SlurmError(
                f"{what}: {count} nodes asked for, allocation {self.allocation} keeps "
                f"{len(pool)} for it ({', '.join(pool) or 'none'})"
            )
        return pool[:count]

    def describe(self) -> str:
        parts = [f"service {name} on {','.join(nodes)}" for name, nodes in self.services.items()]
        if self.clients:
            parts.append(f"clients on {','.join(self.clients)}")
        if self.monitor:
            parts.append(f"monitoring on {','.join(self.monitor)}")
        return f"allocation {self.allocation} ({','.join(self.nodes)}): " + "; ".join(parts)


def plan_allocation(
    allocation: str, needs: AllocationNeeds, nodes: Sequence[str], first: str | None = None
) -> AllocationPlan:
    """Services on nodes of their own, then the clients' nodes; monitoring on a spare node
    (the driver's own, `first`, when it is one of them), else on the clients' first node.
    Too few nodes for services and clients apart is an error that says what is needed."""
    ordered = list(nodes)
    if first in ordered:
        ordered.remove(first)
        ordered.insert(0, first)
    if len(ordered) < needs.exclusive_nodes:
        raise SlurmError(
            f"allocation {allocation} has {len(ordered)} node(s) ({', '.join(ordered)}), the "
            f"recipe needs {needs.exclusive_nodes} to keep services and clients apart "
            f"({needs.describe()}): ask for --nodes={needs.preferred_nodes} "
            f"(`aifactory submit` sizes the allocation from the recipe)"
        )
    spare = len(ordered) > needs.exclusive_nodes
    free = iter(ordered[1:] if needs.monitor and spare else ordered)
    services = {name: [next(free) for _ in range(count)] for name, count in needs.services.items()}
    clients = [next(free) for _ in range(needs.client_nodes)]
    monitor: list[str] = []
    if needs.monitor:
        monitor = [ordered[0]] if spare else (clients or ordered)[:1]
    return AllocationPlan(allocation, list(nodes), services, clients, monitor)


# -- the srun command line ----------------------------------------------------------------------


@dataclass(frozen=True)
class StepRequest:
    """One step: where, how many tasks, what it asks for, and where its files go."""

    allocation: str
    name: str
    nodes: Sequence[str]
    folder: Path
    token: str
    tasks_per_node: int = 1
    cpus_per_task: int | None = None
    memory: str | None = None
    gpus_per_node: int = 0
    gres: str | None = None
    setup: Sequence[str] = ()
    python: str = sys.executable

    @classmethod
    def of(
        cls,
        allocation: str,
        name: str,
        nodes: Sequence[str],
        resources: JobResources,
        folder: Path,
        token: str,
        setup: Sequence[str] = (),
    ) -> StepRequest:
        """A job's resources in a step's terms: the CPUs, memory and GPUs it asks for apply
        within the allocation; its partition, constraint, exclusiveness and time limit were
        the allocation's to choose."""
        return cls(
            allocation=allocation,
            name=name,
            nodes=list(nodes),
            folder=folder,
            token=token,
            tasks_per_node=resources.tasks_per_node,
            cpus_per_task=resources.cpus_per_task,
            memory=resources.memory,
            gpus_per_node=resources.gpus_per_node,
            gres=resources.gres,
            setup=tuple(setup),
        )

    def describe(self) -> str:
        """What the step asks of each node, and how an allocation holds enough of it."""
        cpus = self.tasks_per_node * (self.cpus_per_task or 1)
        asked = f"{self.tasks_per_node} task(s) x {self.cpus_per_task or 1} CPU(s)"
        if self.memory:
            asked += f", {self.memory} of memory"
        if self.gpus_per_node or self.gres:
            asked += f", GPUs {self.gres or self.gpus_per_node}"
        return (
            f"it asks for {asked} on each of {', '.join(self.nodes)}: the allocation must hold "
            f"as much, e.g. salloc --mincpus={cpus}; `aifactory submit` sizes it from the recipe"
        )


def srun_command(request: StepRequest) -> list[str]:
    """`srun` starting `run_step` on every task of the step. Output goes to one file per task,
    `<job>.<step>_<task>_log.out` and `.err`, as submitit's jobs name theirs."""
    folder = request.folder
    argv = [
        "srun",
        f"--jobid={request.allocation}",
        f"--job-name={request.name}",
        f"--nodes={len(request.nodes)}",
        f"--nodelist={','.join(request.nodes)}",
        f"--ntasks={len(request.nodes) * request.tasks_per_node}",
        f"--ntasks-per-node={request.tasks_per_node}",
        "--distribution=block",
        "--overlap",
        "--kill-on-bad-exit=0",
        "--input=none",
        "--export=ALL",
        f"--output={folder}/%j.%s_%t_log.out",
        f"--error={folder}/%j.%s_%t_log.err",
    ]
    if request.cpus_per_task:
        argv.append(f"--cpus-per-task={request.cpus_per_task}")
    if request.memory:
        argv.append(f"--mem={request.memory}")
    if request.gpus_per_node:
        argv.append(f"--gpus-per-node={request.gpus_per_node}")
    if request.gres:
        argv.append(f"--gres={request.gres}")
    command = [request.python, "-u", "-m", STEP_MODULE, str(folder), request.token]
    if request.setup:
        # the recipe's setup lines (module loads) run in each task's shell, as in a batch job
        script = "\n".join(request.setup) + '\nexec "$@"'
        command = ["/bin/bash", "-c", script, "aifactory-step", *command]
    return [*argv, *command]


def step_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The driver's environment for srun, less the allocation's resource defaults."""
    env = {key: value for key, value in environ.items() if key not in RESOURCE_VARIABLES}
    env.update(STEP_EXECUTOR_ENV)
    return env


# -- files a step shares with the driver --------------------------------------------------------


def submission_path(folder: Path, token: str) -> Path:
    return folder / f"{token}_submitted.pkl"


def started_path(folder: Path, token: str) -> Path:
    """Written by task 0 as it starts: the step's id (`<job>.<step>`)."""
    return folder / f"{token}_step"


def result_path(folder: Path, step_id: str, task: int) -> Path:
    return folder / f"{step_id}_{task}_result.pkl"


def srun_log_path(folder: Path, token: str) -> Path:
    """srun's own messages (it refused the step, a node failed); collected with the logs."""
    return folder / f"{token}_srun_log.err"


# -- a step, as the driver sees it --------------------------------------------------------------


class StepFailed(RuntimeError):
    """A task of the step raised; the message is its traceback."""


class StepKilled(RuntimeError):
    """A task of the step ended without a result: killed, or its node failed."""


@dataclass
class StepPaths:
    stdout: Path
    stderr: Path


@dataclass
class StepTask:
    """One task of a step (`Job.task`)."""

    step: StepJob
    index: int

    @property
    def job_id(self) -> str:
        return self.step.job_id

    @property
    def paths(self) -> StepPaths:
        return self.step.task_paths(self.index)

    @property
    def num_tasks(self) -> int:
        return 1

    @property
    def state(self) -> str:
        return self.step.state

    def done(self, force_check: bool = False) -> bool:
        return self.step.done()

    def task(self, task_id: int, /) -> StepTask:
        return self

    def exception(self) -> BaseException | None:
        return self.step.task_exception(self.index)

    def cancel(self, check: bool = True) -> None:
        self.step.cancel(check)


@dataclass
class StepJob:
    """A step started by srun: running while srun runs, its tasks' outcomes in result files."""

    step_id: str
    folder: Path
    num_tasks: int
    srun: subprocess.Popen[bytes]
    cancelled: bool = False
    ended_at: float | None = field(default=None, repr=False)

    @property
    def job_id(self) -> str:
        return self.step_id

    def task_paths(self, index: int) -> StepPaths:
        stem = f"{self.step_id}_{index}_log"
        return StepPaths(stdout=self.folder / f"{stem}.out", stderr=self.folder / f"{stem}.err")

    @property
    def paths(self) -> StepPaths:
        return self.task_paths(0)

    def done(self, force_check: bool = False) -> bool:
        if self.srun.poll() is None:
            return False
        if self.ended_at is None:
            self.ended_at = time.time()
        return True

    @property
    def state(self) -> str:
        if not self.done():
            return "RUNNING"
        if self.cancelled:
            return "CANCELLED"
        return "COMPLETED" if self.srun.returncode == 0 else "FAILED"

    def task(self, task_id: int, /) -> StepTask:
        if not 0 <= task_id < self.num_tasks:
            raise ValueError(f"task {task_id} of step {self.step_id}: it has {self.num_tasks}")
        return StepTask(self, task_id)

    def task_exception(self, index: int) -> BaseException | None:
        """None while running or after success; the task's error when it raised. Raises
        `StepKilled` when it ended without leaving a result."""
        if not self.done():
            return None
        outcome = self._outcome(index)
        if outcome is None:
            raise StepKilled(
                f"task {index} of step {self.step_id} ended without a result "
                f"({self.state}, srun exit status {self.srun.returncode})"
            )
        kind, value = outcome
        return StepFailed(str(value)) if kind == "error" else None

    def exception(self) -> BaseException | None:
        for index in range(self.num_tasks):
            found = self.task_exception(index)
            if found is not None:
                return found
        return None

    def _outcome(self, index: int) -> tuple[str, Any] | None:
        # deferred: unpickling needs submitit's and cloudpickle's modules only after the end
        from submitit.core.utils import pickle_load

        path = result_path(self.folder, self.step_id, index)
        deadline = (self.ended_at or time.time()) + RESULT_WAIT_S
        while not path.exists() and time.time() < deadline:
            time.sleep(0.2)
        if not path.exists():
            return None
        loaded: tuple[str, Any] = pickle_load(path)
        return loaded

    # -- stopping -------------------------------------------------------------------------------

    def terminate(self) -> None:
        """SIGTERM to every task: they stop what they started and save what they have."""
        if self.done():
            return
        self.cancelled = True
        # Slurm 22.05's scancel signals a step's tasks but may still exit non-zero: whether
        # the step ended shows in srun, which the caller waits for
        with contextlib.suppress(SlurmCommandError):
            run_slurm(["scancel", "--signal=TERM", self.step_id])

    def wait(self, timeout_s: float) -> bool:
        """Whether the step ended within `timeout_s`."""
        try:
            self.srun.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return False
        return self.done()

    def kill(self) -> None:
        """scancel (SIGKILL to a step's tasks), then srun itself if it still waits."""
        if self.done():
            return
        self.cancelled = True
        with contextlib.suppress(SlurmCommandError):
            run_slurm(["scancel", self.step_id])
        if not self.wait(KILL_WAIT_S):
            self.srun.kill()
            self.srun.wait()

    def cancel(self, check: bool = True) -> None:
        self.terminate()
        if not self.wait(CANCEL_WAIT_S):
            self.kill()


# -- the executor -------------------------------------------------------------------------------


def allocation_id(mode: str, environ: Mapping[str, str]) -> str | None:
    """The allocation whose steps the jobs become, or None for one sbatch job each."""
    found = environ.get(ALLOCATION_ENV, "").strip() or None
    if mode == "jobs":
        return None
    if mode == "allocation" and found is None:
        raise SlurmError(
            "platform.slurm.mode is 'allocation' but this session runs in no Slurm allocation "
            f"({ALLOCATION_ENV} is not set): start it inside salloc or a batch job, or submit "
            "it with `aifactory submit RECIPE`"
        )
    return found


def allocation_nodes(allocation: str) -> list[str]:
    """The running allocation's nodes, as Slurm lists them."""
    entries = squeue([allocation])
    if entries is None:
        raise SlurmError(f"cannot ask Slurm about allocation {allocation}: squeue gave no answer")
    entry = entries.get(allocation)
    if entry is None or entry.state != "RUNNING":
        state = entry.state if entry is not None else "not in the queue"
        raise SlurmError(f"allocation {allocation} is not running ({state})")
    return expand_nodelist(entry.nodelist)


def slurm_executor(
    run: RunDir, recipe: Recipe | None = None, overrides: Mapping[str, Any] | None = None
) -> JobExecutor:
    """Steps of the allocation the session runs in (`platform.slurm.mode`), else sbatch jobs."""
    settings = effective_settings(recipe, overrides)
    allocation = allocation_id(settings.mode, os.environ)
    if allocation is None:
        return SlurmJobExecutor(run, recipe, overrides)
    return SlurmStepExecutor(run, recipe, overrides, allocation)


class SlurmStepExecutor(JobExecutor):
    """Each job is a step of one allocation, started by srun on the nodes its role has."""

    name = "slurm"
    jobs_outlive_session = False  # steps end with their allocation's session

    def __init__(
        self,
        run: RunDir,
        recipe: Recipe | None,
        overrides: Mapping[str, Any] | None,
        allocation: str,
    ) -> None:
        super().__init__(run)
        if shutil.which("srun") is None:
            raise SlurmError("Slurm's srun is not on PATH: allocation mode starts steps with it")
        self.recipe = recipe
        self.settings = effective_settings(recipe, overrides)
        self.allocation = allocation
        found = allocation_nodes(allocation)
        needs = (
            allocation_needs(recipe)
            if recipe is not None
            else AllocationNeeds(services={}, client_nodes=0, monitor=False)
        )
        self.plan = plan_allocation(allocation, needs, found, os.environ.get("SLURMD_NODENAME"))

    def describe(self) -> str:
        return self.plan.describe()

    def step_name(self, name: str) -> str:
        return f"aif-{self.run.run_id}-{name}"

    def _executor(self, job_name: str, resources: JobResources) -> submitit.Executor:
        raise NotImplementedError("a step is started by srun (`submit`), not by submitit")

    def submit(
        self,
        fn: Callable[..., Any],
        *args: Any,
        name: str,
        role: str,
        resources: JobResources | None = None,
    ) -> JobHandle:
        args, resources = for_cluster(self.recipe, args, resources or JobResources())
        nodes = self.plan.nodes_for(role, args, resources.nodes)
        job = self._start(fn, args, name, nodes, resources)
        handle = JobHandle(name=name, role=role, job=job)
        self._submitted([handle])
        return handle

    def _start(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        name: str,
        nodes: list[str],
        resources: JobResources,
    ) -> StepJob:
        # deferred: pickling the call is all the driver needs of submitit here
        from submitit.core.utils import DelayedSubmission

        folder = self.run.job_folder(name)
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        token = secrets.token_hex(6)
        DelayedSubmission(fn, *args).dump(submission_path(folder, token))
        request = StepRequest.of(
            self.allocation,
            self.step_name(name),
            nodes,
            resources,
            folder,
            token,
            self.settings.setup,
        )
        environment = step_environment(os.environ)
        with srun_log_path(folder, token).open("ab") as log:
            srun = subprocess.Popen(
                dying_with_parent(srun_command(request), environment),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environment,
                start_new_session=True,  # Ctrl-C is the driver's to handle, not srun's
            )
        try:
            step_id = self._await_start(request, srun)
        except BaseException:
            _abandon(srun)
            raise
        return StepJob(step_id, folder, len(nodes) * resources.tasks_per_node, srun)

    def _await_start(self, request: StepRequest, srun: subprocess.Popen[bytes]) -> str:
        """The step's id once its first task runs; srun's refusal as a `SlurmError`."""
        started = started_path(request.folder, request.token)
        limit = self.settings.pending_timeout_s
        deadline = time.monotonic() + limit
        while True:
            if started.exists():
                return started.read_text().strip()
            if srun.poll() is not None:
                if started.exists():
                    return started.read_text().strip()
                said = _srun_says(srun_log_path(request.folder, request.token))
                hint = f" ({request.describe()})" if _RESOURCES_REFUSED.search(said) else ""
                raise SlurmError(f"srun did not start step {request.name}: {said}{hint}")
            if time.monotonic() > deadline:
                said = _srun_says(srun_log_path(request.folder, request.token))
                raise SlurmError(
                    f"step {request.name} did not start within {limit:g} s "
                    f"(pending_timeout_s); srun: {said}"
                )
            time.sleep(STEP_POLL_S)

    def cancel(self, handle: JobHandle) -> None:
        self._stop([handle])

    def cancel_all(self, keep: Collection[JobHandle] = ()) -> list[JobHandle]:
        """Every step but those kept: SIGTERM to all at once, then each gets the grace."""
        kept = {id(h) for h in keep}
        live = [h for h in self.handles if not h.finished() and id(h) not in kept]
        self._stop(live)
        return live

    def _stop(self, handles: Sequence[JobHandle]) -> None:
        steps = [h.job for h in handles if isinstance(h.job, StepJob)]
        for step in steps:
            step.terminate()
        deadline = time.monotonic() + CANCEL_WAIT_S
        for step in steps:
            if not step.wait(max(0.0, deadline - time.monotonic())):
                step.kill()


def _abandon(srun: subprocess.Popen[bytes]) -> None:
    """A step given up before it started: SIGTERM makes srun end its request (and kill the
    step, should it just have started)."""
    with contextlib.suppress(ProcessLookupError):
        srun.terminate()
    try:
        srun.wait(timeout=KILL_WAIT_S)
    except subprocess.TimeoutExpired:
        srun.kill()
        srun.wait()


def _srun_says(log: Path, lines: int = 5) -> str:
    try:
        said = [line.strip() for line in log.read_text(errors="replace").splitlines()]
    except OSError:
        said = []
    said = [line for line in said if line]
    return " / ".join(said[-lines:]) or "nothing"


# -- in the step --------------------------------------------------------------------------------


def run_step(folder: Path, token: str, environ: Mapping[str, str] = os.environ) -> int:
    """What every task of a step runs: the pickled call, its outcome saved for the driver
    (`("success", result)` or `("error", traceback)`, as submitit saves a job's)."""
    step_id = f"{environ['SLURM_JOB_ID']}.{environ['SLURM_STEP_ID']}"
    task = int(environ.get("SLURM_PROCID", "0"))
    if task == 0:
        write_text_atomic(started_path(folder, token), step_id)
    # deferred: the step's interpreter needs submitit only here
    from submitit.core.logger import get_logger
    from submitit.core.utils import DelayedSubmission, cloudpickle_dump

    outcome: tuple[str, Any]
    try:
        outcome = ("success", DelayedSubmission.load(submission_path(folder, token)).result())
    except Exception:
        # submitit's words: the logs' readers drop its report of an exception, as for its jobs
        get_logger().error("Submitted job triggered an exception")
        outcome = ("error", traceback.format_exc())
    with replacing(result_path(folder, step_id, task)) as tmp:
        cloudpickle_dump(outcome, tmp)
    if outcome[0] == "error":
        print(outcome[1], file=sys.stderr, flush=True)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print(f"usage: python -m {STEP_MODULE} FOLDER TOKEN", file=sys.stderr)
        return 2
    return run_step(Path(args[0]), args[1])


if __name__ == "__main__":
    sys.exit(main())
