"""Kinds from other packages: modules named in the `pytest_aifactory.kinds` entry point group.

A package that adds client or service kinds declares each module there; both registries
(`loadgen/kinds/`, `services/base.py`) import them with their own, so an installed kind is
known everywhere the shipped ones are (recipe validation, the client job, reports).
"""

from __future__ import annotations

import functools
import importlib
from importlib.metadata import entry_points
from types import ModuleType

ENTRY_POINT_GROUP = "pytest_aifactory.kinds"


@functools.cache
def plugin_kind_modules() -> tuple[ModuleType, ...]:
    """Every module the entry point group names, imported once."""
    return tuple(
        importlib.import_module(point.value) for point in entry_points(group=ENTRY_POINT_GROUP)
    )
