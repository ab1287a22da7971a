"""The node's own disk, for data a job keeps only while it runs.

Cluster file systems (Lustre, NFS, GPFS, BeeGFS) are the wrong place for a database that writes
small files all the time: Prometheus, for one, does not support them. `$TMPDIR` is usually on
the node (sites point it at a local disk or a per-job folder of one), else `/tmp` is. Which file
system a folder is on is read from the kernel's mount table, so a `$TMPDIR` on shared storage is
passed over.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

MOUNTS = Path("/proc/self/mounts")
NETWORK_FILE_SYSTEMS = frozenset(
    {"nfs", "nfs4", "lustre", "gpfs", "beegfs", "cifs", "smb3", "ceph", "fuse.sshfs", "panfs"}
)


def file_system_type(path: Path, mounts: Path = MOUNTS) -> str | None:
    """The type of the file system holding `path` (the longest mount point above it)."""
    try:
        lines = mounts.read_text().splitlines()
    except OSError:
        return None
    target = os.path.realpath(path)
    best, kind = "", None
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


def local_base(mounts: Path = MOUNTS) -> Path:
    """`$TMPDIR` when it is on a local file system, else `/tmp` (else `$TMPDIR` all the same)."""
    candidates = [os.environ.get("TMPDIR"), "/tmp"]
    for candidate in candidates:
        if not candidate or not os.path.isdir(candidate):
            continue
        if file_system_type(Path(candidate), mounts) not in NETWORK_FILE_SYSTEMS:
            return Path(candidate)
    return Path(tempfile.gettempdir())


def private_local_dir(prefix: str) -> Path:
    """A new folder on the node's local disk that only this user can enter (0700)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir=local_base()))
