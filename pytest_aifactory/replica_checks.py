"""Which clients may load a service of several replicas, checked on the raw recipe before any
job starts.

Spreading requests over servers is the client's work: a client kind that does not (a vector
database or S3 client talks to one address) would load only the first replica and report
figures for a service it did not measure, so such a recipe is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pytest_aifactory.loadgen.kinds import client_kinds
from pytest_aifactory.recipe_yaml import KeyPath

REPLICA_SERVICE_KINDS: tuple[str, ...] = ("llamacpp", "vllm", "command")
"""Service kinds that may start several servers: inference servers that `openai` clients
load (and a command, which may be one). A database or an object store keeps state its copies
would not share; the Triton, Chroma and Milvus clients send to one server."""


def replica_count(service: Any) -> int:
    """The servers a raw recipe service has: its `replicas`, or the URLs an external one
    lists; 1 when neither says more, or when either is malformed or of a kind that has one
    server (the service's own check reports that)."""
    if not isinstance(service, Mapping):
        return 1
    if service.get("kind") not in (*REPLICA_SERVICE_KINDS, "external"):
        return 1  # replicas of a kind that has one server: reported at the service
    count = service.get("replicas", 1)
    count = count if isinstance(count, int) and not isinstance(count, bool) else 1
    urls = service.get("url")
    return max(count, len(urls) if isinstance(urls, list) else 1)


def replica_problems(
    services: Mapping[str, Any], clients: Mapping[str, Any]
) -> list[tuple[KeyPath, str]]:
    """A client whose kind cannot spread its requests, aimed at a service of several servers."""
    kinds = client_kinds()
    spreading = " or ".join(f"'{k.name}'" for k in kinds.values() if k.replicas)
    problems: list[tuple[KeyPath, str]] = []
    for name, client in clients.items():
        if not isinstance(client, Mapping):
            continue
        service, kind = client.get("service"), kinds.get(str(client.get("kind")))
        if not isinstance(service, str) or kind is None or kind.replicas:
            continue
        count = replica_count(services.get(service))
        if count > 1:
            problems.append(
                (
                    ("clients", name, "service"),
                    f"service '{service}' has {count} replicas, and a client of kind "
                    f"'{kind.name}' sends to one server only (clients of kind {spreading} "
                    "spread their requests over replicas): give the service one",
                )
            )
    return problems
