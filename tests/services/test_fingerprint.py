"""A kept service's plan, as a later session compares it: every field, no secret in clear."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pytest_aifactory.cluster.local import LocalJobExecutor
from pytest_aifactory.cluster.rundir import RunDir
from pytest_aifactory.cluster.slurm import SlurmJobExecutor
from pytest_aifactory.recipe import SlurmSettings
from pytest_aifactory.services.fingerprint import differences, fingerprint, service_plan
from tests.factories import recipe

SECRET = "hunter2-do-not-store"


@pytest.fixture
def local(tmp_path: Path) -> LocalJobExecutor:
    return LocalJobExecutor(RunDir(root=tmp_path, run_id="r"))


def plan_of(executor: Any, **service: Any) -> dict[str, Any]:
    base = {"args": ["--parallel", "2"], "env": {"HF_TOKEN": SECRET, "OMP_NUM_THREADS": "2"}}
    return service_plan(recipe(service={**base, **service}), "llm", executor)


def test_the_same_plan_matches(local: LocalJobExecutor) -> None:
    kept = fingerprint(plan_of(local))
    assert differences(kept, plan_of(local)) == []


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"args": ["--parallel", "4"]}, ["args"]),
        ({"model": "gemma3-270m"}, ["model"]),
        ({"env": {"HF_TOKEN": "another", "OMP_NUM_THREADS": "2"}}, ["env.HF_TOKEN"]),
        ({"env": {"HF_TOKEN": SECRET}}, ["env.OMP_NUM_THREADS"]),
        ({"nodes": 2}, ["nodes"]),
        ({"gpus_per_node": 1}, ["gpus_per_node"]),
        ({"cpus_per_task": 4, "memory": "8G"}, ["cpus_per_task", "memory"]),
        (
            {"container": {"image": "/images/llama.sif"}},
            ["container.image", "container.runtime", "container.binds", "container.gpu"],
        ),
        ({"kind": "vllm"}, ["kind"]),
    ],
)
def test_a_changed_field_is_named(
    local: LocalJobExecutor, change: dict[str, Any], named: list[str]
) -> None:
    kept = fingerprint(plan_of(local))
    assert differences(kept, plan_of(local, **change)) == named


def test_waiting_longer_is_not_another_server(local: LocalJobExecutor) -> None:
    kept = fingerprint(plan_of(local))
    assert differences(kept, plan_of(local, health_timeout_s=5)) == []


def test_where_it_runs_is_part_of_the_plan(local: LocalJobExecutor) -> None:
    kept = fingerprint(plan_of(local))
    slurm = object.__new__(SlurmJobExecutor)  # its settings only: no Slurm needed to compare
    slurm.settings = SlurmSettings(partition="gpu", account="p1")
    changed = differences(kept, plan_of(slurm))
    assert changed[0] == "executor"
    assert {"slurm.partition", "slurm.account"} <= set(changed)
    on_gpu = fingerprint(plan_of(slurm))
    slurm.settings = SlurmSettings(partition="cpu", account="p1", time_limit="02:00:00")
    assert differences(on_gpu, plan_of(slurm)) == ["slurm.partition"]


def test_no_secret_is_stored_and_the_salt_is_fresh(local: LocalJobExecutor) -> None:
    first = fingerprint(plan_of(local))
    second = fingerprint(plan_of(local))
    stored = first.model_dump_json()
    assert SECRET not in stored
    assert "--parallel" not in stored
    assert first.salt != second.salt
    assert first.fields["env.HF_TOKEN"] != second.fields["env.HF_TOKEN"]
    # the record round-trips through jobs.json
    assert differences(type(first).model_validate(json.loads(stored)), plan_of(local)) == []


def test_a_field_later_versions_add_unset_still_matches(local: LocalJobExecutor) -> None:
    plan = plan_of(local)
    kept = fingerprint(plan)
    assert differences(kept, {**plan, "a_new_key": None}) == []
    assert differences(kept, {**plan, "a_new_key": "set"}) == ["a_new_key"]
