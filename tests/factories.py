"""Recipes for tests, built the same way everywhere: a test names only what it is about.

Most tests need "a service and a client on it" and change one or two keys; the full shape, and
any key a new release makes required, lives here once. The conftest exposes these as fixtures
(`make_recipe`, `make_load_spec`); session tests write `recipe_document(...)` to a file.
"""

from __future__ import annotations

from typing import Any

from pytest_aifactory.recipe import Recipe

SERVICE = "llm"
CLIENT = "chat"


def recipe_document(
    *,
    name: str = "test",
    service: dict[str, Any] | None = None,
    client: dict[str, Any] | None = None,
    **sections: Any,
) -> dict[str, Any]:
    """A recipe of one service `llm` (kind `llamacpp`, the kind's default model) and one client
    `chat` (kind `openai`) sending to it, each with the recipe's defaults for everything else.
    `service` and `client` add to or replace their keys (a key set to None is left out);
    `sections` add or replace whole top-level sections: `slo`, `platform`, `monitor`, or
    `services` and `clients` for a recipe of another shape."""
    document: dict[str, Any] = {
        "name": name,
        "services": {SERVICE: _merged({"kind": "llamacpp"}, service)},
        "clients": {CLIENT: _merged({"kind": "openai", "service": SERVICE}, client)},
    }
    document.update(sections)
    return document


def recipe(**overrides: Any) -> Recipe:
    """`recipe_document(**overrides)`, validated as a loaded recipe file would be."""
    return Recipe.model_validate(recipe_document(**overrides))


def _merged(defaults: dict[str, Any], changes: dict[str, Any] | None) -> dict[str, Any]:
    merged = {**defaults, **(changes or {})}
    return {key: value for key, value in merged.items() if value is not None}


MACHINE_INDEPENDENT = frozenset({"error_rate", "recall_at_k"})
"""Objectives whose verdict is the same on any machine: the share of failed requests, the share
of true neighbours a search found."""

LOOSE_MAX = 1e12


def speed_objectives_loosened(slo: dict[str, Any]) -> dict[str, Any]:
    """A shipped recipe's `slo:` with every bound on a time or a rate loosened to one any machine
    meets (`min` 0, `max` huge), the machine-independent ones as shipped. A shipped recipe's
    speed bounds are set for machines of some speed; whether this one meets them is what the
    recipe measures, not what a test may assume. Loosened, they are still evaluated: each still
    needs its metric measured."""

    def loosen(bounds: Any) -> Any:
        if not isinstance(bounds, dict):
            return bounds
        loose = {"min": 0.0, "max": LOOSE_MAX}
        return {key: loose.get(key, loosen(value)) for key, value in bounds.items()}

    return {
        client: {
            metric: bounds if metric in MACHINE_INDEPENDENT else loosen(bounds)
            for metric, bounds in objectives.items()
        }
        for client, objectives in slo.items()
    }
