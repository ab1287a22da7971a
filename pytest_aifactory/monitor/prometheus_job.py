"""The Prometheus job: its database on the node's local disk, copied into the run at the end.

Prometheus does not support network file systems (NFS, Lustre) for its database, and a run
folder on a cluster is on one. So the job keeps the database in a private folder (0700) on the
node's own disk (`cluster/local_disk.py`) while Prometheus runs. Everything the report needs is
read from Prometheus by the driver during the session (each test's window of samples, saved
as it ends), before Prometheus is stopped. At the end the driver asks for the end by a marker
file in the run folder (Prometheus runs without its lifecycle API, which would let anyone who
reaches it stop it); the job, watching for it, stops its own Prometheus by PID. Once it has
closed its database, the job copies the database into the run's `monitor/tsdb` (for
`aifactory grafana`: a whole copy appears at once, by rename) and removes the local folder.
A job stopped by a cancel or by the driver's death does the same, as far as it is let.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import threading
from dataclasses import replace
from pathlib import Path

import psutil

from pytest_aifactory.cluster.local_disk import private_local_dir
from pytest_aifactory.cluster.rendezvous import read_rendezvous
from pytest_aifactory.services.launch import ServiceExited, ServiceLaunch, run_service

TSDB = "{tsdb}"
"""Placeholder of the database folder in Prometheus's command line (and an image's binds)."""
NOT_COPIED = ("lock", "queries.active")
"""Files of a running Prometheus that a copy must not carry (a replay makes its own)."""
QUIT_POLL_S = 0.2


def quit_marker(tsdb_copy: Path) -> Path:
    """Written by the driver before it asks Prometheus to quit: the end is asked for."""
    return tsdb_copy.with_name(f".{tsdb_copy.name}.quit")


def run_prometheus(launch: ServiceLaunch, tsdb_copy: str) -> int:
    """Run Prometheus like any service, its database in a node-local folder; copy it to
    `tsdb_copy` once Prometheus has ended."""
    local = private_local_dir("aifactory-prometheus-")
    _say(f"Prometheus's database in {local} on this node, copied to {tsdb_copy} at the end")
    argv = [arg.replace(TSDB, str(local)) for arg in launch.argv]
    marker = quit_marker(Path(tsdb_copy))
    done = threading.Event()
    watcher = threading.Thread(
        target=stop_when_asked,
        args=(marker, Path(launch.rendezvous_path), done),
        name="aifactory-prometheus-quit",
        daemon=True,
    )
    watcher.start()
    try:
        return run_service(replace(launch, argv=argv))
    except ServiceExited:
        if marker.exists():
            return 0  # it quit because the driver asked
        raise
    finally:
        done.set()
        try:
            copy_database(local, Path(tsdb_copy))
        finally:
            shutil.rmtree(local, ignore_errors=True)


def stop_when_asked(marker: Path, rendezvous: Path, done: threading.Event) -> None:
    """Once `marker` appears, SIGTERM the Prometheus this job started (its PID from the
    rendezvous, checked to be this process's child): Prometheus then closes its database."""
    while not done.wait(QUIT_POLL_S):
        if not marker.exists():
            continue
        pid = own_child_pid(rendezvous)
        if pid is None:
            continue  # not started yet: asked again at the next poll
        _say(f"the end is asked for: stopping Prometheus (PID {pid})")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        return


def own_child_pid(rendezvous: Path) -> int | None:
    """The server's PID in the rendezvous, if it is a child of this process (never a process
    a stale or foreign file names)."""
    found = read_rendezvous(rendezvous)
    if found is None:
        return None
    try:
        if psutil.Process(found.pid).ppid() != os.getpid():
            return None
    except psutil.Error:
        return None
    return found.pid


def copy_database(local: Path, destination: Path) -> None:
    """Copy a closed database next to `destination`, then rename it into place: a reader
    never sees half a copy."""
    if not local.is_dir() or not any(local.iterdir()):
        return
    partial = destination.with_name(f".{destination.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        shutil.copytree(local, partial, ignore=shutil.ignore_patterns(*NOT_COPIED))
        partial.chmod(0o700)
        if destination.exists():
            old = destination.with_name(f".{destination.name}.old-{os.getpid()}")
            destination.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        partial.rename(destination)
    except OSError as err:
        _say(f"Prometheus's database not copied to {destination}: {err}")
        with contextlib.suppress(OSError):
            shutil.rmtree(partial, ignore_errors=True)
        return
    _say(f"Prometheus's database copied to {destination}")


def _say(text: str) -> None:
    print(f"aifactory: {text}", file=sys.stderr, flush=True)
