"""`kind: external`: a service that is already running; nothing is started or stopped."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from pytest_aifactory.services.base import (
    HealthCheck,
    ServiceConfigError,
    ServiceKind,
    ServicePlan,
    service_kind,
)

if TYPE_CHECKING:
    from pytest_aifactory.recipe import Recipe, Service


@service_kind("external")
class ExternalService(ServiceKind):
    default_health = HealthCheck(http_path=None)

    def plan(self, name: str, service: Service, recipe: Recipe) -> ServicePlan:
        """The plan of its first URL; the service manager plans each URL of a list (each a
        replica) with a copy of the service naming that one."""
        if not service.urls:
            raise ServiceConfigError(f"service '{name}': kind external needs a 'url'")
        url = service.urls[0]
        parts = urlsplit(url)
        if not parts.hostname:
            raise ServiceConfigError(f"service '{name}': url '{url}' has no host")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return ServicePlan(
            name=name,
            argv=[],
            host=parts.hostname,
            port=port,
            health=self.health(service),
            metrics_path=self.metrics_path(service),
            served_model=service.model,
            external_url=url.rstrip("/"),
        )
