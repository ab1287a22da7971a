"""Servers that take no credentials are kept where only the run's own jobs can reach them.

Chroma's server, Milvus Lite and Triton's inference take requests from anyone who reaches
their port. On this machine's loopback that is the users of this machine; on a cluster node's
own address (where services bind on Slurm unless the recipe says otherwise) it is everybody on
the cluster's network, who could read, change or delete the benchmark's data or run the models.
Such a service is therefore refused on any address but loopback, unless the recipe gives its
nodes to it alone (`exclusive: true`: no other user's jobs on them) and so takes that on.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from pytest_aifactory.services.base import ServiceConfigError

if TYPE_CHECKING:
    from pytest_aifactory.recipe import Service
    from pytest_aifactory.services.base import ServiceKind

LOCAL_EXECUTOR = "local"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: whatever it resolves to, others may reach it


def bind_address(service: Service, executor: str) -> str | None:
    """Where the server will listen: the recipe's `host`, loopback on this machine, None for
    the node's own address (chosen in the job on a cluster)."""
    if service.host is not None:
        return service.host
    return "127.0.0.1" if executor == LOCAL_EXECUTOR else None


def check_exposure(name: str, service: Service, kind: ServiceKind, executor: str) -> None:
    """Raise when a server that takes no credentials would listen where other hosts reach it
    and its nodes are not the run's alone."""
    if kind.unauthenticated is None or service.exclusive:
        return
    host = bind_address(service, executor)
    if host is not None and is_loopback(host):
        return
    where = f"address {host}" if host is not None else "its node's own address"
    raise ServiceConfigError(
        f"service '{name}' (kind {kind.kind}): {kind.unauthenticated}, and it would listen on "
        f"{where}, open to every user of the cluster's network: set `exclusive: true` on "
        f"service '{name}' (its nodes for this run's job alone) or bind it to loopback with "
        "`host: 127.0.0.1`"
    )
