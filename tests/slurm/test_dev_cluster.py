"""The dev cluster's nodes are hosts of their own, and a run works across them.

scripts/slurm-up.sh gives every node a network namespace (its own address on a private bridge,
its own loopback) and its own hostname. These tests use real jobs to show what that buys: a
server bound to loopback on one node is out of reach of every other node and of the login node
(where the driver runs), the same server bound to its node's address is not; and a monitored
run with its service on one node and its clients on the two others counts every request and
sees every node. Needs the dev cluster (`bash scripts/slurm-up.sh` as root).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import psutil
import pytest

from pytest_aifactory.cluster.node import LOOPBACK, parse_node_addr
from tests.helpers import Session, run_benchmark, wait_for, write_recipe
from tests.slurm.test_slurm_executor import queued_names, run_id_of, sacct_jobs

if TYPE_CHECKING:
    from tests.conftest import SlurmCluster

pytestmark = pytest.mark.slurm

SERVE = """\
import http.server, json, os, socket, sys, threading
from pytest_aifactory.cluster.node import LOOPBACK, node_address

class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = socket.gethostname().encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

address = node_address()
servers = {
    "loopback": http.server.ThreadingHTTPServer((LOOPBACK, 0), Hello),
    "node": http.server.ThreadingHTTPServer((address, 0), Hello),
}
for server in servers.values():
    threading.Thread(target=server.serve_forever, daemon=True).start()
out = sys.argv[1]
with open(out + ".tmp", "w") as f:
    json.dump({
        "node": os.environ["SLURMD_NODENAME"],
        "hostname": socket.gethostname(),
        "address": address,
        "ports": {name: server.server_port for name, server in servers.items()},
    }, f)
os.replace(out + ".tmp", out)
threading.Event().wait()
"""
"""Two servers in one process, on loopback and on the node's address (the job's whole life)."""

PROBE = """\
import json, sys, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
answers = {}
for url in sys.argv[1:]:
    try:
        with opener.open(url, timeout=5) as reply:
            answers[url] = reply.read().decode()
    except OSError as err:
        answers[url] = "unreachable: " + type(err).__name__
print(json.dumps(answers))
"""
"""Each URL's answer (the serving host's name), or why there was none."""

WHOAMI = """\
import json, os, socket
from pytest_aifactory.cluster.node import node_address
print(json.dumps({
    "node": os.environ["SLURMD_NODENAME"],
    "hostname": socket.gethostname(),
    "address": node_address(),
}))
"""


def node_addresses(nodes: list[str]) -> dict[str, str]:
    """Slurm's NodeAddr of each node."""
    found = {}
    for node in nodes:
        out = subprocess.run(
            ["scontrol", "-o", "show", "node", node],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
        addr = parse_node_addr(out)
        assert addr is not None, out
        found[node] = addr
    return found


def srun(*args: str, timeout: float = 120) -> str:
    """A job step's output (srun blocks until the step ends)."""
    done = subprocess.run(
        ["srun", "-J", "aif-dev-cluster-test", "-t", "2", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def probe_here(urls: list[str]) -> dict[str, str]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *urls], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    answers: dict[str, str] = json.loads(out.stdout)
    return answers


def probe_from(node: str, urls: list[str]) -> dict[str, str]:
    answers: dict[str, str] = json.loads(
        srun("-w", node, "-N1", "-n1", sys.executable, "-c", PROBE, *urls)
    )
    return answers


def gone_from_queue(job_id: str) -> bool:
    out = subprocess.run(
        ["squeue", "-h", "-j", job_id, "-o", "%i"], capture_output=True, text=True, check=False
    )
    return out.returncode != 0 or job_id not in out.stdout.split()


# -- every node is a host ------------------------------------------------------------------------


def test_every_node_is_a_host_with_its_own_name_and_address(slurm_cluster: SlurmCluster) -> None:
    nodes = slurm_cluster.nodes
    assert len(nodes) >= 3, nodes
    out = srun(f"-N{len(nodes)}", "--ntasks-per-node=1", sys.executable, "-c", WHOAMI)
    seen = {entry["node"]: entry for entry in map(json.loads, out.splitlines())}
    assert sorted(seen) == nodes
    addresses = node_addresses(nodes)
    for node, entry in seen.items():
        assert entry["hostname"] == node, "the node's own hostname"
        assert entry["address"] == addresses[node], "services bind to Slurm's NodeAddr"
        assert entry["address"] != LOOPBACK
    assert len({entry["address"] for entry in seen.values()}) == len(nodes)


# -- cgroups ------------------------------------------------------------------------------------

LIMITS = """\
import json, os
lines = open("/proc/self/cgroup").read().splitlines()
memory = next(line.split(":", 2)[2] for line in lines if ":memory:" in line)
limits = []
while True:
    try:
        limits.append(int(open(f"/sys/fs/cgroup/memory{memory}/memory.limit_in_bytes").read()))
    except OSError:
        break
    if memory in ("", "/"):
        break
    memory = os.path.dirname(memory)
print(json.dumps({"cpus": len(os.sched_getaffinity(0)), "memory": min(limits)}))
"""
"""The CPUs this process may run on and the tightest memory limit of its cgroups."""


@pytest.fixture(scope="module")
def cgroups(slurm_cluster: SlurmCluster) -> None:
    config = subprocess.run(
        ["scontrol", "show", "config"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    if "proctrack/cgroup" not in config:
        pytest.skip("the cluster confines no job (no cgroup v1 here: see docs/dev-cluster.md)")


@pytest.mark.usefixtures("cgroups")
def test_a_job_is_confined_to_its_cpus_and_memory() -> None:
    out = json.loads(srun("-N1", "-n1", "-c1", "--mem=200M", sys.executable, "-c", LIMITS))
    assert out == {"cpus": 1, "memory": 200 * 2**20}


@pytest.mark.usefixtures("cgroups")
def test_a_cancelled_job_leaves_no_process_behind(tmp_path: Path) -> None:
    """Even a child that left the job's session (proctrack/linuxproc loses those)."""
    pid_file = tmp_path / "child.pid"
    job_id = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "-J",
            "aif-dev-cluster-orphan",
            "-t",
            "5",
            "-o",
            "/dev/null",
            "--wrap",
            f"setsid sleep 300 & echo $! > {pid_file}.tmp; mv {pid_file}.tmp {pid_file}; sleep 300",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()
    try:
        wait_for(pid_file.exists, 60, f"job {job_id} to start its child")
        child = int(pid_file.read_text())
        assert psutil.pid_exists(child)
    finally:
        subprocess.run(["scancel", job_id], check=False, timeout=30)
        wait_for(lambda: gone_from_queue(job_id), 60, f"job {job_id} to leave the queue")
    wait_for(lambda: not psutil.pid_exists(child), 15, f"child {child} of job {job_id} to end")


# -- loopback is the node's own -----------------------------------------------------------------


@pytest.fixture(scope="module")
def servers(
    slurm_cluster: SlurmCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """A job on the first node serving on its loopback and on its address; cancelled after."""
    tmp = tmp_path_factory.mktemp("dev-cluster")
    script = tmp / "serve.py"
    script.write_text(SERVE)
    ready = tmp / "ready.json"
    node = slurm_cluster.nodes[0]
    job_id = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "-J",
            "aif-dev-cluster-servers",
            "-w",
            node,
            "-t",
            "5",
            "-o",
            str(tmp / "serve.log"),
            "--wrap",
            f"exec {sys.executable} {script} {ready}",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()
    try:
        wait_for(ready.exists, 60, f"the servers of job {job_id} on {node}")
        info: dict[str, Any] = json.loads(ready.read_text())
        info["job_id"] = job_id
        yield info
    finally:
        subprocess.run(["scancel", job_id], check=False, timeout=30)
        wait_for(lambda: gone_from_queue(job_id), 60, f"job {job_id} to leave the queue")


def urls(info: dict[str, Any]) -> dict[str, str]:
    loopback, on_node = info["ports"]["loopback"], info["ports"]["node"]
    return {
        "node address": f"http://{info['address']}:{on_node}/",
        "loopback port at the node's address": f"http://{info['address']}:{loopback}/",
        "loopback": f"http://{LOOPBACK}:{loopback}/",
    }


def test_the_server_on_the_nodes_address_is_reached_from_another_node(
    slurm_cluster: SlurmCluster, servers: dict[str, Any]
) -> None:
    other = slurm_cluster.nodes[1]
    assert servers["node"] != other
    wanted = urls(servers)
    answers = probe_from(other, list(wanted.values()))
    assert answers[wanted["node address"]] == servers["node"], answers
    # the loopback server is not there from another node: its own loopback has nothing on
    # that port, and the serving node's address does not lead to the serving node's loopback
    assert answers[wanted["loopback"]].startswith("unreachable"), answers
    assert answers[wanted["loopback port at the node's address"]].startswith("unreachable"), answers


def test_the_server_on_the_nodes_address_is_reached_from_the_login_node(
    servers: dict[str, Any],
) -> None:
    """Where the driver health-checks services from."""
    wanted = urls(servers)
    answers = probe_here(list(wanted.values()))
    assert answers[wanted["node address"]] == servers["node"], answers
    assert answers[wanted["loopback"]].startswith("unreachable"), answers
    assert answers[wanted["loopback port at the node's address"]].startswith("unreachable"), answers


def test_the_server_on_loopback_answers_on_its_own_node(servers: dict[str, Any]) -> None:
    """The loopback server is up, so the misses above are the network's doing."""
    wanted = urls(servers)
    answers = probe_from(servers["node"], [wanted["loopback"]])
    assert answers[wanted["loopback"]] == servers["node"], answers


# -- a monitored run across nodes ---------------------------------------------------------------

REQUESTS = 24
WARMUP = 2
CLIENT_NODES = 2
PROCESSES_PER_NODE = 2


def spread_recipe() -> dict[str, Any]:
    """The service with Prometheus and the pushgateway on the `monitor` partition (n1), the
    client on the `gpu` partition (the two other nodes), each by its own `partition`. Nothing
    asks for a whole node: an exclusive job here would hold its node against every other test
    using the cluster at the same time, and a queued job needing all nodes would then hold the
    client back (it could not end before the service, so Slurm's backfill will not start it)."""
    return {
        "name": "dev-cluster-spread",
        "platform": {"executor": "slurm", "slurm": {"time_limit": "00:10:00"}},
        "services": {
            "llm": {
                "kind": "llamacpp",
                "model": "smollm2-135m",
                "args": ["--parallel", "4"],
                "health_timeout_s": 60,
                "partition": "monitor",
            }
        },
        "clients": {
            "chat": {
                "kind": "openai",
                "service": "llm",
                "nodes": CLIENT_NODES,
                "processes_per_node": PROCESSES_PER_NODE,
                "partition": "gpu",
                "dataset": {"kind": "random", "input_tokens": 16, "output_tokens": 16},
                # long enough that Prometheus, which applies discovered targets at most every
                # 5 s, scrapes the exporters the client job starts on its nodes
                "load": {
                    "mode": "concurrency",
                    "levels": [4],
                    "requests": REQUESTS,
                    "warmup_requests": WARMUP,
                    "timeout_s": 60,
                },
            }
        },
        "slo": {"chat": {"error_rate": {"max": 0.0}}},
        "monitor": {"scrape_interval_s": 0.5, "partition": "monitor"},
    }


@pytest.fixture(scope="module")
def spread_run(slurm_cluster: SlurmCluster, tmp_path_factory: pytest.TempPathFactory) -> Session:
    assert {"gpu", "monitor"} <= set(slurm_cluster.partitions), slurm_cluster.partitions
    tmp = tmp_path_factory.mktemp("dev-cluster-spread")
    recipe = write_recipe(tmp / "spread.yaml", spread_recipe())
    session = run_benchmark(tmp, recipe, "--executor", "slurm", "-v", timeout=300)
    assert session.returncode == 0, session.output
    return session


@pytest.mark.requires("prometheus", "llama-server")
def test_a_run_spread_over_three_hosts(slurm_cluster: SlurmCluster, spread_run: Session) -> None:
    (run,) = spread_run.run_dirs()
    addresses = node_addresses(slurm_cluster.nodes)
    rendezvous = json.loads((run / "rendezvous" / "llm.json").read_text())
    service_node = rendezvous["node"]
    assert rendezvous["host"] == addresses[service_node], "bound to its node's address"

    records = pd.read_parquet(run / "records.parquet")
    measured = records[records["phase"] == "measure"]
    assert len(measured) == REQUESTS
    assert (measured["error"] == "").all(), measured["error"].unique()
    assert len(records[records["phase"] == "warmup"]) == WARMUP
    client_nodes = sorted(measured["node"].unique())
    assert client_nodes == sorted(set(slurm_cluster.nodes) - {service_node})
    assert len({addresses[node] for node in client_nodes}) == CLIENT_NODES
    assert measured["process"].nunique() == CLIENT_NODES * PROCESSES_PER_NODE

    # Prometheus ran on one node and scraped the others: the service and a node exporter on
    # each node of the run, each at its node's address
    metrics = pd.read_parquet(run / "metrics.parquet")
    scraped = {instance.rsplit(":", 1)[0] for instance in metrics["instance"] if instance}
    assert set(addresses.values()) <= scraped, scraped
    assert LOOPBACK not in scraped
    cpu = metrics[metrics["series"] == "node_cpu_seconds"]
    assert set(cpu["node"]) == set(slurm_cluster.nodes)

    (test,) = spread_run.summary()["tests"]
    assert test["counts"]["completed"] == REQUESTS
    # the clients' live counters went through the pushgateway on the monitor node
    clients = metrics[metrics["series"] == "client_requests_completed"]
    assert set(clients["node"]) == set(client_nodes)
    last = clients.sort_values("timestamp").groupby("labels")["value"].last()
    assert last.sum() == REQUESTS, "the measured requests (warmup is not counted)"


@pytest.mark.requires("prometheus", "llama-server")
def test_a_spread_run_leaves_nothing_in_the_queue(spread_run: Session) -> None:
    prefix = f"aif-{run_id_of(spread_run)}-"
    assert not [name for name in queued_names() if name.startswith(prefix)]
    jobs = wait_for(
        lambda: (found := sacct_jobs(prefix)) and len(found) >= 4 and found,
        15,
        "the run's jobs in sacct",
    )
    assert jobs[f"{prefix}service-llm"].startswith("CANCELLED"), jobs
    assert {state for name, state in jobs.items() if "-client-" in name} == {"COMPLETED"}, jobs
