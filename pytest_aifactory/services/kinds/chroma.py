"""`kind: chroma`: a Chroma vector database server, its data in the job's scratch folder.

`chroma run` comes with the chromadb package; it answers `/api/v2/heartbeat` once it serves
(about a second) and has no Prometheus endpoint. Its server (chromadb 1.x, written in Rust)
takes no credentials: Chroma's token settings (`CHROMA_SERVER_AUTHN_PROVIDER`,
`CHROMA_SERVER_AUTHN_CREDENTIALS`) are those of the older Python server and are ignored, so
the service is kept off addresses other hosts reach (services/exposure.py).

Chroma indexes with HNSW only, so a recipe whose vectordb client asks this service for another
index is refused before anything starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pytest_aifactory.services.base import HealthCheck, ServiceKind, ServicePlan, service_kind
from pytest_aifactory.services.vector_support import check_clients, find_command

if TYPE_CHECKING:
    from pytest_aifactory.recipe import Recipe, Service

HEARTBEAT = "/api/v2/heartbeat"


@service_kind("chroma")
class ChromaService(ServiceKind):
    default_health = HealthCheck(http_path=HEARTBEAT)
    unauthenticated = (
        "Chroma's server takes no credentials: whoever reaches its port reads, changes and "
        "deletes every collection"
    )

    def plan(self, name: str, service: Service, recipe: Recipe) -> ServicePlan:
        check_clients(name, recipe, "chroma", ("hnsw",))
        argv = [
            str(find_command("chroma", "chromadb", name)),
            "run",
            "--host",
            "{host}",
            "--port",
            "{port}",
            "--path",
            "{scratch}",
            *service.args,
        ]
        return self.plan_for(name, service, argv)
