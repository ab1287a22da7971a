"""How a service job tells the driver where it listens.

The job writes `host:port` (and more) to a JSON file in the shared run directory; the file is
written under a temporary name and renamed, so a reader never sees half of it.
"""

from __future__ import annotations

import json
import socket
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from pytest_aifactory.atomic import write_json_atomic


@dataclass(frozen=True)
class Rendezvous:
    """Where a service listens, and which process on which node serves it."""

    service: str
    host: str
    port: int
    node: str
    pid: int
    nodes: list[str] = field(default_factory=list)
    """Every rank's `host:port` of a service over several nodes, the head's first."""
    job_started_at: float | None = None
    """Wall-clock time the job began running the service (the end of its Slurm queueing)."""
    launched_at: float | None = None
    """Wall-clock time the server process was spawned; the health wait counts from here."""

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def write_rendezvous(path: Path, info: Rendezvous) -> None:
    write_json_atomic(path, asdict(info))


_FIELDS = frozenset(f.name for f in fields(Rendezvous))


def read_rendezvous(path: Path) -> Rendezvous | None:
    """The file's rendezvous; keys it lacks take their defaults and keys this version does not
    know are ignored, so files of older and newer versions alike can be read."""
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return Rendezvous(**{key: value for key, value in data.items() if key in _FIELDS})


def free_port(host: str) -> int:
    """Ask the kernel for a port that is free now on `host` (the server binds it just after)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_port_block(host: str, count: int, attempts: int = 50) -> int:
    """The first of `count` consecutive ports free now on `host`, for servers that listen on
    a port and the ones after it (Triton: HTTP, gRPC, metrics)."""
    for _ in range(attempts):
        first = free_port(host)
        if first + count - 1 <= 65535 and all(
            port_is_free(host, first + i) for i in range(1, count)
        ):
            return first
    raise OSError(f"no {count} consecutive free ports on {host} after {attempts} tries")


def port_is_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True
