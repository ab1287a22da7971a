"""Client kinds by name, so the runner can start any kind without knowing it.

A kind is one module, `pytest_aifactory.loadgen.<kind>`, that registers an async function taking
the process's `LoadSpec` and returning its outcome; the runner imports that module on demand.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from typing import Any

from pytest_aifactory.loadgen.spec import LoadSpec

ClientKind = Callable[[LoadSpec], Awaitable[dict[str, Any]]]

CLIENT_KINDS: dict[str, ClientKind] = {}


def client_kind(name: str) -> Callable[[ClientKind], ClientKind]:
    """Register the decorated coroutine function as the load of client kind `name`."""

    def register(function: ClientKind) -> ClientKind:
        CLIENT_KINDS[name] = function
        return function

    return register


def get_client_kind(name: str) -> ClientKind:
    """The registered kind, importing its module first if nothing has registered it yet."""
    if name not in CLIENT_KINDS:
        try:
            importlib.import_module(f"pytest_aifactory.loadgen.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"pytest_aifactory.loadgen.{name}":
                raise
    if name not in CLIENT_KINDS:
        known = ", ".join(sorted(CLIENT_KINDS)) or "none"
        raise ValueError(f"unknown client kind '{name}' (registered: {known})")
    return CLIENT_KINDS[name]
