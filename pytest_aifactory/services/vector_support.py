"""What the vector database kinds share: finding their commands, and refusing clients that ask
for what the engine lacks before anything starts."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_aifactory.services.base import ServiceConfigError

if TYPE_CHECKING:
    from pytest_aifactory.recipe import Recipe


def find_command(command: str, package: str, service: str) -> Path:
    """The packages that ship the servers install them beside the running interpreter, which is
    not always on PATH (a venv used without activating it).

    `command` beside sys.executable, else on PATH; a ServiceConfigError naming the package
    to install when neither has it."""
    beside = Path(sys.executable).parent / command
    if beside.is_file():
        return beside
    found = shutil.which(command)
    if found:
        return Path(found)
    raise ServiceConfigError(
        f"service '{service}': the '{command}' command was found neither beside "
        f"{sys.executable} nor on PATH: install it with `pip install {package}`"
    )


def check_clients(name: str, recipe: Recipe, engine: str, indexes: tuple[str, ...]) -> None:
    """Refuse vectordb clients of service `name` that ask for an index the engine lacks."""
    for client_name, client in recipe.clients.items():
        options = getattr(client, "vectordb", None)
        if client.kind != "vectordb" or client.service != name or options is None:
            continue
        if options.engine not in (None, engine):
            raise ServiceConfigError(
                f"client '{client_name}': vectordb.engine is '{options.engine}' but its service "
                f"'{name}' is kind '{engine}'"
            )
        if options.index not in indexes:
            raise ServiceConfigError(
                f"client '{client_name}': {engine} (service '{name}') has no "
                f"'{options.index}' index; vectordb.index must be one of {', '.join(indexes)}"
            )
