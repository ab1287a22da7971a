"""`kind: chroma`: a Chroma vector database server, its data in the job's scratch folder.

`chroma run` comes with the chromadb package; it answers `/api/v2/heartbeat` once it serves
(about a second) and has no Prometheus endpoint. Chroma indexes with HNSW only, so a recipe
whose vectordb client asks this service for another index is refused before anything starts.
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
