"""A node exporter on every node that runs a service or a client, started by the job itself
(with the node's GPU exporter where it has one: see gpu_exporter).

A node of a cluster is usually allocated to one job at a time, so the exporter cannot be a job
of its own: it runs as a child of the service or client task already there. Several tasks on one
node agree that only one of them runs it through a lock held by the node's kernel
(`cluster/node_lock.py`), not a file in the run folder, which may be on Lustre without `flock`;
the lock is held for the life of the task that started it and freed however that task ends.
Each task that runs the exporters writes what ran on its node, and why not, for the summary.

The node exporter listens on the node's address: it takes the run's monitoring credentials
(`--web.config.file`, see credentials.py), so only the run's Prometheus reads the node.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pytest_aifactory import direct_http
from pytest_aifactory.cluster.child import start_quiet_child, stop_child
from pytest_aifactory.cluster.node_lock import node_lock
from pytest_aifactory.cluster.rendezvous import free_port
from pytest_aifactory.monitor.components import (
    DCGM_EXPORTER,
    NODE_EXPORTER,
    ComponentSource,
    ComponentStatus,
    Missing,
    Program,
    locate,
    write_node_status,
)
from pytest_aifactory.monitor.credentials import MonitorCredentials, read_credentials
from pytest_aifactory.monitor.gpu_exporter import DEFAULT_PORT as DEFAULT_GPU_PORT
from pytest_aifactory.monitor.gpu_exporter import gpu_exporter
from pytest_aifactory.monitor.targets import Target, base_labels, remove_target, write_target

COLLECTORS = ("cpu", "meminfo", "loadavg", "netdev", "diskstats", "stat", "pressure")
"""Only what the run's charts use: the full default set costs CPU on a busy node every second."""
STARTUP_S = 15.0
"""How long the exporter may take to answer (from an image: the container starts first)."""


@dataclass(frozen=True)
class NodeExporterOrder:
    """What a job needs to run its node's exporters (pickled with the job's other orders)."""

    run_root: str
    run_id: str
    gpu_exporter_port: int | None = DEFAULT_GPU_PORT
    """Where a node's own DCGM exporter answers; None: no GPU series."""
    node_exporter: ComponentSource = field(
        default_factory=lambda: ComponentSource(NODE_EXPORTER, "PATH")
    )
    dcgm_exporter: ComponentSource = field(
        default_factory=lambda: ComponentSource(DCGM_EXPORTER, "PATH")
    )


def find_node_exporter() -> str | None:
    """The node exporter on this host's PATH."""
    found = locate(ComponentSource(NODE_EXPORTER, "PATH"))
    return found.prefix[0] if isinstance(found, Program) else None


def exporter_argv(binary: str, host: str, port: int, web_config: Path | None = None) -> list[str]:
    return [binary, *exporter_args(host, port, web_config)]


def exporter_args(host: str, port: int, web_config: Path | None = None) -> list[str]:
    """Only the chosen collectors: the defaults would also read folders outside the run (the
    distribution's textfile folder, which any local package may fill)."""
    args = [f"--web.listen-address={host}:{port}", "--collector.disable-defaults"]
    if web_config is not None:
        args.append(f"--web.config.file={web_config}")
    return args + [f"--collector.{name}" for name in COLLECTORS]


@contextlib.contextmanager
def node_exporter(order: NodeExporterOrder | None, node: str, host: str) -> Iterator[None]:
    """Run this node's exporters (node series, and GPU series where the node has a DCGM
    exporter) for the duration of the block, unless another task of the run on this node
    already does."""
    if order is None:
        yield
        return
    run_root = Path(order.run_root)
    with node_lock(f"{run_root.resolve()}|{order.run_id}|{node}|exporters") as held:
        if not held:  # another task of this run on this node runs them
            yield
            return
        with (
            _node_series(order, node, host),
            gpu_exporter(
                run_root,
                order.run_id,
                node,
                host,
                order.gpu_exporter_port,
                order.dcgm_exporter,
            ),
        ):
            yield


@contextlib.contextmanager
def _node_series(order: NodeExporterOrder, node: str, host: str) -> Iterator[None]:
    """The node exporter, announced as a target while it runs (nothing without its program)."""
    run_root = Path(order.run_root)
    program = locate(order.node_exporter, check_runtime=True)
    if isinstance(program, Missing):
        _say(f"node exporter not run: {program.why}")
        write_node_status(run_root, ComponentStatus(NODE_EXPORTER, False, None, program.why, node))
        yield
        return
    credentials = read_credentials(run_root)
    spawned = _spawn(program, host, credentials)
    if spawned is None:
        why = f"{program.source} did not start or answer (see this job's log)"
        write_node_status(run_root, ComponentStatus(NODE_EXPORTER, False, None, why, node))
        yield
        return
    proc, port = spawned
    write_node_status(run_root, ComponentStatus(NODE_EXPORTER, True, program.source, "", node))
    labels = base_labels(order.run_id, "node", node)
    write_target(run_root, Target("nodes", node, f"{host}:{port}", labels=labels))
    try:
        yield
    finally:
        remove_target(run_root, "nodes", node)
        stop_child(proc)


def answers(address: str, timeout_s: float = 1.0, headers: dict[str, str] | None = None) -> bool:
    request = urllib.request.Request(f"http://{address}/metrics", headers=headers or {})
    try:
        with direct_http.urlopen(request, timeout=timeout_s) as reply:
            return bool(reply.status == 200)
    except (OSError, ValueError):
        return False


def _spawn(
    program: Program, host: str, credentials: MonitorCredentials | None
) -> tuple[subprocess.Popen[bytes], int] | None:
    """The running exporter and its port, once it answers (None when it would not)."""
    web_config = credentials.web_config if credentials else None
    headers = credentials.header if credentials else None
    binds = [str(web_config.parent)] if web_config else []
    for _ in range(3):  # the port may be taken between choosing and binding it
        port = free_port(host)
        argv = program.argv(exporter_args(host, port, web_config), binds=binds)
        proc = start_quiet_child(argv, "node exporter")
        if proc is None:
            return None
        deadline = time.monotonic() + STARTUP_S
        while proc.poll() is None:
            if answers(f"{host}:{port}", headers=headers):
                _say(f"node exporter on {host}:{port}: {program.source}")
                return proc, port
            if time.monotonic() > deadline:
                stop_child(proc)
                _say(f"node exporter silent after {STARTUP_S:g} s: {program.source}")
                return None
            time.sleep(0.1)
    _say(f"node exporter did not stay up: {program.source}")
    return None


def _say(text: str) -> None:
    print(f"aifactory: {text}", file=sys.stderr, flush=True)
