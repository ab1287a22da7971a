"""On the Slurm dev cluster: one client job runs every level, and a level with fewer processes
than the job has tasks loads from every node it can.

A client of `nodes: 2` x `processes_per_node: 2` runs concurrency 2, then 4, against the token
server run as a service job. Concurrency 2 starts two processes: one on each node, not both on
the first. Both levels are orders to the one client job, which Slurm shows as COMPLETED (it
ended by itself when the session had no more levels). Needs the dev cluster
(`bash scripts/slurm-up.sh` as root).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pytest

from tests.helpers import Session, run_benchmark, wait_for, write_recipe
from tests.slurm.test_slurm_executor import queued_names, sacct_jobs

if TYPE_CHECKING:
    from tests.conftest import SlurmCluster

pytestmark = pytest.mark.slurm

REQUESTS = 8


def placement_recipe() -> dict[str, Any]:
    server = f"{sys.executable} -m pytest_aifactory.testing.token_server"
    return {
        "name": "slurm-placement",
        "platform": {"executor": "slurm", "slurm": {"time_limit": "00:10:00"}},
        "services": {
            "srv": {
                "kind": "command",
                "command": f"{server} --host {{host}} --port {{port}} --ttft-ms 20 --gap-ms 5",
                "health": {"http": "/health"},
                "health_timeout_s": 180,  # the dev cluster may be busy with other jobs
            }
        },
        "clients": {
            "chat": {
                "kind": "openai",
                "service": "srv",
                "nodes": 2,
                "processes_per_node": 2,
                "dataset": {"input_tokens": 8, "output_tokens": 4},
                "load": {"levels": [2, 4], "requests": REQUESTS, "timeout_s": 60},
            }
        },
        "slo": {"chat": {"error_rate": {"max": 0.0}}},
        "monitor": {"prometheus": False},
    }


@pytest.fixture(scope="module")
def session(slurm_cluster: SlurmCluster, tmp_path_factory: pytest.TempPathFactory) -> Session:
    assert len(slurm_cluster.nodes) >= 2, slurm_cluster.nodes
    tmp = tmp_path_factory.mktemp("placement")
    recipe = write_recipe(tmp / "placement.yaml", placement_recipe())
    return run_benchmark(tmp, recipe, "--executor", "slurm", "-v", timeout=300)


@pytest.fixture(scope="module")
def records(session: Session) -> pd.DataFrame:
    assert session.returncode == 0, session.output
    (run,) = session.run_dirs()
    frame = pd.read_parquet(run / "records.parquet")
    return frame[frame["phase"] == "measure"]


def level(records: pd.DataFrame, case: str) -> pd.DataFrame:
    return records[records["test_id"].str.endswith(f"[{case}]")]


def test_two_processes_of_four_slots_load_from_both_nodes(records: pd.DataFrame) -> None:
    two = level(records, "chat-concurrency-2")
    assert len(two) == REQUESTS
    assert sorted(two["process"].unique()) == [0, 1]
    nodes = two.groupby("process")["node"].first()
    assert nodes[0] != nodes[1], nodes.to_dict()


def test_a_full_level_uses_every_slot(records: pd.DataFrame) -> None:
    four = level(records, "chat-concurrency-4")
    assert len(four) == REQUESTS
    assert sorted(four["process"].unique()) == [0, 1, 2, 3]
    assert set(four.groupby("node")["process"].nunique()) == {2}


def test_both_levels_ran_in_one_client_job(session: Session) -> None:
    assert session.returncode == 0, session.output
    (run,) = session.run_dirs()
    prefix = f"aif-{run.name}-"
    assert not [name for name in queued_names() if name.startswith(prefix)]
    jobs = wait_for(
        lambda: (found := sacct_jobs(prefix)) and len(found) >= 2 and found,
        15,
        "the run's jobs in sacct",
    )
    assert sorted(jobs) == [f"{prefix}client-chat", f"{prefix}service-srv"], jobs
    assert jobs[f"{prefix}client-chat"] == "COMPLETED", jobs
    assert sorted(p.name for p in Path(run / "orders" / "client-chat").glob("order.*")) == [
        "order.0",
        "order.1",
    ]
