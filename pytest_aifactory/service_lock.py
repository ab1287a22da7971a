"""One load at a time per service under pytest-xdist: a lock per service, held by the worker
that runs a case against it from the client job's submission to the case's verdict.

Two workers loading one server at once would each measure the other's load too, silently.
Grouping a service's cases onto one worker (`--dist loadgroup`) would avoid that only under the
distribution mode that honours the groups; `--dist load`, `worksteal` or `each` would still
overlap. A lock holds under any mode, costs nothing when the workers' cases go to different
services, and the monitoring window of a case (taken when its verdict is made) can never see
another case's requests.

The locks are `fcntl` locks (filelock) on files in a folder the controller makes with
`tempfile.mkdtemp` (0700, node-local `$TMPDIR` or /tmp) and removes at the end: never in the
run directory, which may be on a file system without working locks (Lustre mounted without
`flock`). A worker that dies releases its lock with its file descriptors, so there is no stale
owner to detect. Workers run on the controller's host; one on another host is refused.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

PREFIX = "aifactory-locks-"


class ServiceLockError(Exception):
    """The locks cannot be used here; the message says why."""


class ServiceLocks:
    """The per-service locks of one run's workers."""

    def __init__(self, folder: Path, host: str) -> None:
        self.folder = folder
        self.host = host

    @classmethod
    def create(cls) -> ServiceLocks:
        """A new, private folder for the run's locks (the controller's)."""
        return cls(Path(tempfile.mkdtemp(prefix=PREFIX)), socket.gethostname())

    def handoff(self) -> dict[str, str]:
        return {"folder": str(self.folder), "host": self.host}

    @classmethod
    def attach(cls, data: dict[str, Any]) -> ServiceLocks:
        """A worker's view of the controller's locks; refused on another host, where the
        folder is not the controller's (its locks would exclude nobody)."""
        locks = cls(Path(data["folder"]), str(data["host"]))
        here = socket.gethostname()
        if locks.host != here or not locks.folder.is_dir():
            raise ServiceLockError(
                f"pytest-xdist worker on {here}: the per-service locks are on {locks.host} "
                f"({locks.folder}); run every worker on the controller's host"
            )
        return locks

    def path(self, service: str) -> Path:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", service)
        return self.folder / f"{name}.lock"

    @contextlib.contextmanager
    def held(self, service: str, waiting: Callable[[], None] | None = None) -> Iterator[None]:
        """Hold `service`'s lock for the block; `waiting` is called once if another worker
        holds it now."""
        lock = FileLock(self.path(service), mode=0o600)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            if waiting is not None:
                waiting()
            lock.acquire()
        try:
            yield
        finally:
            lock.release()

    def remove(self) -> None:
        """The controller, once its workers are done."""
        shutil.rmtree(self.folder, ignore_errors=True)
