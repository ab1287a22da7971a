"""A node exporter on every node that runs a service or a client, started by the job itself
(with the node's GPU exporter where it has one: see gpu_exporter).

A node of a cluster is usually allocated to one job at a time, so the exporter cannot be a job
of its own: it runs as a child of the service or client task already there. Several tasks on one
node agree through a lock file that only one of them runs it; the lock is held for the life of
the task that started it (the kernel releases it however that task ends).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pytest_aifactory.cluster.child import first_on_path, start_quiet_child, stop_child
from pytest_aifactory.cluster.rendezvous import free_port
from pytest_aifactory.monitor.gpu_exporter import DEFAULT_PORT as DEFAULT_GPU_PORT
from pytest_aifactory.monitor.gpu_exporter import gpu_exporter
from pytest_aifactory.monitor.layout import monitor_dir
from pytest_aifactory.monitor.targets import Target, base_labels, remove_target, write_target

BINARIES = ("prometheus-node-exporter", "node_exporter")
COLLECTORS = ("cpu", "meminfo", "loadavg", "netdev", "diskstats", "stat", "pressure")
"""Only what the run's charts use: the full default set costs CPU on a busy node every second."""


@dataclass(frozen=True)
class NodeExporterOrder:
    """What a job needs to run its node's exporters (pickled with the job's other orders)."""

    run_root: str
    run_id: str
    gpu_exporter_port: int | None = DEFAULT_GPU_PORT
    """Where a node's own DCGM exporter answers; None: no GPU series."""


def find_node_exporter() -> str | None:
    return first_on_path(*BINARIES)


def exporter_argv(binary: str, host: str, port: int) -> list[str]:
    argv = [binary, f"--web.listen-address={host}:{port}", "--collector.disable-defaults"]
    return argv + [f"--collector.{name}" for name in COLLECTORS]


@contextlib.contextmanager
def node_exporter(order: NodeExporterOrder | None, node: str, host: str) -> Iterator[None]:
    """Run this node's exporters (node series, and GPU series where the node has a DCGM
    exporter) for the duration of the block, unless another task of the run on this node
    already does."""
    if order is None:
        yield
        return
    run_root = Path(order.run_root)
    lock_dir = monitor_dir(run_root) / "nodes"
    lock_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock = os.open(lock_dir / f"{node}.lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # another task of this run on this node runs them
        os.close(lock)
        yield
        return
    try:
        with (
            _node_series(run_root, order.run_id, node, host),
            gpu_exporter(run_root, order.run_id, node, host, order.gpu_exporter_port),
        ):
            yield
    finally:
        os.close(lock)


@contextlib.contextmanager
def _node_series(run_root: Path, run_id: str, node: str, host: str) -> Iterator[None]:
    """The node exporter, announced as a target while it runs (nothing without its binary)."""
    binary = find_node_exporter()
    spawned = _spawn(binary, host) if binary is not None else None
    if spawned is None:
        yield
        return
    proc, port = spawned
    labels = base_labels(run_id, "node", node)
    write_target(run_root, Target("nodes", node, f"{host}:{port}", labels=labels))
    try:
        yield
    finally:
        remove_target(run_root, "nodes", node)
        stop_child(proc)


def _spawn(binary: str, host: str) -> tuple[subprocess.Popen[bytes], int] | None:
    """The running exporter and its port (None when it would not start)."""
    for _ in range(3):  # the port may be taken between choosing and binding it
        port = free_port(host)
        argv = exporter_argv(binary, host, port)
        proc = start_quiet_child(argv, "node exporter")
        if proc is None:
            return None
        time.sleep(0.2)
        if proc.poll() is None:
            print(f"aifactory: node exporter on {argv[1].split('=', 1)[1]}", file=sys.stderr)
            return proc, port
    print("aifactory: node exporter did not stay up", file=sys.stderr, flush=True)
    return None
