"""A service of several servers (`replicas: N`, or an external service's list of URLs): how its
servers are named and how they make one endpoint.

Each replica is a whole server of its own: its own job, port, rendezvous file, log, health
check and metrics target. The service's endpoint is its first replica's, holding the others
and every replica's URL, so code that knows one server per service keeps working and clients
that spread their requests find all of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pytest_aifactory.endpoints import Endpoint
    from pytest_aifactory.recipe import Service


def replica_instance(service: str, replica: int) -> str:
    """The name of one replica's job, rendezvous file and log: the service's own for the first
    (a service of one server is named as it always was), `<service>.replica<N>` for the rest."""
    return service if replica == 0 else f"{service}.replica{replica}"


def replica_services(service: Service) -> list[Service]:
    """The service once per external URL it lists (each naming that URL alone), for its kind
    to plan one at a time; otherwise the service itself (its `replicas` share one plan)."""
    if isinstance(service.url, list):
        return [service.model_copy(update={"url": url}) for url in service.url]
    return [service]


def join_replicas(replicas: list[Endpoint]) -> Endpoint:
    """One endpoint for the service: the first replica's, with the others and every URL."""
    first = replicas[0]
    if len(replicas) > 1:
        first.more_replicas = list(replicas[1:])
        first.replica_urls = [replica.url for replica in replicas]
    return first


def replica_address(url: str) -> str:
    """`host:port` of a replica's base URL, as records and summaries name it."""
    return url.split("://", 1)[-1].split("/", 1)[0]
