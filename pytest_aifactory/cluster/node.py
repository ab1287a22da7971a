"""Which node a job runs on, and the address other nodes reach it at.

A service on a cluster must listen on an address the driver and the clients can reach, which is
not necessarily what the hostname resolves to (several Slurm "nodes" may share one machine, or
a node may have a separate high-speed network). Slurm's own `NodeAddr` is the authority there.
"""

from __future__ import annotations

import os
import socket

from pytest_aifactory.cluster.slurm_commands import SlurmCommandError, run_slurm

LOOPBACK = "127.0.0.1"


def in_slurm_job() -> bool:
    return bool(os.environ.get("SLURM_JOB_ID"))


def node_name() -> str:
    """The Slurm node name inside a job (several may share one host), else the short hostname."""
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname().split(".")[0]


def parse_node_addr(scontrol_output: str) -> str | None:
    """`NodeAddr=...` out of `scontrol show node NAME` (`-o`: one line of key=value pairs)."""
    for token in scontrol_output.split():
        key, _, value = token.partition("=")
        if key == "NodeAddr" and value and value != "(null)":
            return value
    return None


def slurm_node_address(name: str) -> str | None:
    """The node's NodeAddr as resolved to an IP address, or None when scontrol cannot say."""
    try:
        addr = parse_node_addr(run_slurm(["scontrol", "-o", "show", "node", name]))
    except SlurmCommandError:
        return None
    return resolve(addr) if addr else None


def resolve(host: str) -> str | None:
    """An IPv4 address for `host` (an IP address stays as it is), None when it does not resolve."""
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)
    except OSError:
        return None
    return str(infos[0][4][0]) if infos else None


def node_address() -> str:
    """Where this node is reached: Slurm's NodeAddr inside a job, else the hostname's address,
    else loopback (a laptop with no resolvable name still runs everything locally)."""
    if os.environ.get("SLURMD_NODENAME"):
        found = slurm_node_address(os.environ["SLURMD_NODENAME"])
        if found:
            return found
    return resolve(socket.gethostname()) or LOOPBACK
