"""One load fanned out over three Slurm nodes: one client job, one load, one start.

A client with `nodes: 3` and `processes_per_node: 2` is one Slurm job of six tasks. Together the
six processes must make exactly the requested load (24 requests, never more than 6 in flight),
start at the same moment (the start barrier), and cost the run no more submissions than a
single-node client would. Needs the dev cluster (`bash scripts/slurm-up.sh` as root).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pytest

from tests.helpers import Session, agreed_start, run_benchmark, wait_for, write_recipe
from tests.slurm.test_slurm_executor import queued_names, run_id_of, sacct_jobs

if TYPE_CHECKING:
    from tests.conftest import SlurmCluster

pytestmark = [pytest.mark.slurm, pytest.mark.requires("llama-server")]

NODES = 3
PROCESSES_PER_NODE = 2
CONCURRENCY = 6
REQUESTS = 24
CLOCK_SLACK_S = 0.001
"""Wall-clock readings of different processes, converted from their monotonic clocks."""


def fanout_recipe() -> dict[str, Any]:
    return {
        "name": "slurm-fanout",
        "platform": {"executor": "slurm", "slurm": {"time_limit": "00:10:00"}},
        "services": {
            "llm": {
                "kind": "llamacpp",
                "model": "smollm2-135m",
                "args": ["--parallel", str(CONCURRENCY)],
                "health_timeout_s": 60,
            }
        },
        "clients": {
            "chat": {
                "kind": "openai",
                "service": "llm",
                "nodes": NODES,
                "processes_per_node": PROCESSES_PER_NODE,
                "dataset": {"kind": "random", "input_tokens": 16, "output_tokens": 8},
                "load": {
                    "mode": "concurrency",
                    "levels": [CONCURRENCY],
                    "requests": REQUESTS,
                    "warmup_requests": 0,
                    "timeout_s": 60,
                },
            }
        },
        "slo": {"chat": {"error_rate": {"max": 0.0}}},
        "monitor": {"prometheus": False},
    }


@pytest.fixture(scope="module")
def session(slurm_cluster: SlurmCluster, tmp_path_factory: pytest.TempPathFactory) -> Session:
    assert slurm_cluster.nodes[:NODES] == ["n1", "n2", "n3"], slurm_cluster.nodes
    tmp = tmp_path_factory.mktemp("fanout")
    recipe = write_recipe(tmp / "fanout.yaml", fanout_recipe())
    return run_benchmark(tmp, recipe, "--executor", "slurm", "-v", timeout=120)


@pytest.fixture(scope="module")
def records(session: Session) -> pd.DataFrame:
    assert session.returncode == 0, session.output
    (run,) = session.run_dirs()
    frame = pd.read_parquet(run / "records.parquet")
    return frame[frame["phase"] == "measure"]


def max_in_flight(frame: pd.DataFrame) -> int:
    """Most requests open at once over all processes; an end before a send at the same instant."""
    events = [(t, 1) for t in frame["send_ts"]] + [(t, -1) for t in frame["end_ts"]]
    in_flight = peak = 0
    for _, delta in sorted(events):
        in_flight += delta
        peak = max(peak, in_flight)
    return peak


def test_every_node_and_process_sends_its_share(records: pd.DataFrame) -> None:
    assert len(records) == REQUESTS
    assert (records["error"] == "").all(), records["error"].unique()
    assert sorted(records["node"].unique()) == ["n1", "n2", "n3"]
    assert sorted(records["process"].unique()) == list(range(NODES * PROCESSES_PER_NODE))
    per_process = records.groupby("process").size()
    assert set(per_process) == {REQUESTS // (NODES * PROCESSES_PER_NODE)}
    # processes are placed node by node: two on each
    assert set(records.groupby("node")["process"].nunique()) == {PROCESSES_PER_NODE}


def test_the_processes_make_one_load_of_the_requested_concurrency(
    records: pd.DataFrame,
) -> None:
    assert max_in_flight(records) == CONCURRENCY


def test_no_process_starts_before_the_agreed_instant(
    session: Session, records: pd.DataFrame
) -> None:
    """The start barrier: once the last of the six is ready they all wait for one instant
    (task start-up alone spreads them by about a second); how soon after it each one wakes is
    up to its node's scheduler."""
    (run,) = session.run_dirs()
    first_sends = records.groupby("process")["send_ts"].min()
    agreed = agreed_start(run, f"chat-concurrency-{CONCURRENCY}")
    assert first_sends.min() >= agreed - CLOCK_SLACK_S, first_sends.to_dict()


def test_one_job_for_the_service_and_one_for_the_whole_client(session: Session) -> None:
    prefix = f"aif-{run_id_of(session)}-"
    assert not [name for name in queued_names() if name.startswith(prefix)]
    jobs = wait_for(
        lambda: (found := sacct_jobs(prefix)) and len(found) >= 2 and found,
        15,
        "the run's jobs in sacct",
    )
    clients = [name for name in jobs if name.startswith(f"{prefix}client-")]
    assert len(jobs) == 2, jobs
    assert f"{prefix}service-llm" in jobs, jobs
    assert len(clients) == 1, jobs
    assert jobs[clients[0]] == "COMPLETED", jobs


def test_the_run_passes(session: Session) -> None:
    assert session.returncode == 0, session.output
    assert "test_serving[chat-concurrency-6] PASSED" in session.stdout
    (run,) = session.run_dirs()
    assert Path(run / "records.parquet").exists()
