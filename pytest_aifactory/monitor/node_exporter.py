"""A node exporter on every node that runs a service or a client, started by the job itself.

A node of a cluster is usually allocated to one job at a time, so the exporter cannot be a job
of its own: it runs as a child of the service or client task already there. Several tasks on one
node agree through a lock file that only one of them runs it; the lock is held for the life of
the task that started it (the kernel releases it however that task ends).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pytest_aifactory.cluster.rendezvous import free_port
from pytest_aifactory.monitor.layout import monitor_dir
from pytest_aifactory.monitor.targets import Target, base_labels, remove_target, write_target

BINARIES = ("prometheus-node-exporter", "node_exporter")
COLLECTORS = ("cpu", "meminfo", "loadavg", "netdev", "diskstats", "stat", "pressure")
"""Only what the run's charts use: the full default set costs CPU on a busy node every second."""
STOP_GRACE_S = 3.0


@dataclass(frozen=True)
class NodeExporterOrder:
    """What a job needs to run its node's exporter (pickled with the job's other orders)."""

    run_root: str
    run_id: str


def find_node_exporter() -> str | None:
    for name in BINARIES:
        found = shutil.which(name)
        if found:
            return found
    return None


def exporter_argv(binary: str, host: str, port: int) -> list[str]:
    argv = [binary, f"--web.listen-address={host}:{port}", "--collector.disable-defaults"]
    return argv + [f"--collector.{name}" for name in COLLECTORS]


@contextlib.contextmanager
def node_exporter(order: NodeExporterOrder | None, node: str, host: str) -> Iterator[None]:
    """Run this node's exporter for the duration of the block, unless another task of the run
    on this node already does (or there is no exporter binary: then nothing, silently)."""
    binary = find_node_exporter() if order is not None else None
    if order is None or binary is None:
        yield
        return
    run_root = Path(order.run_root)
    lock_dir = monitor_dir(run_root) / "nodes"
    lock_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock = os.open(lock_dir / f"{node}.lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # another task of this run on this node runs it
        os.close(lock)
        yield
        return
    proc: subprocess.Popen[bytes] | None = None
    try:
        proc = _spawn(binary, host)
        if proc is not None:
            port = int(proc.args[1].rsplit(":", 1)[1])  # type: ignore[index]
            target = Target(
                "nodes",
                node,
                f"{host}:{port}",
                labels=base_labels(order.run_id, "node", node),
            )
            write_target(run_root, target)
        yield
    finally:
        if proc is not None:
            remove_target(run_root, "nodes", node)
            _stop(proc)
        os.close(lock)


def _spawn(binary: str, host: str) -> subprocess.Popen[bytes] | None:
    from pytest_aifactory.services.launch import _die_with_parent

    for _ in range(3):  # the port may be taken between choosing and binding it
        argv = exporter_argv(binary, host, free_port(host))
        try:
            proc = subprocess.Popen(
                argv,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )
        except OSError as err:
            print(f"aifactory: node exporter not started: {err}", file=sys.stderr, flush=True)
            return None
        time.sleep(0.2)
        if proc.poll() is None:
            print(f"aifactory: node exporter on {argv[1].split('=', 1)[1]}", file=sys.stderr)
            return proc
    print("aifactory: node exporter did not stay up", file=sys.stderr, flush=True)
    return None


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
