"""A lock that one process of a node holds for its lifetime, without the run folder.

The run folder is often on Lustre or NFS, where `flock` may be missing (Lustre mounted without
`flock`) or only node-local (`localflock`), and where a lock file left by a killed task needs
someone to clean it up. What jobs need is agreement among the tasks of one node (one node
exporter per node), so the lock lives in the node's kernel instead: a Unix socket bound to a
name in Linux's abstract namespace. Binding is atomic, a second bind of the name fails, and the
kernel frees the name however the holder ends (even by SIGKILL), so no stale lock can remain.
The namespace is per network namespace, i.e. per host. Where it does not exist (not Linux), a
`flock` on a file in the node's local temporary folder does the same job.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

_PREFIX = "aifactory-"


def _token(key: str) -> str:
    """A short, fixed-length name for `key` (abstract names are at most 107 bytes)."""
    return _PREFIX + hashlib.sha256(key.encode()).hexdigest()[:32]


@contextlib.contextmanager
def node_lock(key: str) -> Iterator[bool]:
    """Try to take the node-wide lock `key` for the duration of the block, without waiting.
    Yields True when this process holds it, False when another process of the node does."""
    if sys.platform.startswith("linux"):
        with _abstract_socket_lock(_token(key)) as held:
            yield held
    else:
        with _temp_file_lock(_token(key)) as held:
            yield held


@contextlib.contextmanager
def _abstract_socket_lock(name: str) -> Iterator[bool]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind("\0" + name)
    except OSError as err:
        sock.close()
        if err.errno != errno.EADDRINUSE:
            raise
        yield False
        return
    try:
        yield True
    finally:
        sock.close()


@contextlib.contextmanager
def _temp_file_lock(name: str) -> Iterator[bool]:
    path = Path(tempfile.gettempdir()) / f"{name}.lock"
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)
