"""A recipe's configuration matrix: `services.<s>.matrix` expanded into one recipe per
configuration.

`matrix: {args: [[--parallel, "1"], [--parallel, "4"]], tensor_parallel_size: [1, 2]}` on a
service stands for every combination of those values (four here), each replacing the service's
own keys. Each configuration is benchmarked as a recipe of its own, named after the recipe and
the configuration, so its runs keep a history of their own and compare only with themselves;
`aifactory matrix` runs them one after another and sets them side by side (`report/matrix.py`).

Expansion works on the recipe's data before validation, so each configuration is validated as
the whole recipe it becomes, and a mistake in one is found before any runs.
"""

from __future__ import annotations

import copy
import itertools
import re
from dataclasses import dataclass
from typing import Any

MATRIX_KEY = "matrix"
FIXED_KEYS = frozenset({"kind", MATRIX_KEY})
"""Service keys a configuration may not change: what the service is."""


@dataclass(frozen=True)
class MatrixConfig:
    """One combination of a recipe's matrix values."""

    index: int
    values: tuple[tuple[str, str, Any], ...]
    """(service, key, value) for each matrix key, in recipe order."""

    @property
    def label(self) -> str:
        """`llm.args=--parallel 4, llm.tensor_parallel_size=2`: as reports show it."""
        return ", ".join(f"{s}.{k}={_shown(v)}" for s, k, v in self.values)

    @property
    def config_id(self) -> str:
        """`c2-parallel-4-2`: its place, then its values; short, unique, safe in names."""
        parts = [f"c{self.index + 1}", *(_slug(_shown(v)) or _slug(k) for _, k, v in self.values)]
        return "-".join(p for p in parts if p)[:60].strip("-")

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "id": self.config_id,
            "label": self.label,
            "values": [{"service": s, "key": k, "value": v} for s, k, v in self.values],
        }


def _shown(value: Any) -> str:
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    return str(value)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower()


Problem = tuple[tuple[str | int, ...], str]


def matrix_problems(data: dict[str, Any]) -> list[Problem]:
    """What is wrong with the recipe's matrices themselves (not with the recipes they make)."""
    problems: list[Problem] = []
    services = data.get("services")
    for name, service in services.items() if isinstance(services, dict) else []:
        if not isinstance(service, dict) or MATRIX_KEY not in service:
            continue
        where: tuple[str | int, ...] = ("services", name, MATRIX_KEY)
        matrix = service[MATRIX_KEY]
        if not isinstance(matrix, dict) or not matrix:
            problems.append((where, "expected a mapping of service keys to lists of values"))
            continue
        for key, values in matrix.items():
            if key in FIXED_KEYS:
                problems.append(((*where, key), f"'{key}' cannot vary: it is what the service is"))
            elif not isinstance(values, list) or not values:
                problems.append(((*where, key), "expected a non-empty list of values"))
    return problems


def matrix_configs(data: dict[str, Any]) -> list[MatrixConfig]:
    """Every combination of the recipe's matrix values (none without a matrix); assumes no
    `matrix_problems`."""
    axes: list[list[tuple[str, str, Any]]] = []
    services = data.get("services")
    for name, service in services.items() if isinstance(services, dict) else []:
        matrix = service.get(MATRIX_KEY) if isinstance(service, dict) else None
        if not isinstance(matrix, dict):
            continue
        for key, values in matrix.items():
            axes.append([(name, key, value) for value in values])
    if not axes:
        return []
    return [MatrixConfig(i, tuple(combo)) for i, combo in enumerate(itertools.product(*axes))]


def without_matrix(data: dict[str, Any]) -> dict[str, Any]:
    """The recipe's data with its matrices taken out (what is the same in every
    configuration)."""
    data = copy.deepcopy(data)
    services = data.get("services")
    for service in services.values() if isinstance(services, dict) else []:
        if isinstance(service, dict):
            service.pop(MATRIX_KEY, None)
    return data


def apply_config(data: dict[str, Any], config: MatrixConfig) -> dict[str, Any]:
    """The recipe of one configuration: its values in place of the services' own, and a name of
    its own."""
    data = without_matrix(data)
    for service, key, value in config.values:
        data["services"][service][key] = copy.deepcopy(value)
    if isinstance(data.get("name"), str):
        data["name"] = f"{data['name']}-{config.config_id}"
    return data
