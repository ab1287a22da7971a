"""`kind: milvus`: Milvus Lite's gRPC server, its data in the job's scratch folder.

`milvus-lite server` comes with the milvus-lite package and speaks the Milvus API that pymilvus
clients use (`MilvusClient("http://host:port")`); being gRPC, its health check is a TCP connect.
It has no Prometheus endpoint, and no credentials: Milvus Lite has no users or tokens (a full
Milvus's authentication is not in it), so nothing but where it listens protects it. It binds to
loopback on this machine, where the machine's other users can still reach it, and is refused on
addresses other hosts reach unless its nodes are exclusive (services/exposure.py).

A full Milvus deployment elsewhere is used as an `external` service with
`vectordb.engine: milvus`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pytest_aifactory.services.base import HealthCheck, ServiceKind, ServicePlan, service_kind
from pytest_aifactory.services.vector_support import check_clients, find_command

if TYPE_CHECKING:
    from pytest_aifactory.recipe import Recipe, Service


@service_kind("milvus")
class MilvusService(ServiceKind):
    default_health = HealthCheck(http_path=None)
    unauthenticated = (
        "Milvus Lite takes no credentials: whoever reaches its port reads, changes and drops "
        "every collection"
    )

    def plan(self, name: str, service: Service, recipe: Recipe) -> ServicePlan:
        check_clients(name, recipe, "milvus", ("flat", "hnsw", "ivf"))
        argv = [
            str(find_command("milvus-lite", "milvus-lite", name)),
            "server",
            "--data-dir",
            "{scratch}",
            "--host",
            "{host}",
            "--port",
            "{port}",
            *service.args,
        ]
        return self.plan_for(name, service, argv)
