"""pytest-xdist: workers share one run and one set of services started by the controller."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from pytest_aifactory.cluster.rundir import private_root_of
from tests.helpers import run_benchmark, write_recipe

pytestmark = [pytest.mark.slow, pytest.mark.requires("llama-server")]


def two_by_two() -> dict:
    def client(service: str) -> dict:
        return {
            "kind": "openai",
            "service": service,
            "dataset": {"input_tokens": 16, "output_tokens": 8},
            "load": {"levels": [1, 2], "requests": 4},
        }

    llm = {"kind": "llamacpp", "args": ["--parallel", "2"]}
    return {
        "name": "xdist",
        "services": {"alpha": llm, "beta": llm},
        "clients": {"ask": client("alpha"), "tell": client("beta")},
    }


@pytest.mark.parametrize("executor", ["local", "slurm"])
def test_two_workers_one_run_each_service_once(
    tmp_path: Path, executor: str, request: pytest.FixtureRequest
) -> None:
    if executor == "slurm":
        request.getfixturevalue("slurm_cluster")
    recipe = write_recipe(tmp_path / "xdist.yaml", two_by_two())
    session = run_benchmark(tmp_path, recipe, "-n", "2", "--executor", executor, timeout=300)
    assert session.returncode == 0, session.output
    (run,) = session.run_dirs()
    summary = session.summary()
    assert summary["status"] == "complete"
    assert {t["name"] for t in summary["tests"]} == {
        "test_serving[ask-concurrency-1]",
        "test_serving[ask-concurrency-2]",
        "test_serving[tell-concurrency-1]",
        "test_serving[tell-concurrency-2]",
    }
    workers = {p.stem for p in (run / "parts").glob("*.json")}
    assert workers == {"gw0", "gw1"}
    records = pd.read_parquet(run / "records.parquet")
    assert records.groupby("test_id").size().tolist() == [4, 4, 4, 4]
    # submitit's pickles were outside the run folder, and went once the controller (after its
    # workers) had copied the jobs' logs into it
    assert not (private_root_of(run) / "jobs").exists()
    services = [p.name for p in (run / "logs").iterdir() if p.name.startswith("service-")]
    assert sorted(services) == ["service-alpha", "service-beta"]
    jobs = json.loads((run / "jobs.json").read_text())["jobs"]
    assert sorted(j["name"] for j in jobs if j["role"] == "service") == [
        "service-alpha",
        "service-beta",
    ]
    # the workers' client jobs are the run's too: status and stop find them; a worker runs
    # every level of a client it was given in one job, named after it
    clients = [j for j in jobs if j["role"] == "client"]
    assert 2 <= len(clients) <= 4, clients
    assert {j["worker"] for j in clients} == {"gw0", "gw1"}
    assert all(j["name"].endswith(f"-{j['worker']}") for j in clients), clients
    assert len({j["name"] for j in clients}) == len(clients)
    ended = "FINISHED" if executor == "local" else "COMPLETED"
    assert {j["state"] for j in clients} == {ended}, clients
    assert {j["worker"] for j in jobs if j["role"] != "client"} == {None}
    if executor == "slurm":
        sacct = subprocess.run(
            ["sacct", "-n", "-X", "-P", "-S", "now-1hour", "-o", "JobName"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        mine = [name for name in sacct if run.name in name and "service-" in name]
        assert sorted(mine) == [f"aif-{run.name}-service-alpha", f"aif-{run.name}-service-beta"]
        squeue = subprocess.run(
            ["squeue", "-h", "-o", "%j"], capture_output=True, text=True, check=True
        ).stdout
        assert run.name not in squeue
