"""The function a service job runs: pick the port, announce it, run the server, stay its parent.

It runs inside the job (a local process or a Slurm allocation), never in the driver. The server
is its child with a parent-death signal, so however the job ends the server ends with it.

A service over several nodes is one job with one task per node, and every task runs
`run_service`. Rank 0 is the head: the other ranks wait until the head has announced itself (so
a worker can join it), each rank writes its own rendezvous file, and the head writes the
service's rendezvous, the one the driver waits for, once every rank is up. Kinds whose workers
run something else than the head (vLLM: Ray head + API server on rank 0, Ray workers elsewhere)
give that command as `worker_argv`; `AIFACTORY_ROLE` tells a shared command which one it is.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_aifactory.cluster.child import dying_with_parent, stop_child
from pytest_aifactory.cluster.container import wrap_command
from pytest_aifactory.cluster.node import LOOPBACK, node_address, node_name
from pytest_aifactory.cluster.rendezvous import (
    Rendezvous,
    free_port,
    free_port_block,
    read_rendezvous,
    write_rendezvous,
)
from pytest_aifactory.cluster.restart import refuse_restart
from pytest_aifactory.cluster.rundir import driver_gone
from pytest_aifactory.monitor.node_exporter import node_exporter
from pytest_aifactory.services.base import GPUS

if TYPE_CHECKING:
    from pytest_aifactory.monitor.node_exporter import NodeExporterOrder
    from pytest_aifactory.recipe import Container
    from pytest_aifactory.services.base import MetricsExporter

POLL_S = 0.2
SIGNAL_GRACE_S = 1.0
AUTO_HOST = "auto"
"""`ServiceLaunch.host` meaning "this node's own address", resolved inside the job."""
SCRATCH = "{scratch}"
"""Placeholder of a service's private data folder on the node's local disk."""
VISIBLE_DEVICES = "CUDA_VISIBLE_DEVICES"


class ServiceExited(RuntimeError):
    """The server ended by itself; the driver shows this with the log tail."""


@dataclass(frozen=True)
class ServiceLaunch:
    """One service job's orders (built by the driver, pickled to the job)."""

    name: str
    argv: list[str]
    rendezvous_path: str
    env: dict[str, str] = field(default_factory=dict)
    service: str | None = None
    """The recipe service this server is one replica of (`name` is `<service>.replica<N>`);
    None: the service is `name`."""
    host: str = LOOPBACK
    """Address to bind; `auto` is the address of the node the task runs on."""
    port: int | None = None
    heartbeat_path: str | None = None
    worker_argv: list[str] | None = None
    """What ranks other than 0 run in a multi-node service; None: the same as rank 0."""
    container: Container | None = None
    gpus: bool = False
    """The service asked for GPUs: a container gets the host's GPU driver (`--nv`)."""
    gpus_per_node: int = 0
    """GPUs the service asked for on each node: `{gpus}` where the job is not told what it
    was granted."""
    ranks_timeout_s: float = 600.0
    """How long a rank waits for the others (rank 0 announcing itself, every rank being up)."""
    node_exporter: NodeExporterOrder | None = None
    """Run the node's exporter beside the server (the run is monitored)."""
    ports: int = 1
    """Consecutive ports the server listens on, from the one chosen for `{port}`."""
    own_session: bool = False
    """A local service kept after the session: the task leaves the driver's process group (and
    session), so a Ctrl-C in the driver's terminal does not reach it or its server."""
    exporter: MetricsExporter | None = None
    exporter_web_config: str | None = None
    """The run's monitoring web config, for an exporter that takes one (its `web_config_flag`)."""
    """Run beside the server by rank 0 (a server without metrics of its own)."""
    metrics_port_offset: int = 0
    """The exporter's `{metrics_port}` is the server's port plus this."""


@dataclass(frozen=True)
class TaskPlace:
    """Where this task of the job stands: its rank, the job's size, its node and address."""

    rank: int
    world_size: int
    node: str
    host: str


def fill_placeholders(
    argv: list[str], host: str, port: int, head_host: str | None = None, head_port: int = 0
) -> list[str]:
    """`{host}`, `{port}`, `{head_host}` and `{head_port}` only; other braces (JSON arguments)
    are left alone."""
    head = head_host or host
    return [
        a.replace("{host}", host)
        .replace("{port}", str(port))
        .replace("{head_host}", head)
        .replace("{head_port}", str(head_port or port))
        for a in argv
    ]


def granted_gpus(environ: Mapping[str, str] = os.environ) -> int | None:
    """How many GPUs this task may use, as Slurm (or whoever started it) put them in
    `CUDA_VISIBLE_DEVICES`; None when it says nothing (unset, or Slurm's `NoDevFiles` for a
    GPU without device files)."""
    value = environ.get(VISIBLE_DEVICES)
    if value is None or value.strip() in ("", "NoDevFiles"):
        return None
    return len([device for device in value.split(",") if device.strip()])


def server_environment(
    service_env: Mapping[str, str], environ: Mapping[str, str] = os.environ
) -> dict[str, str]:
    """The job's environment with the service's on top, except the GPUs Slurm granted: inside
    a Slurm job whose `CUDA_VISIBLE_DEVICES` Slurm set, the recipe's value would point the
    server at devices the job does not own, so Slurm's stays (and the log says so)."""
    env = {**environ, **service_env}
    granted = environ.get(VISIBLE_DEVICES)
    if environ.get("SLURM_JOB_ID") and granted is not None:
        if service_env.get(VISIBLE_DEVICES, granted) != granted:
            print(
                f"aifactory: {VISIBLE_DEVICES}={service_env[VISIBLE_DEVICES]} from the recipe "
                f"ignored: Slurm granted this job {VISIBLE_DEVICES}={granted}",
                file=sys.stderr,
                flush=True,
            )
        env[VISIBLE_DEVICES] = granted
    return env


def resolve_host(host: str) -> str:
    return node_address() if host == AUTO_HOST else host


def task_rank() -> tuple[int, int]:
    """(rank, number of tasks) of this task in its submitit job; (0, 1) outside of one."""
    # deferred: submitit is slow to import (it loads asyncio); only service jobs need it
    import submitit

    try:
        env = submitit.JobEnvironment()
    except RuntimeError:
        return 0, 1
    return int(env.global_rank), int(env.num_tasks)


def ranks_dir(rendezvous_path: str | os.PathLike[str]) -> Path:
    """Where the tasks of a multi-node service write one rendezvous file each."""
    path = Path(rendezvous_path)
    return path.parent / f"{path.stem}.ranks"


def rank_path(rendezvous_path: str | os.PathLike[str], rank: int) -> Path:
    return ranks_dir(rendezvous_path) / f"rank-{rank}.json"


def read_ranks(rendezvous_path: str | os.PathLike[str], world_size: int) -> list[Rendezvous]:
    """Every rank's rendezvous, in rank order, or fewer when some ranks are not up yet."""
    found = [read_rendezvous(rank_path(rendezvous_path, r)) for r in range(world_size)]
    return [info for info in found if info is not None]


def _wait_for_head(
    launch: ServiceLaunch, place: TaskPlace, should_stop: Callable[[], bool]
) -> Rendezvous | None:
    """A worker rank starts only once the head has started (it may have to join it)."""
    deadline = time.monotonic() + launch.ranks_timeout_s
    while True:
        head = read_rendezvous(rank_path(launch.rendezvous_path, 0))
        if head is not None:
            return head
        if should_stop():
            return None
        if time.monotonic() > deadline:
            raise ServiceExited(
                f"{launch.name} rank {place.rank} on {place.node}: rank 0 did not start "
                f"within {launch.ranks_timeout_s:g} s"
            )
        time.sleep(POLL_S)


def _command(
    launch: ServiceLaunch, place: TaskPlace, port: int, head: Rendezvous, scratch: str
) -> list[str]:
    argv = launch.argv if place.rank == 0 or launch.worker_argv is None else launch.worker_argv
    argv = fill_placeholders(argv, place.host, port, head.host, head.port)
    argv = [arg.replace(SCRATCH, scratch) for arg in argv] if scratch else argv
    gpus = granted_gpus()
    argv = [arg.replace(GPUS, str(launch.gpus_per_node if gpus is None else gpus)) for arg in argv]
    if launch.container is None:
        return argv
    container = launch.container
    if scratch:  # the server in the image must see its data folder at the same path
        container = container.model_copy(update={"binds": [*container.binds, scratch]})
    return wrap_command(argv, container, launch.gpus)


def _wants_scratch(launch: ServiceLaunch) -> bool:
    texts = [*launch.argv, *(launch.worker_argv or []), *launch.env.values()]
    return any(SCRATCH in text for text in texts)


@contextlib.contextmanager
def _scratch_dir(launch: ServiceLaunch, node: str) -> Iterator[str]:
    """A private folder on the node's local disk for the service's data (a database, stored
    objects), removed when the service ends: a benchmark's data is not worth keeping, and
    node-local disks on clusters are small and shared. Empty when the plan does not use it."""
    if not _wants_scratch(launch):
        yield ""
        return
    base = os.environ.get("TMPDIR") or tempfile.gettempdir()
    path = tempfile.mkdtemp(prefix=f"aifactory-{launch.name}-{node}-", dir=base)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run_service(launch: ServiceLaunch) -> int:
    """Start the server and wait for it; returns only when the server ended."""
    refuse_restart(
        f"service '{launch.name}'",
        "a restarted server would answer at an address the driver does not know",
    )
    job_started_at = time.time()
    rank, world_size = task_rank()
    place = TaskPlace(rank, world_size, node_name(), resolve_host(launch.host))
    with node_exporter(launch.node_exporter, place.node, place.host):
        return _serve(launch, place, job_started_at)


def _should_stop(launch: ServiceLaunch, stop_requested: list[int]) -> bool:
    if stop_requested:
        print("aifactory: job cancelled, stopping", file=sys.stderr, flush=True)
        return True
    if driver_gone(launch.heartbeat_path):
        print("aifactory: driver is gone, stopping", file=sys.stderr, flush=True)
        return True
    return False


def _serve(launch: ServiceLaunch, place: TaskPlace, job_started_at: float) -> int:
    rank = place.rank
    stop_requested: list[int] = []
    stop_signals = [signal.SIGTERM, signal.SIGINT]
    if launch.own_session:  # stopped by SIGTERM only (`aifactory stop`, a cancel)
        with contextlib.suppress(OSError):  # already a session leader
            os.setsid()
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stop_signals.remove(signal.SIGINT)
    for signum in stop_signals:
        signal.signal(signum, lambda sig, _frame: stop_requested.append(sig))

    def should_stop() -> bool:
        return _should_stop(launch, stop_requested)

    port = launch.port or (
        free_port_block(place.host, launch.ports) if launch.ports > 1 else free_port(place.host)
    )
    head = Rendezvous(
        launch.name, place.host, port, place.node, os.getpid(), job_started_at=job_started_at
    )
    if rank > 0:
        found = _wait_for_head(launch, place, should_stop)
        if found is None:
            return 0
        head = found
    with _scratch_dir(launch, place.node) as scratch:
        return _run_server(launch, place, port, head, scratch, job_started_at, stop_requested)


def _run_server(
    launch: ServiceLaunch,
    place: TaskPlace,
    port: int,
    head: Rendezvous,
    scratch: str,
    job_started_at: float,
    stop_requested: list[int],
) -> int:
    rank, world_size = place.rank, place.world_size

    def should_stop() -> bool:
        return _should_stop(launch, stop_requested)

    argv = _command(launch, place, port, head, scratch)
    service_env = {k: v.replace(SCRATCH, scratch) for k, v in launch.env.items()}
    env = {**server_environment(service_env), "AIFACTORY_SERVICE": launch.name}
    env.update(
        {
            "AIFACTORY_HOST": place.host,
            "AIFACTORY_PORT": str(port),
            "AIFACTORY_RANK": str(rank),
            "AIFACTORY_WORLD_SIZE": str(world_size),
            "AIFACTORY_ROLE": "head" if rank == 0 else "worker",
            "AIFACTORY_HEAD_HOST": head.host,
            "AIFACTORY_HEAD_PORT": str(head.port),
            "AIFACTORY_NODE": place.node,
        }
    )
    who = launch.name if world_size == 1 else f"{launch.name} rank {rank}/{world_size}"
    print(
        f"aifactory: starting {who} on {place.node}: {' '.join(argv)}", file=sys.stderr, flush=True
    )
    try:
        proc = subprocess.Popen(dying_with_parent(argv, env), env=env)
    except OSError as err:
        raise ServiceExited(f"cannot start {argv[0]}: {err.strerror or err}") from None
    exporter = _start_exporter(launch, place, port, scratch) if rank == 0 else None
    mine = Rendezvous(
        launch.name,
        place.host,
        port,
        place.node,
        proc.pid,
        job_started_at=job_started_at,
        launched_at=time.time(),
    )
    announced = rank > 0
    if world_size == 1:
        _announce(launch, [mine])
        announced = True
    else:
        ranks_dir(launch.rendezvous_path).mkdir(parents=True, exist_ok=True, mode=0o700)
        write_rendezvous(rank_path(launch.rendezvous_path, rank), mine)
    deadline = time.monotonic() + launch.ranks_timeout_s
    try:
        while proc.poll() is None:
            if should_stop():
                stop_child(proc)
                return 0
            if not announced:
                ranks = read_ranks(launch.rendezvous_path, world_size)
                if len(ranks) == world_size:
                    _announce(launch, ranks)
                    announced = True
                elif time.monotonic() > deadline:
                    up = ", ".join(str(r.node) for r in ranks)
                    raise ServiceExited(
                        f"{launch.name}: only {len(ranks)} of {world_size} ranks started within "
                        f"{launch.ranks_timeout_s:g} s (up: {up})"
                    )
            time.sleep(POLL_S)
    finally:
        stop_child(proc)
        if exporter is not None:
            stop_child(exporter)
    if _cancelled_with_job(proc.returncode, stop_requested):
        print("aifactory: job cancelled, server stopped", file=sys.stderr, flush=True)
        return 0
    raise ServiceExited(f"{who} {describe_exit(proc.returncode)}")


def _start_exporter(
    launch: ServiceLaunch, place: TaskPlace, port: int, scratch: str
) -> subprocess.Popen[bytes] | None:
    """The server's metrics exporter, its output in the job's log. Monitoring must not cost the
    benchmark: an exporter that cannot start is said in the log, and the server runs on."""
    if launch.exporter is None:
        return None
    metrics_port = str(port + launch.metrics_port_offset)

    def fill(text: str) -> str:
        return text.replace("{metrics_port}", metrics_port).replace(SCRATCH, scratch)

    argv = [fill(a) for a in fill_placeholders(launch.exporter.argv, place.host, port)]
    if launch.exporter.web_config_flag and launch.exporter_web_config:
        argv.append(f"{launch.exporter.web_config_flag}={launch.exporter_web_config}")
    env = {
        key: fill(fill_placeholders([value], place.host, port)[0])
        for key, value in launch.exporter.env.items()
    }
    print(f"aifactory: starting exporter: {' '.join(argv)}", file=sys.stderr, flush=True)
    try:
        full_env = {**os.environ, **env}
        return subprocess.Popen(
            dying_with_parent(argv, full_env),
            env=full_env,
            stdout=sys.stderr,
            stderr=sys.stderr,
        )
    except OSError as err:
        print(
            f"aifactory: exporter not started ({err.strerror or err}): no server metrics",
            file=sys.stderr,
            flush=True,
        )
        return None


def _cancelled_with_job(returncode: int, stop_requested: list[int]) -> bool:
    """Slurm signals every process of a cancelled job at once: the server may die of the
    SIGTERM before this job's own handler has run. That is a stop, not a crash."""
    if returncode not in (-signal.SIGTERM, -signal.SIGINT):
        return False
    deadline = time.monotonic() + SIGNAL_GRACE_S
    while not stop_requested and time.monotonic() < deadline:
        time.sleep(0.05)
    return bool(stop_requested)


def _announce(launch: ServiceLaunch, ranks: list[Rendezvous]) -> None:
    """The service's rendezvous: the head's address, and every rank's `host:port`. The job
    started when its head did; the service is launched once its last rank's server is."""
    head = ranks[0]
    launched = [r.launched_at for r in ranks if r.launched_at is not None]
    info = Rendezvous(
        launch.name,
        head.host,
        head.port,
        head.node,
        head.pid,
        nodes=[r.address for r in ranks],
        job_started_at=head.job_started_at,
        launched_at=max(launched) if launched else None,
    )
    write_rendezvous(Path(launch.rendezvous_path), info)


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-returncode).name}"
    return f"exited with code {returncode}"
