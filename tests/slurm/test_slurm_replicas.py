"""Replicas on Slurm: a service of two servers runs as two jobs (asked `exclusive`, on two nodes),
or inside an allocation as two steps on nodes of their own; the client spreads its requests over
both, and nothing is left in the queue. Needs the dev cluster (`bash scripts/slurm-up.sh` as
root) for all but the placement test."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pytest

from pytest_aifactory.cluster.slurm_steps import AllocationNeeds, allocation_needs, plan_allocation
from pytest_aifactory.services.launch import ServiceLaunch
from tests.factories import recipe_document
from tests.helpers import (
    Session,
    run_benchmark,
    run_benchmark_in_allocation,
    wait_for,
    write_recipe,
)
from tests.slurm.test_slurm_executor import queued_names, recipe_of, run_id_of, sacct_jobs

if TYPE_CHECKING:
    from tests.conftest import SlurmCluster


def replicas_recipe(**service: Any) -> dict[str, Any]:
    return recipe_document(
        name="slurm-replicas",
        platform={"executor": "slurm", "slurm": {"time_limit": "00:10:00"}},
        service={"replicas": 2, "args": ["--parallel", "2"], "health_timeout_s": 90, **service},
        client={
            "dataset": {"input_tokens": 16, "output_tokens": 6},
            "load": {"levels": [2], "requests": 8, "timeout_s": 60},
        },
        slo={"chat": {"error_rate": {"max": 0.0}}},
        monitor={"prometheus": False},
    )


def test_each_replica_gets_nodes_of_its_own_in_an_allocation() -> None:
    needs = allocation_needs(recipe_of(replicas_recipe()))
    assert needs == AllocationNeeds(
        services={"llm": 1, "llm.replica1": 1}, client_nodes=1, monitor=False
    )
    plan = plan_allocation("7", needs, ["n1", "n2", "n3"])
    assert plan.services == {"llm": ["n1"], "llm.replica1": ["n2"]}
    assert plan.clients == ["n3"]
    second = ServiceLaunch(name="llm.replica1", argv=["x"], rendezvous_path="r")
    assert plan.nodes_for("service", (second,), 1) == ["n2"]


def spread_over_both(session: Session) -> tuple[dict[str, Any], pd.DataFrame]:
    assert session.returncode == 0, session.output
    assert "Traceback" not in session.output
    summary = session.summary()
    (run,) = session.run_dirs()
    records = pd.read_parquet(run / "records.parquet")
    measured = records[records["phase"] == "measure"]
    assert (measured["error"] == "").all(), measured["error"].unique()
    assert measured["replica"].value_counts().to_dict() == {0: 4, 1: 4}
    (test,) = summary["tests"]
    assert set(test["by_replica"]) == {"0", "1"}
    return summary["services"]["llm"], measured


@pytest.mark.slurm
@pytest.mark.requires("llama-server")
def test_replicas_run_as_jobs_on_nodes_apart(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    assert len(slurm_cluster.nodes) >= 3, slurm_cluster.nodes
    recipe = write_recipe(tmp_path / "replicas.yaml", replicas_recipe(exclusive=True))
    session = run_benchmark(tmp_path, recipe, "--executor", "slurm", "-v", timeout=300)
    service, _ = spread_over_both(session)
    nodes = service["replica_nodes"]
    assert len(set(nodes)) == 2, nodes
    assert set(nodes) <= set(slurm_cluster.nodes)
    prefix = f"aif-{run_id_of(session)}-"
    assert not [name for name in queued_names() if name.startswith(prefix)]
    jobs = wait_for(
        lambda: (found := sacct_jobs(prefix)) and len(found) >= 3 and found,
        15,
        "the run's jobs in sacct",
    )
    assert {f"{prefix}service-llm", f"{prefix}service-llm.replica1"} <= set(jobs), jobs


@pytest.mark.slurm
@pytest.mark.requires("llama-server")
def test_replicas_run_as_steps_on_nodes_of_their_own(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    recipe = write_recipe(tmp_path / "replicas.yaml", replicas_recipe())
    session = run_benchmark_in_allocation(tmp_path, recipe)
    assert "service llm on n" in session.output
    assert "service llm.replica1 on n" in session.output
    service, records = spread_over_both(session)
    nodes = service["replica_nodes"]
    assert len(set(nodes)) == 2, nodes
    assert not set(nodes) & set(records["node"]), "the client runs on a node of its own"
