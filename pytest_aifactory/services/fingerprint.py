"""What makes a kept service the one a recipe asks for: its whole plan, field by field.

A service's plan is its recipe section as loaded (kind, model, command, args, env, container,
nodes, GPUs, CPUs, memory, partition and every other key; paths already absolute), plus where it
runs: the executor and, on Slurm, the run's partition, account, QOS, setup lines and extra sbatch
options. Only `health_timeout_s` is left out: how long to wait for a server says nothing about
which server it is. A kept service is reused only when every field is the same; otherwise the
fields that differ are named.

A run keeps the plan of each service it starts as a fingerprint: one salted SHA-256 per field
(per key for the sections that are mappings, such as `env`), never the values themselves, since
env values and args may be secrets. The salt is random per service, so equal secrets of two
services do not look equal, and the fingerprint is as private as the run's records (0600).
"""

from __future__ import annotations

import hashlib
import json
import secrets
from typing import TYPE_CHECKING, Any

from pytest_aifactory.cluster.run_records import PlanFingerprint
from pytest_aifactory.recipe import SlurmSettings

if TYPE_CHECKING:
    from pytest_aifactory.cluster.base import JobExecutor
    from pytest_aifactory.recipe import Recipe

NOT_PLANNED = frozenset({"health_timeout_s"})
"""Recipe keys of a service that do not change the server that runs."""
SLURM_KEYS = frozenset({"partition", "account", "qos", "setup", "additional"})
"""The run's Slurm settings that shape a service's job (its time limit does not)."""


def service_plan(recipe: Recipe, name: str, executor: JobExecutor) -> dict[str, Any]:
    """Everything that decides what server `name` is and where it runs, as plain data."""
    plan = recipe.services[name].model_dump(mode="json", exclude=set(NOT_PLANNED))
    if plan.get("replicas") == 1:  # one server: planned as before services had replicas
        del plan["replicas"]
    plan["executor"] = executor.name
    settings = getattr(executor, "settings", None)
    if isinstance(settings, SlurmSettings):
        plan["slurm"] = settings.model_dump(mode="json", include=set(SLURM_KEYS))
    return plan


def _digest(salt: str, value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"{salt}\0{text}".encode()).hexdigest()


def _flat(plan: dict[str, Any]) -> dict[str, Any]:
    """`env.HF_TOKEN`, `container.image`, ...: a mapping's keys are fields of their own, so a
    difference names the variable, not the whole section. Unset fields (None) are left out: a
    key a later version adds with no value matches a service kept before it existed."""
    flat: dict[str, Any] = {}
    for key, value in plan.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{sub}": v for sub, v in value.items() if v is not None})
        elif value is not None:
            flat[key] = value
    return flat


def fingerprint(plan: dict[str, Any], salt: str | None = None) -> PlanFingerprint:
    """The plan as a run keeps it; a new random salt unless `salt` is a kept one's."""
    salt = salt if salt is not None else secrets.token_hex(16)
    fields = {key: _digest(salt, value) for key, value in _flat(plan).items()}
    return PlanFingerprint(salt=salt, fields=fields)


def differences(kept: PlanFingerprint, plan: dict[str, Any]) -> list[str]:
    """The fields in which `plan` is not the kept service's, in the plan's order (those only the
    kept one has after)."""
    wanted = fingerprint(plan, kept.salt).fields
    changed = [key for key, digest in wanted.items() if kept.fields.get(key) != digest]
    return changed + [key for key in kept.fields if key not in wanted]
