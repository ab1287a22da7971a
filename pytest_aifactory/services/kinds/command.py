"""`kind: command`: any server the user can start with one command line."""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING

from pytest_aifactory.services.base import (
    HealthCheck,
    ServiceConfigError,
    ServiceKind,
    ServicePlan,
    service_kind,
)

if TYPE_CHECKING:
    from pytest_aifactory.recipe import Recipe, Service


@service_kind("command")
class CommandService(ServiceKind):
    """The command is split like a shell would but never run by one: `;` or `$(...)` in it are
    literal arguments. Use `sh -c '...'` explicitly when shell features are wanted."""

    default_health = HealthCheck(http_path=None)

    def plan(self, name: str, service: Service, recipe: Recipe) -> ServicePlan:
        if not service.command:
            raise ServiceConfigError(f"service '{name}': kind command needs a 'command'")
        try:
            argv = shlex.split(service.command)
        except ValueError as err:
            raise ServiceConfigError(f"service '{name}': cannot split command: {err}") from None
        return self.plan_for(
            name,
            service,
            [*argv, *service.args],
            served_model=service.model,
        )
